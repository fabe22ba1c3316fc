"""What the ANN benchmarks (`ann_scale`, `ann_peers`) share: the clock and log, process memory, the exact
brute-force baseline and ground truth, recall@k, timings, the tuning ladder and the machine description."""

from __future__ import annotations

import argparse
import gc
import importlib.metadata as md
import math
import os
import platform
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np

K = 10
ADD_CHUNK = 100_000
T0 = time.perf_counter()

def log(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:7.1f}s] {msg}", flush=True)


def proc_status() -> dict[str, int]:
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0]) * 1024
    return out


def reset_peak() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def mem_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def gb(b: float) -> float:
    return round(b / 1e9, 3)


def recall(truth: np.ndarray, found: np.ndarray, k: int) -> float:
    return float(np.mean([len(set(t[:k]) & set(f[:k])) / k for t, f in zip(truth, found)]))


def timed(fn, repeats: int = 2) -> tuple[float, Any]:
    best, out = math.inf, None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def one_at_a_time(search, queries: np.ndarray) -> float:
    search(queries[:1])  # warm-up
    start = time.perf_counter()
    for i in range(len(queries)):
        search(queries[i : i + 1])
    return len(queries) / (time.perf_counter() - start)


def normalized(x: np.ndarray) -> np.ndarray:
    y = np.array(x, dtype=np.float32, copy=True)
    faiss.normalize_L2(y)
    return y


def exact_index(base: np.ndarray) -> faiss.IndexFlatIP:
    index = faiss.IndexFlatIP(base.shape[1])
    for start in range(0, len(base), ADD_CHUNK):
        index.add(normalized(base[start : start + ADD_CHUNK]))
    return index


def brute_force(base: np.ndarray, tune_q: np.ndarray, eval_q: np.ndarray, single: int) -> dict[str, Any]:
    log("brute force: building IndexFlatIP")
    before = proc_status()
    index = exact_index(base)
    grown = proc_status()["RssAnon"] - before["RssAnon"]
    tq, eq = normalized(tune_q), normalized(eval_q)
    _, truth_tune = index.search(tq, K)
    start = time.perf_counter()
    _, truth_eval = index.search(eq, K)
    seconds = time.perf_counter() - start
    single_qps = one_at_a_time(lambda q, exact=index: exact.search(normalized(q), K), eval_q[:single])
    log(f"brute force: {len(eq) / seconds:.1f} QPS batch, {single_qps:.2f} one at a time")
    row = {"variant": "brute force (FAISS IndexFlatIP)", "kind": "exact", "n": len(base), "recall_at_1": 1.0,
           "recall_at_10": 1.0, "qps": len(eq) / seconds, "qps_single": single_qps, "single_queries": single,
           "bytes_per_vector": 4 * base.shape[1], "rss_anon_growth_gb": gb(grown)}
    del index
    gc.collect()
    return {"row": row, "truth_tune": truth_tune, "truth_eval": truth_eval, "qps": len(eq) / seconds}


def ladder(index, settings: list[dict[str, Any]], queries: np.ndarray, truth: np.ndarray,
           target: float) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """Try settings cheapest first on the tuning queries; the first reaching target (None if none)."""
    steps = []
    for setting in settings:
        index.set_params(**setting)
        seconds, (_, found) = timed(lambda: index.search(queries, K), repeats=1)
        r10 = recall(truth, found, K)
        steps.append({**setting, "recall_at_10": round(r10, 4), "qps": round(len(queries) / seconds, 1)})
        log(f"  {setting}: recall@10 {r10:.4f}, {len(queries) / seconds:.0f} QPS")
        if r10 >= target:
            return setting, steps
        if len(steps) >= 3 and steps[-1]["recall_at_10"] - steps[-3]["recall_at_10"] < 0.002:
            log("  recall stopped improving")
            break
    return None, steps


def doublings(start: int, stop: int) -> list[int]:
    out = []
    while start < stop:
        out.append(start)
        start *= 2
    return [*out, stop]


def machine(packages: tuple[str, ...] = ("faiss-cpu", "numpy", "scikit-learn")) -> dict[str, Any]:
    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    total = int(Path("/proc/meminfo").read_text().split()[1]) * 1024
    versions = {}
    for pkg in packages:
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = "?"
    return {"cpu": cpu, "cores": os.cpu_count(), "faiss_threads": faiss.omp_get_max_threads(), "memory_gb": gb(total),
            "python": platform.python_version(), "platform": platform.platform(), "versions": versions,
            "loadavg_start": os.getloadavg()}


def fmt(v: Any, spec: str = ".0f") -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def common_arguments(description: str, quick: str, results: Path) -> argparse.ArgumentParser:
    """The options both ANN benchmarks take: --n, --quick, --queries, --target, --out."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--quick", action="store_true", help=f"{quick} (a smoke run)")
    ap.add_argument("--queries", type=int, default=1000, help="evaluation queries (as many again for tuning)")
    ap.add_argument("--target", type=float, default=0.95)
    ap.add_argument("--out", default=str(results))
    return ap
