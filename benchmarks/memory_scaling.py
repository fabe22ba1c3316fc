#!/usr/bin/env python
"""Memory that scales: time and peak RSS of building and searching a store's index, for n = 100k, 300k, 1M.

Method. For each n, the first n rows of `benchmarks.harness.synthetic.realistic_vectors(N, seed=0)` (1280-d
float32, cached memmap) are written as a real offshelf store under `$OFFSHELF_HOME/bench/memory-scaling/` through
the store's public writer (`FeatureStore.writer()`, `ShardRows.add` per row, `StoreWriter.commit` per shard of
`--shard-rows` rows; the time is recorded). Then for each (kind, n), in a fresh subprocess each:

- build: `offshelf.index.build_store_index(store, kind, sample=--recall-sample, **params)`, i.e. what
  `offshelf index build` does: read the store, train, add, measure recall, save to STORE/index.
- search: `offshelf.Searcher(store)` (opens the saved index, reads the store's ids and paths) and one
  `search_vectors` call with `--queries` held-out query vectors (seed 1), k = 10.

Memory is the child's peak resident set (VmHWM, reset through /proc/self/clear_refs after the imports and the
query vectors are loaded) minus its resident set at that moment: what the operation itself added. The goal
for kinds holding float vectors (flat; ivfpq and binary with `rerank` > 0, which keep the vectors for
re-ranking) is peak <= 1.5 x the vectors' bytes (n x 1280 x 4). For compressed kinds without kept vectors the
goal is "proportionally less": the peak grows with n by at most 1.5 x the index's own bytes per added vector
(peak(1M) - peak(100k) <= 1.5 x (index bytes(1M) - index bytes(100k))); their fixed part is the training sample
(100k vectors, whatever n) and is reported.

With `--before SRC`, flat is also run (n <= `--before-max-n`) with the package from SRC (the code before this
change, e.g. extracted with `git archive`), in the same kind of subprocess, for a side-by-side reference.

ivfpq uses nlist = 256, m = 64 at every n: offshelf's default 4 sqrt(n) lists (4,000 at 1M) and even the 992 of
benchmarks/ann_scale.py take minutes of k-means per build on 2 shared cores, and the number of lists changes
the index's bytes by only nlist x d x 4 (1.3 MB here); binary uses its defaults (256 bits, HNSW from 200k).

Usage: python -m benchmarks.memory_scaling [--sizes 100000,300000,1000000] [--kinds ...] [--quick] [--out DIR]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.harness.runinfo import environment_info, write_json
from benchmarks.harness.stores import bench_home
from offshelf.io import atomic_write_bytes

HERE = Path(__file__).resolve().parent
DIM = 1280
KINDS: dict[str, dict[str, Any]] = {
    "flat": {"kind": "flat"},
    "ivfpq": {"kind": "ivfpq", "nlist": 256, "m": 64},
    "ivfpq+rerank": {"kind": "ivfpq", "nlist": 256, "m": 64, "rerank": 1000},
    "binary": {"kind": "binary"},
    "binary+rerank": {"kind": "binary", "rerank": 1000},
}
KEEPS_FLOATS = {"flat", "ivfpq+rerank", "binary+rerank", "flat (before)"}
GOAL_RATIO = 1.5


# -- the child processes -----------------------------------------------------------------------------------


def _status() -> dict[str, int]:
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
    return out


def _child(args: argparse.Namespace) -> None:
    """One measured operation in this fresh process; prints its JSON on the last line of stdout."""
    import faiss  # noqa: F401 - imported before the baseline, like everything the operation needs

    import offshelf
    from offshelf.index import build_store_index

    queries = None
    if args.child == "search":
        from benchmarks.harness.synthetic import realistic_vectors

        queries = np.array(realistic_vectors(args.queries, seed=1))
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    base = _status()["VmRSS"]
    start = time.perf_counter()
    if args.child == "build":
        report = build_store_index(args.store, sample=args.recall_sample, **json.loads(args.params))
        out = {"seconds": time.perf_counter() - start, "build_seconds": report["build_seconds"],
               "recall_at_10": report["recall_at_10"], "bytes_per_vector": report["bytes_per_vector"]}
    else:
        searcher = offshelf.Searcher(args.store)
        opened = time.perf_counter()
        hits = searcher.search_vectors(queries, 10)
        out = {"seconds": time.perf_counter() - start, "open_seconds": opened - start,
               "search_seconds": time.perf_counter() - opened, "hits": sum(len(h) for h in hits)}
    status = _status()
    out |= {"peak_bytes": status["VmHWM"] - base, "baseline_rss_bytes": base, "end_rss_bytes": status["VmRSS"] - base}
    print(json.dumps(out))


def _run_child(op: str, store: Path, params: dict[str, Any], args: argparse.Namespace, src: Path | None = None
               ) -> dict[str, Any]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(src or HERE.parent / "src"), str(HERE.parent)])
    cmd = [sys.executable, "-m", "benchmarks.memory_scaling", "--child", op, "--store", str(store),
           "--params", json.dumps(params), "--queries", str(args.queries), "--recall-sample", str(args.recall_sample)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=HERE.parent)
    if done.returncode:
        raise RuntimeError(f"{op} {params} on {store} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# -- the stores ---------------------------------------------------------------------------------------------


def bench_store(n: int, shard_rows: int, log: Any) -> tuple[Path, float | None]:
    """The store of the first n synthetic vectors (written if missing); seconds it took to write (None: cached)."""
    from benchmarks.harness.synthetic import realistic_vectors
    from offshelf.store import FeatureStore, FileState, StoreConfig

    root = bench_home() / "memory-scaling" / f"store-{n}"
    done_marker = root / "complete.json"
    if done_marker.is_file():
        return root, None
    if root.exists():
        import shutil

        shutil.rmtree(root)  # an interrupted write of our own benchmark store
    vectors = realistic_vectors(n, seed=0)
    config = StoreConfig(model="synthetic-realistic", layer="gap", pool="gap", augment="none", dim=DIM,
                         model_spec={"generator": "benchmarks.harness.synthetic.realistic_vectors", "seed": 0})
    start = time.perf_counter()
    store = FeatureStore.open_or_create(root, config)
    state = FileState("0" * 64, 0, 0)
    with store.writer() as writer:
        for lo in range(0, n, shard_rows):
            rows = store.new_rows()
            block = np.asarray(vectors[lo : lo + shard_rows])
            for i, vector in enumerate(block, start=lo):
                rows.add(f"/synthetic/{i:08d}.jpg", state, vector)
            writer.commit(rows)
            log(f"  wrote {min(lo + shard_rows, n):,} / {n:,} rows")
    seconds = time.perf_counter() - start
    atomic_write_bytes(done_marker, json.dumps({"n": n, "write_seconds": seconds}).encode())
    return root, seconds


# -- the report ---------------------------------------------------------------------------------------------


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def goals(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One verdict per (kind, n) row and one scaling verdict per compressed kind."""
    out = []
    for row in rows:
        if row["variant"] in KEEPS_FLOATS:
            limit = GOAL_RATIO * row["vector_bytes"]
            for op in ("build", "search"):
                peak = row[op]["peak_bytes"]
                row[op]["goal"] = f"{peak / row['vector_bytes']:.2f}x <= {GOAL_RATIO}x"
                row[op]["met"] = peak <= limit
    for variant in {r["variant"] for r in rows} - KEEPS_FLOATS:
        mine = sorted((r for r in rows if r["variant"] == variant), key=lambda r: r["n"])
        if len(mine) < 2:
            continue
        lo, hi = mine[0], mine[-1]
        grown_index = hi["index_bytes"] - lo["index_bytes"]
        for op in ("build", "search"):
            grown = hi[op]["peak_bytes"] - lo[op]["peak_bytes"]
            met = grown <= GOAL_RATIO * grown_index
            out.append({"variant": variant, "op": op, "from_n": lo["n"], "to_n": hi["n"], "peak_growth_bytes": grown,
                        "index_growth_bytes": grown_index, "ratio": grown / max(grown_index, 1), "met": met})
    return out


def markdown(result: dict[str, Any]) -> str:
    gb = lambda b: f"{b / 1e9:.2f}"  # noqa: E731
    lines = [
        "# Memory that scales (`benchmarks/memory_scaling.py`)", "",
        f"Run {result['started']}, {result['minutes']:.1f} min in all; 1280-d float32 vectors; peak = VmHWM of a "
        "fresh process minus its RSS after imports. Goal for kinds holding float vectors: peak <= "
        f"{GOAL_RATIO}x the vectors' bytes (n x 1280 x 4), for building and for searching.", "",
        "| kind | n | vectors GB | index GB | build s | build peak GB | build peak / vectors | search: open s | "
        f"search {result['queries']} queries s | search peak GB | search peak / vectors | goal |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in result["rows"]:
        b, s = r["build"], r["search"]
        if "met" in b:
            goal = "met" if b["met"] and s["met"] else "**not met**"
        else:
            goal = "see scaling below"
        lines.append(
            f"| {r['variant']} | {r['n']:,} | {gb(r['vector_bytes'])} | {gb(r['index_bytes'])} | {b['seconds']:.1f} | "
            f"{gb(b['peak_bytes'])} | {b['peak_bytes'] / r['vector_bytes']:.2f} | {s['open_seconds']:.1f} | "
            f"{s['search_seconds']:.2f} | {gb(s['peak_bytes'])} | {s['peak_bytes'] / r['vector_bytes']:.2f} | {goal} |")
    lines += ["", "## Compressed kinds: growth with n", "",
              "Goal: from the smallest to the largest n the peak grows by at most "
              f"{GOAL_RATIO}x what the index grows (the training sample is a fixed cost).", "",
              "| kind | op | n | peak growth GB | index growth GB | ratio | goal |", "| --- | --- | --- | ---: | ---: | ---: | --- |"]
    for g in result["scaling"]:
        lines.append(f"| {g['variant']} | {g['op']} | {g['from_n']:,} -> {g['to_n']:,} | {gb(g['peak_growth_bytes'])} | "
                     f"{gb(g['index_growth_bytes'])} | {g['ratio']:.2f} | {'met' if g['met'] else '**not met**'} |")
    lines += ["", "## Notes", ""] + [f"- {note}" for note in result["notes"]]
    env = result["environment"]
    lines += ["", "## Machine", "",
              f"{env['cores']} cores, Python {env['python']}, numpy {env['numpy']}, faiss {env['faiss']}; load average "
              f"at start {', '.join(f'{v:.2f}' for v in env['load_average_at_start'])}, at end "
              f"{', '.join(f'{v:.2f}' for v in result['load_average_at_end'])} (shared machine).", ""]
    return "\n".join(lines)


def chart(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, op in zip(axes, ("build", "search")):
        for variant in dict.fromkeys(r["variant"] for r in result["rows"]):
            mine = [r for r in result["rows"] if r["variant"] == variant]
            ax.plot([r["n"] for r in mine], [r[op]["peak_bytes"] / 1e9 for r in mine], "o-", label=variant)
        ns = sorted({r["n"] for r in result["rows"]})
        ax.plot(ns, [GOAL_RATIO * n * DIM * 4 / 1e9 for n in ns], "k--", label="1.5 x vectors' bytes")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("vectors in the store (n)")
        ax.set_title(f"{op}: peak RSS")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("GB above the process's baseline")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="100000,300000,1000000")
    parser.add_argument("--kinds", default="flat,ivfpq,ivfpq+rerank,binary")
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--recall-sample", type=int, default=200)
    parser.add_argument("--shard-rows", type=int, default=8192)
    parser.add_argument("--before", type=Path, help="src folder of the code before, to run flat with it too")
    parser.add_argument("--before-max-n", type=int, default=300_000)
    parser.add_argument("--quick", action="store_true", help="n = 20k: a smoke run")
    parser.add_argument("--merge", action="store_true", help="keep the other sizes' rows of the earlier results")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--child", choices=("build", "search"), help=argparse.SUPPRESS)
    parser.add_argument("--store", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--params", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return _child(args)
    sizes = [20_000] if args.quick else [int(s) for s in args.sizes.split(",")]
    kinds = args.kinds.split(",")
    t0 = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - t0:7.1f}s] {message}", file=sys.stderr, flush=True)

    result: dict[str, Any] = {"started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                              "environment": environment_info(), "queries": args.queries, "rows": [],
                              "store_write_seconds": {}, "settings": {k: KINDS[k] for k in kinds}}
    name = "memory_scaling_quick" if args.quick else "memory_scaling"
    this_run = {"started": result["started"],
                "load_average_at_start": result["environment"]["load_average_at_start"]}
    if args.merge and (args.out / f"{name}.json").is_file():  # keep the rows of an earlier run not run again
        earlier = json.loads((args.out / f"{name}.json").read_text())
        planned = {(k, n) for k in kinds for n in sizes}
        result["rows"] = [r for r in earlier["rows"] if (r["variant"], r["n"]) not in planned]
        result["store_write_seconds"] = {k: v for k, v in earlier["store_write_seconds"].items()
                                         if int(k) not in sizes}
    for n in sizes:
        store, written = bench_store(n, args.shard_rows, log)
        result["store_write_seconds"][n] = written
        log(f"store n={n:,}: {store} ({'written in %.0f s' % written if written else 'cached'})")
        runs = [(k, KINDS[k], None) for k in kinds]
        if args.before and n <= args.before_max_n:
            runs.insert(0, ("flat (before)", KINDS["flat"], args.before))
        for variant, params, src in runs:
            build = _run_child("build", store, params, args, src)
            index_bytes = _dir_bytes(store / "index")
            search = _run_child("search", store, params, args, src)
            row = {"variant": variant, "n": n, "vector_bytes": n * DIM * 4, "index_bytes": index_bytes,
                   "build": build, "search": search, "run": this_run}
            result["rows"].append(row)
            result["rows"].sort(key=lambda r: r["n"])  # stable: the variants keep their order within an n
            log(f"{variant} n={n:,}: build {build['seconds']:.0f} s peak {build['peak_bytes'] / 1e9:.2f} GB; search "
                f"open {search['open_seconds']:.1f} s peak {search['peak_bytes'] / 1e9:.2f} GB; index "
                f"{index_bytes / 1e9:.2f} GB")
            result["scaling"] = goals(result["rows"])
            result["minutes"] = (time.perf_counter() - t0) / 60
            result["load_average_at_end"] = list(os.getloadavg())
            result["notes"] = notes(result, args)
            write_json(args.out / f"{name}.json", result)
            atomic_write_bytes(args.out / f"{name}.md", markdown(result).encode())
    chart(result, args.out / f"{name}.png")
    log(f"done in {(time.perf_counter() - t0) / 60:.1f} min")


def notes(result: dict[str, Any], args: argparse.Namespace) -> list[str]:
    written = ", ".join(f"{int(n):,}: {s:.0f} s" if s else f"{int(n):,}: cached from an earlier run"
                        for n, s in result["store_write_seconds"].items())
    return [
        f"Stores written through FeatureStore.writer() / ShardRows.add / StoreWriter.commit, {args.shard_rows} rows "
        f"per shard (seconds per n: {written}).",
        f"build = `build_store_index(store, kind, sample={args.recall_sample})`: read, train, add, recall on "
        f"{args.recall_sample} leave-one-out queries against exact search over the store, save; its time includes all "
        "of that. search = `Searcher(store)` (open) plus one batch of "
        f"{args.queries} held-out queries, k = 10.",
        "ivfpq: nlist = 256, m = 64 at every n (k-means with more lists is too slow on 2 shared cores; the lists "
        "add only nlist x 1280 x 4 bytes); rerank variants keep the float vectors "
        "(rerank = 1000), so they are held to the same 1.5x goal as flat.",
        "`flat (before)` is the code before this change (the commit this branch started from), same store, same "
        "measurement.",
    ] + [f"Rows {_row_names(result['rows'], run)} come from the run started {run['started']} (load average "
         f"{', '.join(f'{v:.2f}' for v in run['load_average_at_start'])}); other load on the shared machine is "
         "recorded only by that load average."
         for run in _runs(result["rows"])]


def _row_names(rows: list[dict[str, Any]], run: dict[str, Any]) -> str:
    return ", ".join(f"{r['variant']} {r['n']:,}" for r in rows if r["run"] == run)


def _runs(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The distinct runs the rows come from, oldest first."""
    runs = {r["run"]["started"]: r["run"] for r in rows}
    return [runs[k] for k in sorted(runs)]


if __name__ == "__main__":
    main()
