"""Model upgrades without downtime: search an old store with a new model's queries, re-embed it in the
background, and switch over when done.

* `AlignedSearcher`: searches an OLD store (its index if it has one) with queries embedded by the NEW model,
  mapped through an `AlignmentMap` (`offshelf search QUERY --store OLD --align MAP_DIR`).
* `upgrade_index`: re-embeds the old store's images with the new model into a new store (resumable: `embed`
  commits shards atomically and skips what is done), then writes the *upgrade marker* ``OLD/upgrade.json``
  (atomically) naming the new store. `resolve_store` follows markers, so `Searcher(OLD)` then searches the new
  store. `upgrade_in_background` runs it in a thread.
* `MixedSearcher`: serves new-model queries correctly *during* the backfill. Every item is scored once:
  re-embedded items by their new-space cosine (exactly the score they keep after the switch), the others by
  the mapped query's similarity in the alignment's comparison space, converted by the map's calibration into
  the new-space cosine it predicts (a monotone function fitted on held-out pairs), so the two kinds of score
  are on one scale and can be ranked together. Rows of the new store are picked up as they are committed.

Why every item stays findable at every moment: an item moves from the mapped side to the new side by
(1) adding it to the new-space index, then (2) removing it from the mapped index, while a search reads
(a) the mapped index, then (b) the new-space index. If (a) misses the item, (2) happened before (a), so (1)
happened before (b) and (b) finds it; an item seen by both is scored once, by its new-space score. Both sides
are searched k deep (never to a depth read from a side's current size, which may be outdated). The switch
itself happens only after every item of the old store is in the new store, so the new store alone then
serves the same items. See docs/upgrade.md.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from offshelf.errors import OffshelfError
from offshelf.search import Hit, Searcher
from offshelf.store import (
    MANIFEST,
    REMOVED_DIR,
    SHARDS_DIR,
    UPGRADE_MARKER,
    FeatureStore,
    read_upgrade_marker,
    resolve_store,
)
from offshelf.store.marker import marker_target
from offshelf.upgrade.maps import AlignmentMap, as_alignment

DEFAULT_UPGRADE_SHARD_SIZE = 256


def _hits(rows: list[list[tuple[int, float]]], path_of: dict[int, str]) -> list[list[Hit]]:
    return [[Hit(rank, i, path_of[i], s) for rank, (i, s) in enumerate(row, start=1)] for row in rows]


# -- the mapped side: an old store searched with mapped new-model queries ---------------------------------------

class _MappedGallery:
    """An old store's vectors searchable with mapped new-model queries; an in-memory copy (items can be removed
    from it without touching the store). Uses the store's own index when the map's comparison space is the
    whole old space, else an exact index of the vectors projected into the comparison space."""

    def __init__(self, store: FeatureStore, alignment: AlignmentMap, *, exact: bool = False) -> None:
        from offshelf.index import build_index, load_store_index

        self.alignment = alignment
        ids, paths, vectors = store.vectors()
        self.path_of = dict(zip(ids.tolist(), paths))
        self.uses_store_index = False
        if alignment.full_comparison:
            saved = None if exact else load_store_index(store.root)
            self.uses_store_index = saved is not None
            self.index = saved or (build_index(vectors, ids, "flat") if len(ids) else None)
        else:
            self.index = build_index(alignment.compare_old(vectors), ids, "flat") if len(ids) else None

    def search(self, new_vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(comparison-space scores, ids) of the k best items for each new-model query; -1 pads."""
        n = len(new_vectors)
        if self.index is None or self.index.ntotal == 0:
            return np.full((n, k), -np.inf, np.float32), np.full((n, k), -1, np.int64)
        return self.index.search(self.alignment.compare_new(new_vectors), k)

    def remove(self, ids: np.ndarray) -> None:
        if self.index is not None and len(ids):
            self.index.remove(np.asarray(ids, np.int64))

    def __len__(self) -> int:
        return 0 if self.index is None else self.index.ntotal


def _check_queries(queries: np.ndarray, dim: int, k: int) -> np.ndarray:
    if k < 1:
        raise OffshelfError(f"k must be at least 1, got {k}")
    queries = np.atleast_2d(np.asarray(queries, np.float32))
    if queries.shape[1] != dim:
        raise OffshelfError(f"query vectors have dim {queries.shape[1]}; the new model's are {dim}-d")
    return queries


class AlignedSearcher:
    """Searches an OLD store with queries embedded by the map's NEW model, mapped into the old space.

    ``AlignedSearcher(old_store, map_dir)``; `search_files(paths, k)` embeds the query images with the new model,
    `search_vectors(new_vectors, k)` takes new-model vectors. Scores are cosine similarities in the map's
    comparison space (plain cosine when the map was fitted on at least as many pairs as the old dimension).
    If the old store has been upgraded (marker) to a store of the map's new model, that store is searched
    directly, without mapping. Safe to call from several threads once built.
    """

    def __init__(self, store: FeatureStore | str | Path, alignment: AlignmentMap | str | Path, *,
                 exact: bool = False, threads: int | None = None) -> None:
        self.alignment = as_alignment(alignment)
        self._threads = threads
        self._embedder = None
        self.store = store if isinstance(store, FeatureStore) else FeatureStore.open(store)
        resolved = resolve_store(self.store)
        self.direct: Searcher | None = None
        self.gallery: _MappedGallery | None = None
        if resolved.config.identity() == self.alignment.new_identity and resolved.root != self.store.root:
            self.direct = Searcher(resolved, exact=exact, threads=threads)  # already upgraded: no mapping needed
        else:
            self.alignment.check_old_store(self.store)
            self.gallery = _MappedGallery(self.store, self.alignment, exact=exact)

    @property
    def embedder(self):  # type: ignore[no-untyped-def]
        """The new model's embedder, loaded on first use."""
        if self._embedder is None:
            from offshelf.extract import Embedder

            self._embedder = Embedder(self.alignment.new_store_config(), threads=self._threads)
        return self._embedder

    def __len__(self) -> int:
        return len(self.direct) if self.direct is not None else len(self.gallery or ())

    def search_vectors(self, new_vectors: np.ndarray, k: int = 10) -> list[list[Hit]]:
        """The k nearest old-store items of each new-model query vector, best first."""
        queries = _check_queries(new_vectors, self.alignment.new_dim, k)
        if self.direct is not None:
            return self.direct.search_vectors(queries, k)
        assert self.gallery is not None
        scores, ids = self.gallery.search(queries, min(k, max(len(self.gallery), 1)))
        path_of = self.gallery.path_of
        rows = [[(int(i), float(s)) for s, i in zip(rs, ri) if i >= 0 and int(i) in path_of]
                for rs, ri in zip(scores, ids)]
        return _hits(rows, path_of)

    def search_files(self, paths: Sequence[str | Path], k: int = 10) -> list[list[Hit]]:
        """Embed image files with the new model and search the old store."""
        return self.search_vectors(self.embedder.embed_files(paths), k)


def aligned_search(query: str | Path, store: str | Path, alignment: str | Path, k: int = 10) -> list[Hit]:
    """`offshelf search QUERY --store OLD --align MAP_DIR`: the k old-store items nearest the query image."""
    return AlignedSearcher(store, alignment).search_files([query], k)[0]


# -- during the backfill --------------------------------------------------------------------------------------

class MixedSearcher:
    """Serves new-model queries over an old store while it is being re-embedded into `new_store`.

    Re-embedded items are scored by their new-space cosine, the rest by the calibrated mapped score (see the
    module docstring); committed shards of the new store are picked up before a search when its shard listing
    changed (`auto_refresh`, a directory listing per search), or by calling `refresh()` (e.g. from
    `upgrade_index`'s `on_progress`). Once the old store's marker names `new_store`, the searcher has switched:
    only the new store is searched. Safe to call from several threads; `refresh` runs one at a time.
    The old store is read once, when the searcher is built (items added to or removed from it later are seen
    once they reach the new store).
    """

    def __init__(self, old_store: FeatureStore | str | Path, alignment: AlignmentMap | str | Path,
                 new_store: str | Path, *, threads: int | None = None, auto_refresh: bool = True) -> None:
        self.alignment = as_alignment(alignment)
        self.old_store = old_store if isinstance(old_store, FeatureStore) else FeatureStore.open(old_store)
        self.alignment.check_old_store(self.old_store)
        self.new_root = Path(new_store)
        self.auto_refresh = auto_refresh
        self._threads = threads
        self._embedder = None
        self._refresh_lock = threading.Lock()
        self._signature: tuple[Any, ...] | None = None
        self.gallery = _MappedGallery(self.old_store, self.alignment, exact=True)
        self._old_paths = dict(self.gallery.path_of)
        self._path_of: dict[int, str] = dict(self._old_paths)
        self._new_index: Any = None
        self._new_digests: dict[int, int] = {}
        self.switched = False
        self.refresh()

    @property
    def embedder(self):  # type: ignore[no-untyped-def]
        if self._embedder is None:
            from offshelf.extract import Embedder

            self._embedder = Embedder(self.alignment.new_store_config(), threads=self._threads)
        return self._embedder

    # -- following the backfill -------------------------------------------------------------------------
    def _listing(self) -> tuple[Any, ...]:
        names: list[str] = []
        for sub in (SHARDS_DIR, REMOVED_DIR):
            try:
                names += [f"{sub}/{e.name}" for e in os.scandir(self.new_root / sub) if e.name.endswith(".parquet")]
            except FileNotFoundError:
                pass
        try:
            marker = (self.old_store.root / UPGRADE_MARKER).stat().st_mtime_ns
        except FileNotFoundError:
            marker = None
        return tuple(sorted(names)), marker

    def _switch_target_is_ours(self) -> bool:
        marker = read_upgrade_marker(self.old_store.root)
        return marker is not None and marker_target(self.old_store.root, marker).resolve() == self.new_root.resolve()

    def refresh(self) -> dict[str, int]:
        """Take in the new store's committed rows; returns counts (new, mapped)."""
        from offshelf.index import build_index
        from offshelf.index.base import digests

        with self._refresh_lock:
            signature = self._listing()
            if signature != self._signature:
                switching = self._switch_target_is_ours()
                if (self.new_root / MANIFEST).is_file():
                    new_store = self.alignment.check_new_store(self.new_root)
                    ids, paths, vectors = new_store.vectors()
                    prints = digests(vectors)
                    known = self._new_digests
                    fresh = np.array([known.get(i) != d for i, d in zip(ids.tolist(), prints.tolist())], bool)
                    if fresh.any():
                        # paths first, then (1) onto the new side, then (2) off the mapped side
                        fresh_paths = [paths[i] for i in np.flatnonzero(fresh)]
                        self._path_of = {**self._path_of, **dict(zip(ids[fresh].tolist(), fresh_paths))}
                        if self._new_index is None:
                            self._new_index = build_index(vectors[fresh], ids[fresh], "flat")
                        else:
                            self._new_index.add(vectors[fresh], ids[fresh])
                        self._new_digests.update(zip(ids[fresh].tolist(), prints[fresh].tolist()))
                        self.gallery.remove(ids[fresh])
                    gone = np.setdiff1d(np.fromiter(self._new_digests, np.int64, len(self._new_digests)), ids)
                    # removed from the new store meanwhile: dropped, unless an old item (it is no longer on the
                    # mapped side; its last new vector serves until the upgrade's next pass re-embeds it)
                    gone = np.array([i for i in gone.tolist() if i not in self._old_paths], np.int64)
                    if len(gone) and self._new_index is not None:
                        self._new_index.remove(gone)
                        for i in gone.tolist():
                            self._new_digests.pop(i, None)
                self.switched = switching
                self._signature = signature
            return {"new": len(self._new_digests), "mapped": len(self.gallery)}

    @property
    def progress(self) -> tuple[int, int]:
        """(items served from the new store, items in the old store)."""
        return len(self._new_digests), len(self._old_paths)

    def __len__(self) -> int:
        return len(self.gallery) + (0 if self._new_index is None else self._new_index.ntotal)

    # -- searching ----------------------------------------------------------------------------------------
    def search_vectors(self, new_vectors: np.ndarray, k: int = 10) -> list[list[Hit]]:
        """The k best items for each new-model query vector, best first; scores on the new-space cosine scale."""
        queries = _check_queries(new_vectors, self.alignment.new_dim, k)
        if self.auto_refresh and self._listing() != self._signature:
            self.refresh()
        # Both sides are searched k deep (capped by the number of items ever known, which never shrinks): a
        # depth taken from a side's current size could be outdated by the time it searches, as items move.
        depth = max(1, min(k, len(self._path_of)))
        # (a) the mapped side first, then (b) the new side: see the module docstring
        mapped: tuple[np.ndarray, np.ndarray] | None = None
        if not self.switched:
            scores, ids = self.gallery.search(queries, depth)
            mapped = (np.where(ids >= 0, self.alignment.calibrate(scores), -np.inf), ids)
        new_index = self._new_index
        fresh = new_index.search(queries, depth) if new_index is not None else None
        path_of = self._path_of
        rows = []
        for q in range(len(queries)):
            best: dict[int, float] = {}
            for side in (mapped, fresh):  # the new side last: its score wins for an item seen on both
                if side is not None:
                    best.update((int(i), float(s)) for s, i in zip(side[0][q], side[1][q]) if i >= 0)
            ranked = sorted(((i, s) for i, s in best.items() if i in path_of), key=lambda t: -t[1])[:k]
            rows.append(ranked)
        return _hits(rows, path_of)

    def search_files(self, paths: Sequence[str | Path], k: int = 10) -> list[list[Hit]]:
        return self.search_vectors(self.embedder.embed_files(paths), k)

