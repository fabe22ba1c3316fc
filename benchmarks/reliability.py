"""The reliability figures of docs/reliability.md: kill points, the concurrency loop, and the fuzz counts.

    python -m benchmarks.reliability [--seeds N] [--seconds S] [--cases embed,upgrade,...]

Kills each command of benchmarks/harness/killpoints.py at N seeded points (then re-runs and verifies), runs the
concurrency loop of benchmarks/harness/concurrency.py for S seconds on an exact store and on an HNSW-indexed one,
and adds the counts of `python -m benchmarks.fuzz` (run that first) from benchmarks/results/fuzz.json. Writes
benchmarks/results/reliability.json and reliability.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.datasets.photos import build_photo_set
from benchmarks.harness.concurrency import Pool, add_items, run_concurrency
from benchmarks.harness.killpoints import build_kill_data, count_writes, kill_cases, run_kill_point, seeded_kill_points

RESULTS = Path(__file__).parent / "results"
DEFAULT_CASES = ("embed", "embed-indexed", "index-build", "index-save", "align", "upgrade", "compact")


def kill_figures(work: Path, cases: list[str], seeds: int) -> dict[str, Any]:
    """Per case: kill points tried, how many killed the process, and each failure's message (0 expected)."""
    data = build_kill_data(work, build_photo_set(work / "images", n=8, long_side=(200, 320), seed=7))
    out = {}
    for name in cases:
        case = kill_cases(data)[name]
        writes = count_writes(case, work / f"count-{name}")
        tried, killed, failures = 0, 0, []
        for seed, point in zip(range(seeds), seeded_kill_points(len(writes), list(range(seeds)))):
            tried += 1
            try:
                killed += run_kill_point(case, work / f"{name}-{seed}", point, writes)["killed"]
            except AssertionError as exc:
                failures.append({"seed": seed, "kill_at": point, "before": writes[point - 1],
                                 "what": str(exc).splitlines()[0][:300]})
        out[name] = {"writes": len(writes), "tried": tried, "killed": killed, "failed": len(failures),
                     "failures": failures}
        print(name, {k: v for k, v in out[name].items() if k != "failures"}, flush=True)
    return out


def concurrency_figures(work: Path, seconds: float) -> dict[str, Any]:
    """The concurrency loop on an exact store and on an HNSW-indexed one (2 threads and 2 processes searching)."""
    from offshelf.extract import embed
    from offshelf.index import build_store_index

    images = build_photo_set(work / "images", n=24, long_side=(200, 320), seed=5)
    embed(images, work / "source", progress=False)
    pool = Pool.of_store(work / "source")
    out = {}
    for kind in ("exact", "hnsw"):
        store = work / kind / "store"
        store.mkdir(parents=True)
        shutil.copy(work / "source" / "manifest.json", store / "manifest.json")
        add_items(store, pool, list(range(len(pool.paths) // 2)))
        if kind == "hnsw":
            build_store_index(store, "hnsw")
        out[kind] = run_concurrency(store, pool, seconds=seconds, threads=2, processes=2, seed=0)
        print(kind, out[kind], flush=True)
    return out


def to_markdown(report: dict[str, Any]) -> str:
    lines = ["## Kill points", "", "| command | writes in a run | kill points tried | processes killed | failed |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for name, row in report["kill"].items():
        lines.append(f"| {name} | {row['writes']} | {row['tried']} | {row['killed']} | {row['failed']} |")
    for name, row in report["kill"].items():
        for failure in row["failures"]:
            lines.append(f"\n- {name} seed {failure['seed']} (before `{failure['before']}`): {failure['what']}")
    lines += ["", "## Concurrency", "", "| store | searches | adds | removes | deleted item seen | torn rows | "
              "added item unseen | half-visible rows |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for kind, row in report["concurrency"].items():
        lines.append(f"| {kind} | {row['searches']} | {row['adds']} | {row['removes']} | {row['deleted_seen']} | "
                     f"{row['torn']} | {row['unseen']} | {row['half_visible']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10, help="kill points per command")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each concurrency loop")
    parser.add_argument("--cases", default=",".join(DEFAULT_CASES), help="commands to kill (comma-separated)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="offshelf-reliability-") as work:
        report: dict[str, Any] = {"kill": kill_figures(Path(work) / "kill", args.cases.split(","), args.seeds),
                                  "concurrency": concurrency_figures(Path(work) / "concurrency", args.seconds)}
    fuzz = RESULTS / "fuzz.json"
    report["fuzz"] = json.loads(fuzz.read_text()) if fuzz.is_file() else None
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "reliability.json").write_text(json.dumps(report, indent=2) + "\n")
    (RESULTS / "reliability.md").write_text(to_markdown(report))
    print(to_markdown(report))


if __name__ == "__main__":
    main()
