#!/usr/bin/env python
"""Where `offshelf.embed`'s CPU goes, stage by stage: CPU time, so it can run on a busy machine (no bench lock).

Method. embed_throughput's photos (`--n`, default 300; efficientnet-lite0, batch 32, the default workers and
threads) go through `offshelf.embed` into a fresh store, after a warm-up run on one batch, in a child process per
run (so `--before SRC`, the package before a change, is measured by the same code side by side). Inside the
child the stages are wrapped, and each wrapper adds the CPU time of the thread it runs on (time.thread_time):

- decode: `Reader.load` in the decoding threads (read, sha256, decode, views);
- model: ONNX Runtime, i.e. `Backbone.forward_preprocessed` on the thread that calls it, plus the CPU of ONNX
  Runtime's own pool threads (from /proc/self/task: the threads that live through the run and are neither the
  caller's nor decoding threads);
- preprocessing (`Preprocessing.apply`), pooling (`Pooling.__call__`), commit (`Committer.commit`: Parquet shard);
- rest: the run's process CPU (time.process_time, all threads) minus the stages: batch assembly, queue
  hand-offs, Python bookkeeping;
- setup: the `embed` call's CPU outside the decode/infer/commit loop (finding files, opening the store, checking
  the model files' sha256, creating the session, updating the index), a fixed cost spread over `--n` images.

Runs alternate before/after and fp32/int8, `--reps` times each; the table shows medians. CPU ms per image
include what other processes cost this one (cache misses, preemption), so compare columns of one run only.

Usage: python -m benchmarks.embed_profile [--n 300] [--reps 3] [--before SRC] [--quick] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from statistics import median
from typing import Any

from benchmarks.embed_throughput import MODEL, data_dir, photo_paths

RESULTS_DIR = Path("benchmarks/results")
STAGES = ("decode", "model", "preprocessing", "pooling", "commit", "rest", "setup")


def _thread_cpu() -> dict[int, float]:
    """CPU seconds of each live thread of this process (/proc/self/task)."""
    ticks = os.sysconf("SC_CLK_TCK")
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            fields = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[int(tid)] = (int(fields[11]) + int(fields[12])) / ticks
    return out


def profile_run(n: int, precision: str) -> dict[str, Any]:
    """One profiled `embed` of `n` photos in this process (the child); CPU ms per image by stage."""
    import offshelf.extract.runner as runner
    from offshelf.extract import embed
    from offshelf.extract.pooling import Pooling
    from offshelf.extract.reader import Reader
    from offshelf.extract.writer import Committer
    from offshelf.models.runtime import Backbone
    from offshelf.models.spec import Preprocessing

    seconds = dict.fromkeys(STAGES, 0.0)
    callers: set[int] = set()
    decoders: set[int] = set()
    lock = threading.Lock()

    def timed(owner: Any, name: str, stage: str, tids: set[int] | None = None) -> None:
        real = getattr(owner, name)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.thread_time()
            try:
                return real(*args, **kwargs)
            finally:
                with lock:
                    seconds[stage] += time.thread_time() - start
                    if tids is not None:
                        tids.add(threading.get_native_id())

        setattr(owner, name, wrapper)

    paths = photo_paths(n)
    root = Path(tempfile.mkdtemp(prefix="offshelf-profile-"))
    options: dict[str, Any] = {"model": MODEL, "progress": False, "precision": precision}
    embed(paths[:32], root / "warmup", **options)
    timed(Reader, "load", "decode", decoders)
    timed(Backbone, "forward_preprocessed", "model", callers)
    timed(Preprocessing, "apply", "preprocessing")
    timed(Pooling, "__call__", "pooling")
    timed(Committer, "commit", "commit")
    real_run, marks = runner._run, {}

    def run(*args: Any, **kwargs: Any) -> None:
        marks["threads"], marks["cpu"] = _thread_cpu(), time.process_time()
        try:
            real_run(*args, **kwargs)
        finally:
            marks["run"] = time.process_time() - marks["cpu"]
            after = _thread_cpu()
            skip = callers | decoders | {threading.get_native_id()}
            marks["pool"] = sum(after[t] - before for t, before in marks["threads"].items() if t in after and t not in skip)

    runner._run = run
    start = time.process_time()
    summary = embed(paths, root / "store", **options)
    total = time.process_time() - start
    if summary.embedded != n:
        raise RuntimeError(f"embedded {summary.embedded} of {n}")
    seconds["model"] += marks["pool"]
    seconds["setup"] = total - marks["run"]
    seconds["rest"] = marks["run"] - sum(seconds[s] for s in STAGES if s not in ("rest", "setup"))
    return {"precision": precision, "images": n, "cpu_ms_per_image": 1000 * total / n,
            "stages_ms_per_image": {s: 1000 * v / n for s, v in seconds.items()}, "loadavg": os.getloadavg()}


def run_child(src: Path | None, n: int, precision: str) -> dict[str, Any]:
    """`profile_run` in a child process importing offshelf from `src` (default: this tree's `src`)."""
    here = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str((src or here / "src").resolve()), str(here)])}
    command = [sys.executable, "-m", "benchmarks.embed_profile", "--child", precision, "--n", str(n)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"profile child ({src or 'this tree'}, {precision}) failed: {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout)


def markdown(result: dict[str, Any]) -> str:
    columns = list(result["medians"])
    lines = [
        f"# Where embed's CPU goes ({MODEL}, {result['n']} photos, batch 32)",
        "",
        f"{result['created']}; CPU ms per image, median of {result['reps']} runs each, runs alternating; load "
        f"average {result['loadavg_start'][0]:.1f} at the start, {result['loadavg_end'][0]:.1f} at the end. "
        "Method: the docstring of benchmarks/embed_profile.py.",
        "",
        "| stage | " + " | ".join(columns) + " |",
        "| --- | " + " | ".join("---:" for _ in columns) + " |",
    ]
    for stage in (*STAGES, "total"):
        cells = [result["medians"][c]["total" if stage == "total" else stage] for c in columns]
        lines.append(f"| {stage} | " + " | ".join(f"{v:.2f}" for v in cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.embed_profile", description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=300, help="photos per run (default 300)")
    parser.add_argument("--reps", type=int, default=3, help="runs per column (default 3)")
    parser.add_argument("--before", type=Path, default=None, metavar="SRC",
                        help="also profile the offshelf package in SRC (the code before a change)")
    parser.add_argument("--precisions", default="fp32,int8")
    parser.add_argument("--quick", action="store_true", help="smoke run: n=40, 1 rep, results in the data cache")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results)")
    parser.add_argument("--child", choices=("fp32", "int8"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(profile_run(args.n, args.child)))
        return 0
    if args.quick:
        args.n, args.reps = min(args.n, 40), 1
    if args.out is None:
        args.out = data_dir() / "quick-results" if args.quick else RESULTS_DIR
    columns = [(f"{precision} {label}", src, precision) for precision in args.precisions.split(",")
               for label, src in ((("before", args.before),) if args.before else ()) + (("after", None),)]
    started, load0 = dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(), os.getloadavg()
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in columns}
    for rep in range(args.reps):
        for name, src, precision in columns:
            runs[name].append(run_child(src, args.n, precision))
            print(f"[{rep + 1}/{args.reps}] {name}: {runs[name][-1]['cpu_ms_per_image']:.1f} CPU ms/image",
                  file=sys.stderr, flush=True)
    medians = {name: {**{s: median(r["stages_ms_per_image"][s] for r in rs) for s in STAGES},
                      "total": median(r["cpu_ms_per_image"] for r in rs)} for name, rs in runs.items()}
    result = {"created": started, "model": MODEL, "n": args.n, "reps": args.reps,
              "before": str(args.before) if args.before else None, "loadavg_start": load0,
              "loadavg_end": os.getloadavg(), "medians": medians, "runs": runs}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "embed_profile.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "embed_profile.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
