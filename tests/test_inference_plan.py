"""How `embed` schedules inference: one intra-op thread per batch and a batch per core by default, the same
stored vectors and rows whatever the schedule, and the rows of finished batches committed when a later one fails."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from offshelf import Embedder, FeatureStore, embed, make_config
from offshelf.extract import Reader
from offshelf.extract.runner import MAX_BATCHES_AT_ONCE, inference_plan
from offshelf.images import find_images
from offshelf.models import get_model_spec
from offshelf.models.runtime import THREADS_ENV, available_cores


def test_plan_defaults_to_one_thread_per_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(THREADS_ENV, raising=False)
    cores = available_cores()
    assert inference_plan(None) == (1, cores)
    assert inference_plan(cores) == (cores, 1)  # the schedule before: one batch on every core's thread
    assert inference_plan(cores + 3) == (cores + 3, 1)
    monkeypatch.setattr("offshelf.extract.runner.available_cores", lambda: 64)  # a big machine: memory capped
    assert inference_plan(None) == (16, MAX_BATCHES_AT_ONCE) and inference_plan(2) == (2, MAX_BATCHES_AT_ONCE)
    monkeypatch.setattr("offshelf.extract.runner.available_cores", lambda: cores)
    monkeypatch.setenv(THREADS_ENV, "1")
    assert inference_plan(None) == (1, cores)
    monkeypatch.setenv(THREADS_ENV, str(cores))
    assert inference_plan(None) == (cores, 1)


def shard_rows(store: Path) -> list[tuple[str, bytes]]:
    """(path, embedding bytes) of every shard row, in commit and row order."""
    rows = []
    for shard in sorted((store / "shards").iterdir()):
        table = pq.read_table(shard, columns=["path", "embedding"])
        vectors = np.stack(table.column("embedding").to_numpy(zero_copy_only=False))
        rows += [(p, v.astype(np.float32).tobytes()) for p, v in zip(table.column("path").to_pylist(), vectors)]
    return rows


def test_schedules_store_identical_rows(tmp_path: Path, small_photo_set: list[Path]) -> None:
    """Batches of 4 in flight two at a time on one thread each store bit for bit what one batch at a time on
    two threads stores, in the same rows and shards, and what the embedder computes file by file."""
    photos = small_photo_set[:22]
    options = dict(batch_size=4, shard_size=5, workers=2, progress=False)
    serial = embed(photos, tmp_path / "serial", threads=available_cores(), **options)
    concurrent = embed(photos, tmp_path / "concurrent", threads=1, **options)
    assert serial.embedded == concurrent.embedded == len(photos)
    rows = shard_rows(tmp_path / "concurrent")
    assert rows == shard_rows(tmp_path / "serial")
    assert [p for p, _ in rows] == [str(p) for p in find_images(photos)]  # input order, batches done or not
    assert len(list((tmp_path / "concurrent" / "shards").iterdir())) == 5  # ceil(22 / 5)
    reference = Embedder(make_config(get_model_spec("efficientnet-lite0")), threads=1).embed_files(find_images(photos[:8]))
    _, paths, stored = FeatureStore.open(tmp_path / "concurrent").vectors()
    order = [paths.index(str(p)) for p in find_images(photos[:8])]
    assert np.array_equal(stored[order], reference)


def test_failed_batch_keeps_the_batches_before_it(tmp_path: Path, small_photo_set: list[Path],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """An error in the third batch reaches the caller; the two batches before it are committed, and a re-run
    embeds only the rest."""
    photos = [Path(p) for p in find_images(small_photo_set[:16])]
    first_of_third = Reader(224).load(str(photos[8])).views
    real = Embedder.embed_views

    def third_fails(self: Embedder, views: list) -> np.ndarray:
        if np.array_equal(views[0], first_of_third):
            raise RuntimeError("inference failed on batch 3")
        return real(self, views)

    monkeypatch.setattr(Embedder, "embed_views", third_fails)
    with pytest.raises(RuntimeError, match="batch 3"):
        embed(photos, tmp_path / "store", batch_size=4, shard_size=100, threads=1, progress=False)
    _, paths, _ = FeatureStore.open(tmp_path / "store").vectors()
    assert sorted(paths) == [str(p) for p in photos[:8]]
    monkeypatch.setattr(Embedder, "embed_views", real)
    again = embed(photos, tmp_path / "store", batch_size=4, threads=1, progress=False)
    assert (again.skipped, again.embedded) == (8, 8)
