"""Searches in threads and in other processes while items are added and removed (benchmarks/harness/concurrency.py):
never a deleted item after its removal returned, never a torn row, every added item found once its add returned.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from benchmarks.datasets.photos import build_photo_set
from benchmarks.harness.concurrency import Pool, add_items, run_concurrency, search_once
from offshelf.extract import embed
from offshelf.index import build_store_index
from offshelf.store import FeatureStore

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store of 24 real photo crops embedded by efficientnet-lite0."""
    root = tmp_path_factory.mktemp("concurrency")
    images = build_photo_set(root / "images", n=24, long_side=(200, 320), seed=5)
    assert embed(images, root / "source", progress=False).failed == 0
    return root / "source"


@pytest.fixture(scope="module")
def pool(source: Path) -> Pool:
    return Pool.of_store(source)


def half_store(source: Path, pool: Pool, root: Path, indexed: bool) -> Path:
    """A store holding the first half of the pool (same manifest as the pool's), with an HNSW index if asked."""
    store = root / "store"
    store.mkdir()
    shutil.copy(source / "manifest.json", store / "manifest.json")
    add_items(store, pool, list(range(len(pool.paths) // 2)))
    if indexed:
        build_store_index(store, "hnsw")
    return store


def test_search_pass_counts_what_it_sees(source: Path, pool: Pool, tmp_path: Path) -> None:
    """The checker itself: a store with half the pool finds exactly that half, nothing torn."""
    store = half_store(source, pool, tmp_path, indexed=False)
    seen = search_once(store, pool)
    assert set(seen["found"]) == set(FeatureStore.open(store).table().column("id").to_pylist())
    assert len(seen["found"]) == len(pool.paths) // 2 and seen["torn"] == seen["half_visible"] == 0


@pytest.mark.parametrize("indexed", [False, True], ids=["exact", "hnsw"])
def test_searches_during_adds_and_removes(source: Path, pool: Pool, tmp_path: Path, indexed: bool) -> None:
    store = half_store(source, pool, tmp_path, indexed)
    report = run_concurrency(store, pool, seconds=6.0, threads=2, processes=1, seed=1)
    assert report["searches"] >= 10 and report["adds"] >= 2 and report["removes"] >= 2, report
    assert report["deleted_seen"] == 0, report
    assert report["torn"] == 0, report
    assert report["unseen"] == 0, report
    assert report["half_visible"] == 0, report  # an index lagging a write is caught up before a search answers
