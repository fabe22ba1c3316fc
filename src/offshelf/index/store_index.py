"""The index of a feature store, kept under `STORE/index/`: build (measured, optionally tuned), load, update.

The index records the last store commit it covers (`store_seq`). It is built from a consistent snapshot of the
store and, before it is saved, catches up with what was committed meanwhile; `update_store_index` (run by
`embed`, `remove` and a `Searcher` that finds it behind) brings a lagging index up to date, so the store and its
index agree whenever an answer is given.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from offshelf.errors import BusyError, OffshelfError
from offshelf.index.base import MANIFEST, VectorIndex, build_index, digests, directory_lock, read_manifest
from offshelf.index.graph import auto_choice, auto_target
from offshelf.index.recall import measure_recall, tune
from offshelf.store import CHUNK_ROWS, FeatureStore, StoreVectors, resolve_store

INDEX_DIR = "index"
_LOCK_TRIES = 300


def store_index_dir(store_dir: str | Path) -> Path:
    return Path(store_dir) / INDEX_DIR


def build_store_index(store_dir: str | Path, kind: str, pca: int | None = None, target_recall: float | None = None,
                      *, whiten: bool = False, sample: int = 1000, seed: int = 0, **params: Any) -> dict[str, Any]:
    """Build an index of every vector in the store, measure it, tune it if asked, save it atomically.

    `kind="auto"` picks the kind and build parameters from the store's size (`offshelf.index.graph.auto_choice`)
    and tunes to `auto_target(target_recall)` (0.95 by default).

    Recall is measured leave-one-out on `min(sample, n)` of the store's vectors against exact search on the
    original features (see `offshelf.index.recall`). With `target_recall`, `tune` builds the index and picks the
    search setting on held-out queries (seed `seed`, reported under `tuning`, its time included in
    `build_seconds`); the reported recall is then measured leave-one-out on another sample (seed `seed + 1`).
    Returns a JSON-ready report: kind, n, recall_at_1, recall_at_10, qps, bytes_per_vector, params, ...
    """
    store = resolve_store(store_dir)
    store_dir = store.root
    snapshot, vectors = store.snapshot_view()  # streamed from the shards: never the whole matrix in memory
    ids = vectors.ids
    if not len(ids):
        raise OffshelfError(f"store {store_dir} holds no vectors; embed images first")
    if kind == "auto":  # the kind and build parameters from the store's size; the search depth tuned below
        kind, chosen = auto_choice(len(ids), vectors.shape[1])
        params, target_recall = {**chosen, **params}, auto_target(target_recall)
    start = time.perf_counter()
    build = {"pca": pca, "whiten": whiten, "identity": store.config.identity(), **params}
    report: dict[str, Any] = {}
    if target_recall is None:
        index = build_index(vectors, ids, kind, **build)
    else:
        index, report["tuning"] = tune(kind, target_recall, vectors, ids, sample=sample, seed=seed, **build)
    report["build_seconds"] = time.perf_counter() - start
    index.store_seq = snapshot.seq
    return finish_store_index(index, store, vectors, ids, sample=sample, seed=seed + 1, report=report)


def finish_store_index(index: VectorIndex, store: FeatureStore, vectors: np.ndarray, ids: np.ndarray, *,
                       sample: int, seed: int, report: dict[str, Any]) -> dict[str, Any]:
    """Measure a freshly built index of the store's commits up to `index.store_seq` (recall on `sample` queries,
    seed `seed`), catch it up with what was committed during the build and save it as the store's index."""
    measured = measure_recall(index, vectors, ids, sample=sample, seed=seed)
    if index.pca is not None or index.whiten:
        in_index_space = measure_recall(index, vectors, ids, sample=sample, seed=seed, space="index")
        measured["recall_at_10_index_space"] = in_index_space["recall_at_10"]
    path = store_index_dir(store.root)
    for attempt in range(_LOCK_TRIES):  # an embed or remove may be updating the old index for a moment
        try:
            with directory_lock(path):
                report["caught_up"] = sync_with_store(index, store)  # what was committed during the build
                index._write(path)
            break
        except BusyError:
            if attempt == _LOCK_TRIES - 1:
                raise
            time.sleep(0.1)
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


def sync_index(index: VectorIndex, ids: np.ndarray, vectors: np.ndarray | StoreVectors) -> dict[str, int]:
    """Make the index hold exactly `ids` with `vectors`: add the missing, replace the changed, remove the rest.

    `vectors` may be a `StoreVectors`: they are compared and added `CHUNK_ROWS` at a time."""
    indexed = index._live_digests()
    prints = streamed_digests(vectors)
    stale = np.array([indexed.get(i) != d for i, d in zip(ids.tolist(), prints.tolist())], bool)
    replaced = sum(1 for i in ids[stale].tolist() if i in indexed)
    removed = index.remove(np.setdiff1d(index.ids(), ids))
    rows = np.flatnonzero(stale)
    for start in range(0, len(rows), CHUNK_ROWS):
        chunk = rows[start : start + CHUNK_ROWS]
        index.add(vectors[chunk], ids[chunk])
    return {"added": int(stale.sum()) - replaced, "replaced": replaced, "removed": removed}


def streamed_digests(vectors: np.ndarray | StoreVectors) -> np.ndarray:
    """`digests` of every row, computed `CHUNK_ROWS` rows at a time."""
    return np.concatenate([digests(vectors[s : s + CHUNK_ROWS]) for s in range(0, len(vectors), CHUNK_ROWS)]
                          or [np.empty(0, np.int64)])


def sync_with_store(index: VectorIndex, store: FeatureStore, force: bool = False) -> dict[str, int] | None:
    """Catch `index` up with the store's commits after `index.store_seq`; None if it was current (with `force`,
    compare every id and vector anyway)."""
    if not force and index.store_seq == store.snapshot().seq:
        return None
    snapshot, vectors = store.snapshot_view()
    counts = sync_index(index, vectors.ids, vectors)
    counts["from_seq"], counts["to_seq"] = index.store_seq or 0, snapshot.seq
    index.store_seq = snapshot.seq
    return counts


def index_is_current(store: FeatureStore) -> bool | None:
    """Whether the saved index covers every commit of the store (None if the store has no index)."""
    directory = store_index_dir(store.root)
    if not (directory / MANIFEST).is_file():
        return None
    return read_manifest(directory).get("store_seq") == store.snapshot().seq


def update_store_index(store_dir: str | Path, *, force: bool = False) -> dict[str, Any] | None:
    """Bring the saved index in line with the store without a rebuild; None if the store has no index.

    Store rows missing from the index are added, rows whose vector changed (a re-embedded file) replaced, and
    ids gone from the store removed (tombstones: `build_store_index` again to reclaim their memory). If another
    process holds the index (a build or an update), nothing is done and `deferred` says so: that process, or
    the next search, catches the index up, since it records which commits it covers.
    """
    store = FeatureStore.open(store_dir)
    current = index_is_current(store)
    if current is None:
        return None
    directory = store_index_dir(store_dir)
    if current and not force:
        return {"kind": read_manifest(directory)["kind"], "added": 0, "replaced": 0, "removed": 0, "current": True}
    try:
        with directory_lock(directory):
            index = VectorIndex.load(directory)
            index.check_identity(store.config.identity(), f"store {store_dir}")
            counts = sync_with_store(index, store, force) or {"added": 0, "replaced": 0, "removed": 0}
            index._write(directory)
    except BusyError as exc:
        return {"deferred": str(exc)}
    return {"kind": index.kind, **counts, "n": index.ntotal, "tombstones": index.ntombstones}


def _rebuild(store: FeatureStore) -> dict[str, Any]:
    """Build the index again, of the kind and parameters its manifest names; flat if it names none, or if
    the damaged manifest's settings are not ones a build accepts (the report says which and why)."""
    try:
        manifest = read_manifest(store_index_dir(store.root))
        settings = {"kind": manifest["kind"], "pca": manifest.get("pca"), "whiten": bool(manifest.get("whiten")),
                    **dict(manifest.get("params") or {})}
        return build_store_index(store.root, **settings)
    except (OffshelfError, TypeError, ValueError, KeyError) as exc:
        report = build_store_index(store.root, "flat")
        report["rebuilt_as_flat"] = f"the index's recorded settings are unusable: {exc}"
        return report


def check_store_index(store_dir: str | Path, *, repair: bool = False) -> dict[str, Any]:
    """Whether the store's index agrees with the store: readable, the same features, every commit covered, the
    same ids with the same vectors. `repair` rebuilds an unreadable index and catches up a lagging one."""
    store = FeatureStore.open(store_dir)
    directory = store_index_dir(store.root)
    report: dict[str, Any] = {"present": (directory / MANIFEST).is_file(), "problems": [], "repaired": []}
    if not report["present"]:
        return report
    problems = report["problems"]
    try:
        index = load_store_index(store.root)
    except Exception as exc:  # noqa: BLE001 - a damaged index fails in JSON, numpy or FAISS; all mean "rebuild"
        problems.append({"file": str(directory), "what": f"unreadable: {str(exc).splitlines()[0] if str(exc) else exc!r}",
                         "repair": "rebuild"})
        index = None
    if index is not None:
        snapshot, vectors = store.snapshot_view()
        ids = vectors.ids
        if index.store_seq != snapshot.seq:
            problems.append({"file": str(directory / MANIFEST), "repair": "catch up", "what":
                             f"covers store commits up to {index.store_seq}, the store is at {snapshot.seq}"})
        indexed = index._live_digests()
        current = dict(zip(ids.tolist(), streamed_digests(vectors).tolist()))
        missing, extra = len(current.keys() - indexed.keys()), len(indexed.keys() - current.keys())
        stale = sum(1 for i, d in current.items() if i in indexed and indexed[i] != d)
        if missing or extra or stale:
            problems.append({"file": str(directory), "repair": "catch up", "what":
                             f"holds {len(indexed)} items, the store {len(current)}: {missing} missing, {extra} not "
                             f"in the store, {stale} with an outdated vector"})
        report |= {"kind": index.kind, "n": index.ntotal, "store_seq": index.store_seq}
    if repair and problems:
        outcome = _rebuild(store) if index is None else update_store_index(store.root, force=True)
        report["repaired"], report["problems"] = problems, []
        kept = ("kind", "n", "added", "removed", "replaced", "deferred", "rebuilt_as_flat")
        report["repair"] = {k: v for k, v in (outcome or {}).items() if k in kept}
        if outcome and "deferred" in outcome:
            raise BusyError(outcome["deferred"])
        report["n"] = (outcome or {}).get("n", report.get("n"))
    report["healthy"] = not report["problems"]
    return report
