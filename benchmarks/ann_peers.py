#!/usr/bin/env python
"""offshelf's own ANN choice against the peers usearch and hnswlib, side by side on the same vectors and threads.

Method (one process, all timings time.perf_counter; every system gets `--threads` (2) threads):

Data and ground truth as in `benchmarks/ann_scale.py` (shared helpers in `benchmarks/harness/ann_common.py`):
`realistic_vectors(n, seed=0)` database, 2 x `--queries` held-out queries (seed 1): the first half TUNES, the
second half (EVALUATION) is reported. Ground truth: FAISS IndexFlatIP (exact cosine) top-10; its batch search
time over the evaluation queries is the brute-force row's QPS. Each system's "x brute" divides its batch QPS by
brute force's timed again right after that system's own timing (`adjacent_brute_qps`), so that a change of load
during the hour-long run at 1M does not bend the ratio.

Systems, each built from the same float32 vectors and freed before the next is built:

- `offshelf (auto)`: exactly what `offshelf index build --target-recall T` does without `--kind`: the kind and
  build parameters from `offshelf.index.auto_choice(n, d)`, then `offshelf.index.tune`, which builds the index
  and picks the search depth for `auto_target(T)` on rows of the database held out of the build (never the
  benchmark's queries); evaluated as tuned. The same index is then also laddered on the TUNING queries (row
  `offshelf (auto), tuned on queries`), the protocol the peers get.
- `usearch` (cosine metric) for each of `--usearch` configs dtype:connectivity:expansion_add, and `hnswlib`
  (inner product on L2-normalized vectors) for each of `--hnswlib` configs M:ef_construction: the search
  expansion (ef) is raised on the TUNING queries through 16, 24, 32, 48, 64, 96, ... 2048 (the ladder offshelf's
  `tune` uses for hnswpca) until recall@10 >= T; among the configs that
  reach T the fastest on the tuning queries is that peer's best setting, reported on the EVALUATION queries.

Per system: recall@1/10 (evaluation queries), batch QPS (all evaluation queries in one call, best of 3),
one-at-a-time QPS (`--single` queries), build seconds, growth of the process's anonymous RSS over the build (the
index's memory) and the library's own size figure where it has one (offshelf `bytes_per_vector`, usearch
`memory_usage`). The JSON and Markdown are rewritten after every system, marked partial until the last.

Usage: python -m benchmarks.ann_peers [--n 1000000] [--quick] [--systems offshelf,usearch,hnswlib]
       [--usearch i8:16:128,f16:16:128] [--hnswlib 16:100] [--out DIR]
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import io
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
try:  # run from a checkout without installing
    import offshelf  # noqa: F401
except ImportError:  # pragma: no cover
    sys.path.insert(0, str(HERE.parent / "src"))

import faiss  # noqa: E402

from benchmarks.harness.ann_common import (  # noqa: E402
    K, T0, brute_force, common_arguments, fmt, gb, ladder, log, machine, normalized, one_at_a_time, proc_status, recall,
    reset_peak, timed,
)
from benchmarks.harness.synthetic import GENERATOR_VERSION, realistic_vectors  # noqa: E402
from offshelf.index import auto_choice, auto_target, tune  # noqa: E402
from offshelf.index.graph import search_depths  # noqa: E402
from offshelf.io import atomic_write_bytes  # noqa: E402

EFS = search_depths()  # the peers' search expansions: the ladder offshelf's hnswpca tunes on


# --- the peers, behind the two calls the ladder needs (set_params, search) -----------------------------------


class UsearchPeer:
    """usearch `Index` (cosine), built with all `threads`; `expansion_search` is the search knob."""

    knob = "expansion_search"

    def __init__(self, base: np.ndarray, threads: int, dtype: str, connectivity: int, expansion_add: int) -> None:
        from usearch.index import Index

        self.threads = threads
        self.settings = {"dtype": dtype, "connectivity": connectivity, "expansion_add": expansion_add}
        self.index = Index(ndim=base.shape[1], metric="cos", dtype=dtype, connectivity=connectivity,
                           expansion_add=expansion_add)
        for lo in range(0, len(base), 100_000):
            chunk = np.ascontiguousarray(base[lo : lo + 100_000], dtype=np.float32)
            self.index.add(np.arange(lo, lo + len(chunk)), chunk, threads=threads)

    def set_params(self, expansion_search: int) -> None:
        self.index.expansion_search = expansion_search

    def search(self, queries: np.ndarray, k: int) -> tuple[None, np.ndarray]:
        found = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k, threads=self.threads)
        keys = np.asarray(found.keys).reshape(len(queries), -1)
        return None, keys.astype(np.int64)

    def own_bytes(self) -> int:
        return int(self.index.memory_usage)


class HnswlibPeer:
    """hnswlib `Index` (space "ip" on L2-normalized vectors), `threads` threads; `ef` is the search knob."""

    knob = "ef"

    def __init__(self, base: np.ndarray, threads: int, M: int, ef_construction: int) -> None:
        import hnswlib

        self.settings = {"M": M, "ef_construction": ef_construction}
        self.index = hnswlib.Index(space="ip", dim=base.shape[1])
        self.index.init_index(max_elements=len(base), M=M, ef_construction=ef_construction, random_seed=0)
        self.index.set_num_threads(threads)
        for lo in range(0, len(base), 100_000):
            chunk = normalized(base[lo : lo + 100_000])
            self.index.add_items(chunk, np.arange(lo, lo + len(chunk)))

    def set_params(self, ef: int) -> None:
        self.index.set_ef(ef)

    def search(self, queries: np.ndarray, k: int) -> tuple[None, np.ndarray]:
        labels, _ = self.index.knn_query(normalized(queries), k)
        return None, labels.astype(np.int64)

    def own_bytes(self) -> None:
        return None


class OffshelfSystem:
    """An offshelf VectorIndex seen through the ladder's calls (search already returns ids)."""

    def __init__(self, index) -> None:
        self.index = index
        self.knob = index.knob

    def set_params(self, **params: Any) -> None:
        self.index.set_params(**params)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self.index.search(queries, k)

    def own_bytes(self) -> float:
        return self.index.bytes_per_vector * self.index.ntotal


# --- building and measuring ----------------------------------------------------------------------------------


def measured_build(make) -> tuple[Any, dict[str, Any]]:
    """Call `make()`, recording seconds, anonymous RSS growth and the peak RSS (VmHWM reset first)."""
    gc.collect()
    reset_peak()
    before = proc_status()
    start = time.perf_counter()
    system = make()
    seconds = time.perf_counter() - start
    after = proc_status()
    return system, {"build_seconds": seconds, "rss_anon_growth_gb": gb(after["RssAnon"] - before["RssAnon"]),
                    "peak_rss_gb": gb(after["VmHWM"])}


def evaluate(system, ctx, repeats: int = 3) -> dict[str, Any]:
    """recall@1/10 on the evaluation queries, batch QPS (best of `repeats`), one-at-a-time QPS, and brute force's
    batch QPS timed right after (the same work as the brute-force row, `adjacent_brute_qps`), which "x brute"
    divides by: on a shared machine the load an hour-long run meets changes, and a ratio of two timings made
    minutes apart holds up better than one against the first minute's."""
    seconds, (_, found) = timed(lambda: system.search(ctx.eval_q, K), repeats=repeats)
    qps = len(ctx.eval_q) / seconds
    single = one_at_a_time(lambda q: system.search(q, K), ctx.eval_q[: ctx.args.single])
    own = system.own_bytes()
    brute = adjacent_brute_qps(ctx)
    return {"recall_at_1": recall(ctx.truth_eval[:, :1], found[:, :1], 1),
            "recall_at_10": recall(ctx.truth_eval, found, K), "qps": qps, "speedup_vs_brute": qps / brute,
            "adjacent_brute_qps": brute, "qps_single": single,
            "own_bytes_per_vector": None if own is None else own / len(ctx.base)}


def adjacent_brute_qps(ctx) -> float:
    """Batch QPS of exact inner-product search of the normalized evaluation queries over the database, timed now
    (FAISS `knn`, the routine IndexFlatIP.search runs; on the database as stored, which costs the same as on
    its normalized copy and needs no second 5 GB copy)."""
    queries = normalized(ctx.eval_q)
    seconds, _ = timed(lambda: faiss.knn(queries, ctx.base, K, metric=faiss.METRIC_INNER_PRODUCT), repeats=1)
    log(f"  brute force now: {len(queries) / seconds:.1f} QPS")
    return len(queries) / seconds


def best_peer(ctx, name: str, configs: list[dict[str, Any]], make) -> list[dict[str, Any]]:
    """Build each config, ladder its knob on the tuning queries; the fastest config reaching the target is
    evaluated on the evaluation queries (every config's build and tuning steps are recorded)."""
    tried, best = [], None
    for config in configs:
        log(f"{name} {config}: building")
        system, info = measured_build(lambda config=config: make(**config))
        log(f"  built in {info['build_seconds']:.1f} s, anon RSS +{info['rss_anon_growth_gb']} GB")
        setting, steps = ladder(system, [{system.knob: v} for v in EFS], ctx.tune_q, ctx.truth_tune, ctx.target)
        entry = {"config": config, **info, "reached": setting is not None, "setting": setting, "tuning": steps}
        tried.append(entry)
        if setting is not None and (best is None or steps[-1]["qps"] > best["tuning"][-1]["qps"]):
            best = entry  # evaluated now: the index is freed before the next config is built
            entry["row"] = {"system": name, "settings": {**config, **setting}, **info, **evaluate(system, ctx),
                            "reached": True}
        del system
        gc.collect()
    tried_out = [{k: v for k, v in t.items() if k != "row"} for t in tried]
    if best is None:
        return [{"system": name, "settings": None, "reached": False, "tried": tried_out}]
    return [{**best["row"], "tried": tried_out}]


def run_offshelf(ctx) -> list[dict[str, Any]]:
    n, d = ctx.base.shape
    kind, params = auto_choice(n, d)
    log(f"offshelf auto: {kind} {params}")
    ids = np.arange(n, dtype=np.int64)

    def make():
        index, report = tune(kind, auto_target(ctx.target), ctx.base, ids, sample=ctx.args.tune_sample, seed=0,
                             **params)
        return OffshelfSystem(index), report

    (system, report), info = measured_build(make)
    log(f"  built and tuned in {info['build_seconds']:.1f} s: {report['message']}")
    tuned = {system.knob: system.index.params[system.knob]} if system.knob else {}
    rows = [{"system": "offshelf (auto)", "kind": kind, "settings": system.index.params, **info,
             **evaluate(system, ctx), "reached": None,
             "tune_report": {**{k: v for k, v in report.items() if k != "steps"}, "steps": [
                 {"params": {k: v for k, v in step["params"].items() if k == system.knob},
                  "recall_at_10": step["recall_at_10"], "qps": step["qps"]} for step in report["steps"]]}}]
    rows[0]["reached"] = rows[0]["recall_at_10"] >= ctx.target
    if system.knob:  # the peers' protocol on the same index: the knob laddered on the TUNING queries
        setting, steps = ladder(system, [{system.knob: v} for v in system.index._knob_values()], ctx.tune_q,
                                ctx.truth_tune, ctx.target)
        if setting is not None:
            row = {"system": "offshelf (auto), tuned on queries", "kind": kind,
                   "settings": {**system.index.params, **setting}, **info, **evaluate(system, ctx),
                   "reached": True, "tuning": steps}
            rows.append(row)
        system.set_params(**tuned)
    del system
    return rows


def parse_configs(text: str, names: tuple[str, ...], types: tuple[type, ...]) -> list[dict[str, Any]]:
    out = []
    for item in filter(None, (t.strip() for t in text.split(","))):
        parts = item.split(":")
        if len(parts) != len(names):
            raise SystemExit(f"config {item!r} must be {':'.join(names)}")
        out.append({name: cast(part) for name, cast, part in zip(names, types, parts)})
    return out


def run_usearch(ctx) -> list[dict[str, Any]]:
    configs = parse_configs(ctx.args.usearch, ("dtype", "connectivity", "expansion_add"), (str, int, int))
    return best_peer(ctx, "usearch", configs, lambda **c: UsearchPeer(ctx.base, ctx.args.threads, **c))


def run_hnswlib(ctx) -> list[dict[str, Any]]:
    configs = parse_configs(ctx.args.hnswlib, ("M", "ef_construction"), (int, int))
    return best_peer(ctx, "hnswlib", configs, lambda **c: HnswlibPeer(ctx.base, ctx.args.threads, **c))


RUNNERS = {"offshelf": run_offshelf, "usearch": run_usearch, "hnswlib": run_hnswlib}


# --- report --------------------------------------------------------------------------------------------------


def goals(result: dict[str, Any]) -> dict[str, bool | None]:
    """The issue's goals; None where the run has not measured what a goal needs."""
    rows = {r["system"]: r for r in result["rows"]}
    ours = rows.get("offshelf (auto)")
    peers = [r for r in result["rows"] if r["system"] in ("usearch", "hnswlib") and r.get("reached")]
    target = result["target"]
    ok = bool(ours and ours["recall_at_10"] >= target)
    best = max(peers, key=lambda r: r["qps"], default=None)
    speed = f" ({ours['speedup_vs_brute']:.1f}x)" if ours else ""
    return {
        f"offshelf's auto index reaches recall@10 >= {target} on the evaluation queries": ok if ours else None,
        f"... at >= 20x FAISS brute force in batches{speed}": (ok and ours["speedup_vs_brute"] >= 20) if ours else None,
        "... and >= the batch QPS of the best peer at that recall"
        + (f" ({best['system']}, {best['qps']:.0f} QPS vs {ours['qps']:.0f})" if best and ours else ""):
            (ok and ours["qps"] >= best["qps"]) if best and ours and {"usearch", "hnswlib"} <= set(rows) else None,
    }


def settings_text(settings: dict[str, Any] | None) -> str:
    if not settings:
        return "–"
    skip = {"pca", "whiten"}
    return ", ".join(f"{k}={v}" for k, v in settings.items() if k not in skip and v is not None)


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [
        "# offshelf vs usearch and hnswlib (`benchmarks/ann_peers.py`)", "",
        f"{result['n']:,} database vectors, dim {result['dim']}, {result['queries']} held-out evaluation queries "
        f"(+{result['queries']} for tuning the peers), target recall@10 >= {result['target']} against exact "
        f"search, {result['threads']} threads for every system. Run {result['date']}, "
        f"{result['total_seconds'] / 60:.1f} min in all.", "",
    ]
    if not result["finished"]:
        lines += ["**PARTIAL**: the run was still going when this was written (systems done so far only).", ""]
    lines += ["| system | settings | recall@1 | recall@10 | QPS (batch) | x brute | brute QPS timed next | "
              "QPS (1 at a time) | build s | anon RSS growth GB | own bytes/vector |",
              "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in result["rows"]:
        mark = "" if r.get("reached", True) else " (target not reached)"
        lines.append(f"| {r['system']}{mark} | {settings_text(r.get('settings'))} | {fmt(r.get('recall_at_1'), '.3f')} | "
                     f"{fmt(r.get('recall_at_10'), '.3f')} | {fmt(r.get('qps'))} | "
                     f"{fmt(r.get('speedup_vs_brute'), '.1f')} | {fmt(r.get('adjacent_brute_qps'), '.1f')} | "
                     f"{fmt(r.get('qps_single'))} | "
                     f"{fmt(r.get('build_seconds'))} | {fmt(r.get('rss_anon_growth_gb'), '.2f')} | "
                     f"{fmt(r.get('own_bytes_per_vector'))} |")
    lines += ["", "## Goals", ""]
    lines += [f"- {text}: **{'not measured' if ok is None else 'met' if ok else 'not met'}**"
              for text, ok in result["goals"].items()]
    tried = [(r["system"], t) for r in result["rows"] for t in r.get("tried", [])]
    if tried:
        lines += ["", "## Peer settings tried (on the tuning queries)", "",
                  "| system | build settings | build s | anon RSS GB | reached | first setting reaching the target "
                  "(tuning QPS) |", "| --- | --- | ---: | ---: | --- | --- |"]
        for name, t in tried:
            last = t["tuning"][-1] if t["tuning"] else {}
            lines.append(f"| {name} | {settings_text(t['config'])} | {t['build_seconds']:.0f} | "
                         f"{t['rss_anon_growth_gb']:.2f} | {'yes' if t['reached'] else 'no'} | "
                         f"{settings_text(t['setting'])} ({fmt(last.get('qps'))}) |")
    lines += ["", "## Notes", ""] + [f"- {note}" for note in result["notes"]]
    lines += ["", "## Machine", "",
              f"{m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB RAM, Python {m['python']}, "
              f"{', '.join(f'{k} {v}' for k, v in m['versions'].items())}; load average at start "
              f"{', '.join(f'{v:.2f}' for v in m['loadavg_start'])}, at the end "
              f"{', '.join(f'{v:.2f}' for v in result['loadavg_end'])} (shared machine: all systems ran in this "
              "one process, one after another, so ratios are side by side).", "",
              "Method: see the docstring of `benchmarks/ann_peers.py`.", ""]
    return "\n".join(lines)


def curves(result: dict[str, Any]) -> dict[str, list[tuple[float, float]]]:
    """(recall@10, QPS) of every setting laddered on the tuning queries, per system and build setting."""
    out: dict[str, list[tuple[float, float]]] = {}
    for r in result["rows"]:
        if r.get("tuning"):
            out[f"{r['system']} ({settings_text({k: v for k, v in r['settings'].items() if k == 'graph_dim'})})"] = [
                (t["recall_at_10"], t["qps"]) for t in r["tuning"]]
        for t in r.get("tried", []):
            out[f"{r['system']} ({settings_text(t['config'])})"] = [(s["recall_at_10"], s["qps"]) for s in t["tuning"]]
    return out


def chart(result: dict[str, Any], path: Path) -> None:
    """Recall@10 against batch QPS on the tuning queries (log scale), the target and brute force marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for label, points in curves(result).items():
        ax.plot(*zip(*points), marker="o", markersize=3, label=label)
    brute = result["rows"][0]["qps"]
    ax.axhline(brute, color="grey", lw=0.8, ls=":", label=f"FAISS brute force ({brute:.0f} QPS)")
    ax.axhline(20 * brute, color="grey", lw=0.8, ls="--", label="20x brute force")
    ax.axvline(result["target"], color="red", lw=0.8, ls="--", label=f"recall@10 = {result['target']}")
    ax.set_yscale("log")
    ax.set_xlabel("recall@10 (tuning queries)")
    ax.set_ylabel("queries/s, batch")
    ax.set_title(f"{result['n']:,} x {result['dim']} vectors, {result['threads']} threads")
    ax.legend(fontsize=7)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())


class Ctx:
    pass


def write_report(ctx: Ctx, rows: list[dict[str, Any]], finished: bool) -> dict[str, Any]:
    """Write ann_peers*.json/.md atomically (marked partial until the last system is done); the result."""
    args = ctx.args
    result = {"n": args.n, "dim": int(ctx.base.shape[1]), "queries": args.queries, "target": args.target,
              "threads": args.threads, "systems": ctx.systems, "finished": finished,
              "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "machine": ctx.machine, "rows": rows,
              "notes": ctx.notes, "total_seconds": time.perf_counter() - T0, "args": vars(args),
              "loadavg_end": list(os.getloadavg()),
              "generator": {"module": "benchmarks.harness.synthetic", "version": GENERATOR_VERSION, "base_seed": 0,
                            "query_seed": 1}}
    result["goals"] = goals(result)
    stem = Path(args.out) / args.name
    atomic_write_bytes(stem.with_suffix(".json"), json.dumps(result, indent=1, default=float).encode())
    atomic_write_bytes(stem.with_suffix(".md"), markdown(result).encode())
    if finished:
        chart(result, stem.with_suffix(".png"))
    log(f"wrote {stem}.json/.md ({'final' if finished else 'partial'})")
    return result


def parser() -> argparse.ArgumentParser:
    ap = common_arguments(__doc__.split("\n")[0], "n = 20,000, 200 queries", HERE / "results")
    ap.add_argument("--systems", default="offshelf,usearch,hnswlib")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--usearch", default="f16:16:128,f32:16:128", help="dtype:connectivity:expansion_add,...")
    ap.add_argument("--hnswlib", default="16:100", help="M:ef_construction,...")
    ap.add_argument("--tune-sample", type=int, default=1000,
                    help="rows offshelf tune holds out of the build as its queries (at most n / 10)")
    ap.add_argument("--single", type=int, default=200, help="queries timed one at a time")
    ap.add_argument("--name", default=None, help="file stem (default ann_peers, ann_peers_Nk for other n)")
    return ap


def run(args: argparse.Namespace, base: np.ndarray, queries: np.ndarray, notes: list[str]) -> dict[str, Any]:
    """Brute force, then every system of `args.systems` on `base`; the first half of `queries` tunes, the second
    half is reported. Writes the report after each system and returns the last one written."""
    faiss.omp_set_num_threads(args.threads)
    ctx = Ctx()
    ctx.args, ctx.target, ctx.notes, ctx.base = args, args.target, notes, base
    ctx.systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    ctx.machine = machine(packages=("faiss-cpu", "numpy", "usearch", "hnswlib"))  # load average at the start
    ctx.tune_q, ctx.eval_q = queries[: args.queries], queries[args.queries :]
    brute = brute_force(base, ctx.tune_q, ctx.eval_q, 10 if len(base) >= 500_000 else 50)
    ctx.truth_tune, ctx.truth_eval, ctx.brute_qps = brute["truth_tune"], brute["truth_eval"], brute["qps"]
    rows = [{**brute["row"], "system": "brute force (FAISS IndexFlatIP)", "speedup_vs_brute": 1.0}]
    result: dict[str, Any] = {}
    for done, name in enumerate(ctx.systems, 1):
        log(f"=== {name}")
        rows += RUNNERS[name](ctx)
        gc.collect()
        result = write_report(ctx, rows, finished=done == len(ctx.systems))  # a cut-off run keeps what it has
    return result


def main(argv: list[str] | None = None) -> int:
    ap = parser()
    args = ap.parse_args(argv)
    if args.quick:
        args.n, args.queries, args.single = 20_000, min(args.queries, 200), min(args.single, 50)
    args.name = args.name or ("ann_peers" if args.n == 1_000_000 else f"ann_peers_{args.n // 1000}k")
    unknown = {s.strip() for s in args.systems.split(",") if s.strip()} - set(RUNNERS)
    if unknown:
        ap.error(f"unknown systems {sorted(unknown)}; choose from {sorted(RUNNERS)}")
    log(f"data: {args.n} vectors")
    start = time.perf_counter()
    base = realistic_vectors(args.n, seed=0)
    queries = np.ascontiguousarray(realistic_vectors(2 * args.queries, seed=1))
    notes = [f"Data loaded in {time.perf_counter() - start:.0f} s (`realistic_vectors(n, seed=0)`, queries seed 1); "
             f"brute force = FAISS IndexFlatIP, {args.threads} threads."]
    print(markdown(run(args, base, queries, notes)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
