"""The long fuzz run (hypothesis) of the decoder, the store reader, the index reader and the alignment map reader.

    python -m benchmarks.fuzz [--examples N]

Writes benchmarks/results/fuzz.json and fuzz.md: executions per target, how many inputs were accepted soundly,
rejected with the documented error, or crashed, and one input per distinct crash. The targets and mutations
are in benchmarks/harness/fuzz_targets.py; tests/test_fuzz.py runs the same targets briefly.
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmarks.harness.fuzz_targets import (
    MUTATIONS,
    build_material,
    decode_target,
    index_files,
    index_target,
    map_target,
    mutate,
    seed_images,
    store_files,
    store_target,
)

RESULTS = Path(__file__).parent / "results"
MUTATION_LISTS = st.lists(st.tuples(st.sampled_from(MUTATIONS), st.integers(0, 1 << 20), st.integers(0, 255)),
                          min_size=1, max_size=4)
JSON_EDITS = st.lists(st.tuples(st.integers(0, 200), st.integers(0, 200)), max_size=3)


def crash_kind(exc: BaseException) -> str:
    """The exception's type and first line, without file names or ids (so one defect counts once)."""
    first = str(exc).splitlines()[0] if str(exc) else ""
    first = re.sub(r"'?/\S+'?", "FILE", first)
    return f"{type(exc).__name__}: {re.sub(r'[0-9]{6,}', 'N', first)[:90]}"


def fuzz(run: Callable[..., str], strategy: st.SearchStrategy, examples: int) -> dict[str, Any]:
    """Feed `examples` inputs drawn from `strategy` to `run`; count outcomes and keep one input per crash."""
    counts: Counter[str] = Counter()
    crashes: dict[str, str] = {}

    @settings(max_examples=examples, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def one(args: tuple) -> None:
        try:
            counts[run(*args)] += 1
        except Exception as exc:  # noqa: BLE001 - a crash is what we count
            counts["crash"] += 1
            crashes.setdefault(crash_kind(exc), repr(args)[:400])

    started = time.perf_counter()
    one()
    return {"executions": sum(counts.values()), "ok": counts["ok"], "rejected": counts["rejected"],
            "crashes": counts["crash"], "distinct_crashes": crashes, "seconds": round(time.perf_counter() - started, 1)}


def run_fuzz(examples: int, work: Path) -> dict[str, Any]:
    """Every target; image targets get 10x `examples` (they are ~100x cheaper than copying a store)."""
    seeds = seed_images()
    material = build_material(work)
    stores, indexes = store_files(material), index_files(material)
    on_files = st.tuples(st.integers(0, 1000), MUTATION_LISTS, JSON_EDITS)
    targets = {
        "decoder: mutated images": (lambda name, changes: decode_target(mutate(seeds[name], changes)),
                                    st.tuples(st.sampled_from(sorted(seeds)), MUTATION_LISTS), examples * 10),
        "decoder: random bytes": (decode_target, st.tuples(st.binary(max_size=2048)), examples * 10),
        "store files": (lambda i, m, e: store_target(material, stores[i % len(stores)], m, e), on_files, examples),
        "index files": (lambda i, m, e: index_target(material, indexes[i % len(indexes)], m, e), on_files, examples),
        "alignment map files": (lambda i, m, e: map_target(material, ("arrays.npz", "meta.json")[i % 2],
                                                           m if i % 2 == 0 else [], e), on_files, examples),
    }
    return {name: fuzz(run, strategy, n) for name, (run, strategy, n) in targets.items()}


def to_markdown(report: dict[str, Any]) -> str:
    lines = ["| target | executions | accepted | rejected (documented error) | crashes | distinct crashes |",
             "| --- | ---: | ---: | ---: | ---: | --- |"]
    for name, row in report.items():
        kinds = "<br>".join(f"`{k}`" for k in row["distinct_crashes"]) or "none"
        lines.append(f"| {name} | {row['executions']} | {row['ok']} | {row['rejected']} | {row['crashes']} | {kinds} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=1000, help="inputs per file target (x10 for images)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="offshelf-fuzz-") as work:
        report = run_fuzz(args.examples, Path(work))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "fuzz.json").write_text(json.dumps(report, indent=2) + "\n")
    (RESULTS / "fuzz.md").write_text(to_markdown(report))
    print(to_markdown(report))


if __name__ == "__main__":
    main()
