"""The index of a feature store, kept under `STORE/index/`: build (measured, optionally tuned), load, update."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from offshelf.errors import OffshelfError
from offshelf.index.base import MANIFEST, VectorIndex, build_index, digests, directory_lock
from offshelf.index.recall import measure_recall, tune
from offshelf.store import FeatureStore

INDEX_DIR = "index"


def store_index_dir(store_dir: str | Path) -> Path:
    return Path(store_dir) / INDEX_DIR


def build_store_index(store_dir: str | Path, kind: str, pca: int | None = None, target_recall: float | None = None,
                      *, whiten: bool = False, sample: int = 1000, seed: int = 0, **params: Any) -> dict[str, Any]:
    """Build an index of every vector in the store, measure it, tune it if asked, save it atomically.

    Recall is measured leave-one-out on `min(sample, n)` of the store's vectors against exact search on the
    original features (see `offshelf.index.recall`). With `target_recall`, `tune` first picks the search
    setting on one sample (seed `seed`) and the reported recall is then measured on another (seed `seed + 1`).
    Returns a JSON-ready report: kind, n, recall_at_1, recall_at_10, qps, bytes_per_vector, params, ...
    """
    store = FeatureStore.open(store_dir)
    ids, _, vectors = store.vectors()
    if not len(ids):
        raise OffshelfError(f"store {store_dir} holds no vectors; embed images first")
    start = time.perf_counter()
    index = build_index(vectors, ids, kind, pca=pca, whiten=whiten, identity=store.config.identity(), **params)
    report: dict[str, Any] = {"build_seconds": time.perf_counter() - start}
    if target_recall is not None:
        start = time.perf_counter()
        index, report["tuning"] = tune(index, target_recall, vectors, ids, sample=sample, seed=seed)
        report["tune_seconds"] = time.perf_counter() - start
    measured = measure_recall(index, vectors, ids, sample=sample, seed=seed + 1)
    if index.pca is not None or index.whiten:
        in_index_space = measure_recall(index, vectors, ids, sample=sample, seed=seed + 1, space="index")
        measured["recall_at_10_index_space"] = in_index_space["recall_at_10"]
    path = index.save(store_index_dir(store_dir))
    return {"kind": index.kind, "n": index.ntotal, "dim": index.dim, "index_dim": index.d, **measured,
            "bytes_per_vector": index.bytes_per_vector, "params": index.params, "identity": index.identity,
            "path": str(path), **report}


def load_store_index(store_dir: str | Path) -> VectorIndex | None:
    """The store's saved index, or None if it has none; OffshelfError if it was built for other features."""
    directory = store_index_dir(store_dir)
    if not (directory / MANIFEST).is_file():
        return None
    store = FeatureStore.open(store_dir)
    index = VectorIndex.load(directory)
    index.check_identity(store.config.identity(), f"store {store_dir}")
    return index


def update_store_index(store_dir: str | Path) -> dict[str, Any] | None:
    """Bring the saved index in line with the store without a rebuild; None if the store has no index.

    Store rows missing from the index are added, rows whose vector changed (a re-embedded file) replaced, and
    ids gone from the store removed (tombstones: `build_store_index` again to reclaim their memory).
    """
    directory = store_index_dir(store_dir)
    if not (directory / MANIFEST).is_file():
        return None
    store = FeatureStore.open(store_dir)
    with directory_lock(directory):
        index = VectorIndex.load(directory)
        index.check_identity(store.config.identity(), f"store {store_dir}")
        ids, _, vectors = store.vectors()
        indexed = index._live_digests()
        stale = np.array([indexed.get(i) != d for i, d in zip(ids.tolist(), digests(vectors).tolist())], bool)
        replaced = sum(1 for i in ids[stale].tolist() if i in indexed)
        removed = index.remove(np.setdiff1d(index.ids(), ids))
        if stale.any():
            index.add(vectors[stale], ids[stale])
        if removed or stale.any():
            index._write(directory)
    return {"kind": index.kind, "added": int(stale.sum()) - replaced, "replaced": replaced, "removed": removed,
            "n": index.ntotal, "tombstones": index.ntombstones}
