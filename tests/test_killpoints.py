"""SIGKILL at seeded points of real `offshelf` subprocesses (embed, index build, index save, align, upgrade): the
committed state stays readable, a re-run completes with exactly one row per image, and every stored row is found
by search. The harness is benchmarks/harness/killpoints.py; `python -m benchmarks.reliability` runs more seeds.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import pytest

from benchmarks.datasets.photos import build_photo_set
from benchmarks.harness.killpoints import (
    KillData,
    build_kill_data,
    count_writes,
    kill_cases,
    offshelf_check,
    run_kill_point,
    seeded_kill_points,
)

SEEDS = [0, 1, 2]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> KillData:
    root = tmp_path_factory.mktemp("kill")
    return build_kill_data(root, build_photo_set(root / "images", n=8, long_side=(200, 320), seed=7))


@pytest.fixture(scope="module")
def writes(data: KillData, tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], list[str]]:
    """A case's writes in a complete run, counted once per module."""
    @functools.cache
    def count(name: str) -> list[str]:
        return count_writes(kill_cases(data)[name], tmp_path_factory.mktemp(f"count-{name}"))

    return count


@pytest.mark.parametrize("name", ["embed", "index-build", "index-save", "align", "upgrade"])
def test_killed_command_resumes_to_a_complete_findable_state(name: str, data: KillData, writes: Callable[[str], list[str]],
                                                            tmp_path: Path) -> None:
    case, log = kill_cases(data)[name], writes(name)
    assert len(log) >= 8, log  # enough distinct kill points to be worth seeding
    points = seeded_kill_points(len(log), SEEDS)
    results = [run_kill_point(case, tmp_path / f"seed-{seed}", point, log) for seed, point in zip(SEEDS, points)]
    assert [r["kill_at"] for r in results] == points
    assert sum(r["killed"] for r in results) >= 2, results  # the kills happened (not all runs finished first)


def _after_last_shard(log: list[str]) -> int:
    """The kill point just after the last shard was published (before the index is brought up to date)."""
    last = max(i for i, write in enumerate(log, start=1) if write.startswith("os.rename") and "/shards/" in write)
    assert last < len(log), "embed wrote nothing after its last shard"
    return last + 1


def test_rows_committed_before_a_kill_are_found_after_the_rerun(data: KillData, writes: Callable[[str], list[str]], tmp_path: Path) -> None:
    log = writes("embed-indexed")
    run_kill_point(kill_cases(data)["embed-indexed"], tmp_path / "work", _after_last_shard(log), log)


def test_check_passes_after_a_kill_and_repair(data: KillData, writes: Callable[[str], list[str]], tmp_path: Path) -> None:
    case, log = kill_cases(data)["embed"], writes("embed")
    run_kill_point(case, tmp_path / "work", seeded_kill_points(len(log), [3])[0], log)
    report = offshelf_check(tmp_path / "work" / "store", repair=True)
    assert report and offshelf_check(tmp_path / "work" / "store")


def test_killed_compact_leaves_the_old_or_the_new_state(data: KillData, writes: Callable[[str], list[str]], tmp_path: Path) -> None:
    case, log = kill_cases(data)["compact"], writes("compact")
    for seed, point in zip(SEEDS, seeded_kill_points(len(log), SEEDS)):
        run_kill_point(case, tmp_path / f"seed-{seed}", point, log)
