"""The model-upgrade workflow on real models and images: an efficientnet-lite0 store is re-embedded with
efficientnet-lite2 in a background thread while a MixedSearcher answers lite2 queries; every item stays findable
at every moment, and the switch-over marker makes the new store the one searched."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from benchmarks.datasets import build_photo_set
from offshelf import OffshelfError, Searcher, embed
from offshelf.images import real_photos
from offshelf.index import build_store_index
from offshelf.store import UPGRADE_MARKER, FeatureStore, FileState, StoreConfig, read_upgrade_marker, resolve_store
from offshelf.upgrade import (
    AlignedSearcher,
    MixedSearcher,
    fit_alignment,
    save_alignment,
    upgrade_in_background,
    upgrade_index,
)

OLD, NEW = "efficientnet-lite0", "efficientnet-lite2"


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A 46-image gallery in a lite0 store; a lite2 'sample' store of two thirds of it, from which the map is fit."""
    root = tmp_path_factory.mktemp("upgrade")
    gallery = [*build_photo_set(root / "photos", n=36, long_side=(200, 320), seed=5), *real_photos()]
    assert embed(gallery, root / "old", model=OLD, progress=False).failed == 0
    sample = [p for i, p in enumerate(gallery) if i % 3]
    assert embed(sample, root / "sample", model=NEW, progress=False).failed == 0
    alignment, report = fit_alignment(root / "old", root / "sample", method="procrustes", holdout=0.2)
    save_alignment(alignment, root / "map")
    return {"root": root, "gallery": gallery, "report": report}


def own_vectors(store: Path) -> tuple[np.ndarray, np.ndarray]:
    ids, _, vectors = FeatureStore.open(store).vectors()
    return ids, vectors


def test_every_item_stays_findable_during_the_backfill_and_after_the_switch(setup: dict) -> None:
    root = setup["root"]
    old_ids, _ = own_vectors(root / "old")
    n = len(old_ids)
    sample_ids, sample_queries = own_vectors(root / "sample")  # new-model embeddings of the map's training images
    aligned = AlignedSearcher(root / "old", root / "map")
    assert [h[0].id for h in aligned.search_vectors(sample_queries, 1)] == sample_ids.tolist()

    searcher = MixedSearcher(root / "old", root / "map", root / "new")
    assert searcher.progress == (0, n)
    progress_reports: list[dict] = []
    job = upgrade_in_background(root / "old", root / "map", root / "new", shard_size=4, chunk_size=6,
                                batch_size=4, on_progress=progress_reports.append)
    seen_progress = set()
    probes = 0
    while True:
        finished = job.done
        # every item findable: a search for everything returns every item, exactly once
        for hits in searcher.search_vectors(sample_queries[:3], k=n):
            assert sorted(h.id for h in hits) == sorted(old_ids.tolist())
            assert [h.rank for h in hits] == list(range(1, n + 1))
            assert all(a.score >= b.score for a, b in zip(hits, hits[1:]))
        # the sample's items at rank 1 with their own new-model embedding
        assert [h[0].id for h in searcher.search_vectors(sample_queries, 1)] == sample_ids.tolist()
        # items already re-embedded: found at rank 1 with their (exact) new vectors
        if (root / "new" / "manifest.json").is_file():
            new_ids, new_vectors = own_vectors(root / "new")
            if len(new_ids):
                assert [h[0].id for h in searcher.search_vectors(new_vectors, 1)] == new_ids.tolist()
        seen_progress.add(searcher.progress[0])
        probes += 1
        if finished:
            break
        time.sleep(0.02)
    report = job.result()
    assert report["switched"] and report["embedded"] == n and report["missing_count"] == 0, report
    assert len([s for s in seen_progress if 0 < s < n]) >= 2, (seen_progress, probes)  # really during the backfill
    assert progress_reports[-1]["switched"] and progress_reports[0]["done"] == 6

    # switched: the marker names the new store, searches use it with plain new-space cosine
    marker = read_upgrade_marker(root / "old")
    assert marker is not None and Path(marker["new_store"]) == (root / "new").resolve()
    assert resolve_store(root / "old").root == (root / "new").resolve()
    searcher.search_vectors(sample_queries[:1], 1)  # picks up the marker
    assert searcher.switched and searcher.progress == (n, n)
    new_ids, new_vectors = own_vectors(root / "new")
    assert sorted(new_ids.tolist()) == sorted(old_ids.tolist())
    after = Searcher(resolve_store(root / "old"))
    assert after.store.config.model == NEW
    hits = after.search_vectors(new_vectors, 1)
    assert [h[0].id for h in hits] == new_ids.tolist()
    assert all(h[0].score == pytest.approx(1.0, abs=1e-4) for h in hits)
    # an aligned search of the upgraded store goes straight to the new store (no mapping)
    direct = AlignedSearcher(root / "old", root / "map")
    assert direct.direct is not None and direct.search_vectors(new_vectors[:5], 1)[0][0].id == new_ids[0]

    # running the upgrade again does nothing (it resumes from what is committed)
    again = upgrade_index(root / "old", root / "map", root / "new", progress=False)
    assert again["embedded"] == 0 and again["switched"] and again["passes"] == 0


def test_a_partial_backfill_resumes_without_redoing_committed_shards(setup: dict, tmp_path: Path) -> None:
    """A run killed after committing some shards (here: an old store whose new store holds part of the gallery
    embedded by the new model) embeds only the rest; no marker until everything is there."""
    root = setup["root"]
    old = tmp_path / "old"
    part = setup["gallery"][:8]
    assert embed(part, old, model=OLD, progress=False).failed == 0
    assert embed(part[:5], tmp_path / "new", model=NEW, progress=False).embedded == 5
    report = upgrade_index(old, root / "map", tmp_path / "new", progress=False)
    assert report["embedded"] == 3 and report["switched"], report
    assert len(FeatureStore.open(tmp_path / "new")) == 8


def test_missing_files_block_the_switch(setup: dict, tmp_path: Path) -> None:
    root = setup["root"]
    copies = []
    for photo in real_photos()[:3]:
        shutil.copy(photo, tmp_path / photo.name)
        copies.append(tmp_path / photo.name)
    assert embed(copies, tmp_path / "old", model=OLD, progress=False).failed == 0
    copies[0].unlink()
    report = upgrade_index(tmp_path / "old", root / "map", tmp_path / "new", progress=False)
    assert not report["switched"] and report["missing_count"] == 1
    assert report["missing"] == [str(copies[0].resolve())]
    assert not (tmp_path / "old" / UPGRADE_MARKER).exists()
    # the mixed searcher still serves the missing item from the old store
    mixed = MixedSearcher(tmp_path / "old", root / "map", tmp_path / "new")
    assert mixed.progress == (2, 3) and len(mixed.search_vectors(own_vectors(tmp_path / "new")[1][:1], 3)[0]) == 3
    forced = upgrade_index(tmp_path / "old", root / "map", tmp_path / "new", progress=False, allow_missing=True)
    assert forced["switched"] and json.loads((tmp_path / "old" / UPGRADE_MARKER).read_text())["missing"] == 1


def test_refuses_a_store_of_another_model(setup: dict) -> None:
    root = setup["root"]
    with pytest.raises(OffshelfError, match="swapped"):
        upgrade_index(root / "sample", root / "map", root / "elsewhere", progress=False)
    with pytest.raises(OffshelfError, match="swapped"):
        MixedSearcher(root / "sample", root / "map", root / "elsewhere")
    with pytest.raises(OffshelfError, match="another directory"):
        upgrade_index(root / "old", root / "map", root / "old", progress=False)


# -- synthetic stores: the store-index path and the add-then-remove ordering under heavy concurrency -------------

def synthetic_store(root: Path, model: str, paths: list[str], vectors: np.ndarray, shard: int,
                    pause: float = 0.0) -> FeatureStore:
    store = FeatureStore.open_or_create(root, StoreConfig(model, "x", "none", "none", vectors.shape[1]))
    with store.writer() as writer:
        for start in range(0, len(paths), shard):
            rows = store.new_rows()
            for path, vector in zip(paths[start : start + shard], vectors[start : start + shard]):
                rows.add(path, FileState(path, 1, 1), vector)
            writer.commit(rows)
            time.sleep(pause)
    return store


def test_concurrent_searches_never_miss_an_item_while_shards_land(tmp_path: Path) -> None:
    """600 items, old 16-d / new 12-d, a full-rank map (enough pairs) so the old store's own HNSW index serves the
    mapped side; a writer commits the new store in shards of 7, a thread takes them in, two threads search."""
    rng = np.random.default_rng(0)
    n = 600
    paths = [f"/synthetic/{i:04d}.jpg" for i in range(n)]
    new = rng.standard_normal((n, 12)).astype(np.float32)
    rotation = np.linalg.qr(rng.standard_normal((16, 16)))[0]
    old = (np.hstack([new, 0.1 * rng.standard_normal((n, 4))]) @ rotation).astype(np.float32)
    synthetic_store(tmp_path / "old", "old-net", paths, old, 100)
    synthetic_store(tmp_path / "sample", "new-net", paths, new, 100)
    build_store_index(tmp_path / "old", "hnsw")
    alignment, report = fit_alignment(tmp_path / "old", tmp_path / "sample", method="linear")
    assert alignment.full_comparison and report["holdout_top1"] > 0.9
    aligned = AlignedSearcher(tmp_path / "old", alignment)
    assert aligned.gallery is not None and aligned.gallery.uses_store_index
    assert np.mean([h[0].path == p for h, p in zip(aligned.search_vectors(new, 1), paths)]) > 0.9

    # refreshes run in their own thread, concurrently with searches (auto_refresh would serialize them)
    mixed = MixedSearcher(tmp_path / "old", alignment, tmp_path / "new", auto_refresh=False)
    stop, failures, searches, seen = threading.Event(), [], [0], set()

    def search_forever(seed: int) -> None:
        local = np.random.default_rng(seed)
        while not stop.is_set():
            for hits in mixed.search_vectors(new[local.choice(n, 2)], k=n):
                if len({h.id for h in hits}) != n:
                    failures.append(len(hits))
            searches[0] += 1
            seen.add(mixed.progress[0])

    def refresh_forever() -> None:
        while not stop.is_set():
            mixed.refresh()

    threads = [threading.Thread(target=search_forever, args=(s,)) for s in range(2)]
    threads.append(threading.Thread(target=refresh_forever))
    for t in threads:
        t.start()
    order = rng.permutation(n)
    synthetic_store(tmp_path / "new", "new-net", [paths[i] for i in order], new[order], 7, pause=0.01)
    time.sleep(0.2)
    stop.set()
    for t in threads:
        t.join()
    mixed.refresh()
    assert not failures and searches[0] > 5
    assert len([s for s in seen if 0 < s < n]) >= 5, seen
    assert mixed.progress == (n, n)
    assert [h[0].path for h in mixed.search_vectors(new[:20], 1)] == paths[:20]  # all exact now
