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

import json
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .align import AlignmentMap, load_alignment
from .errors import OffshelfError
from .fsio import atomic_write_json
from .search import Hit, Searcher
from .store import MANIFEST, REMOVED_DIR, SHARDS_DIR, FeatureStore

UPGRADE_MARKER = "upgrade.json"
MARKER_KIND = "offshelf-upgrade"
DEFAULT_UPGRADE_SHARD_SIZE = 256
DEFAULT_CHUNK_SIZE = 4096
_MAX_HOPS = 16


# -- the upgrade marker ---------------------------------------------------------------------------------------

def read_upgrade_marker(store_dir: str | Path) -> dict[str, Any] | None:
    """The upgrade marker of a store (where it was upgraded to), or None if it has not been upgraded."""
    path = Path(store_dir) / UPGRADE_MARKER
    try:
        marker = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise OffshelfError(f"unreadable upgrade marker {path}: {exc}") from None
    if marker.get("kind") != MARKER_KIND or "new_store" not in marker:
        raise OffshelfError(f"{path} is not an offshelf upgrade marker")
    return marker


def _marker_target(store_dir: Path, marker: dict[str, Any]) -> Path:
    target = Path(marker["new_store"])
    return target if target.is_absolute() else (store_dir / target).resolve()


def resolve_store(store: FeatureStore | str | Path) -> FeatureStore:
    """The store to search for `store`: itself, or, if it was upgraded, the store its marker names (followed
    through successive upgrades). This is what `Searcher` uses, so an upgraded store is searched in the new
    model's space with queries embedded by the new model."""
    current = store if isinstance(store, FeatureStore) else FeatureStore.open(store)
    seen = {current.root.resolve()}
    for _ in range(_MAX_HOPS):
        marker = read_upgrade_marker(current.root)
        if marker is None:
            return current
        target = _marker_target(current.root, marker)
        if target.resolve() in seen:
            raise OffshelfError(f"upgrade markers form a loop at {target}")
        seen.add(target.resolve())
        current = FeatureStore.open(target)
    raise OffshelfError(f"more than {_MAX_HOPS} chained upgrades from {store}")


def _as_alignment(alignment: AlignmentMap | str | Path) -> AlignmentMap:
    return alignment if isinstance(alignment, AlignmentMap) else load_alignment(alignment)


def _hits(rows: list[list[tuple[int, float]]], path_of: dict[int, str]) -> list[list[Hit]]:
    return [[Hit(rank, i, path_of[i], s) for rank, (i, s) in enumerate(row, start=1)] for row in rows]


# -- the mapped side: an old store searched with mapped new-model queries ---------------------------------------

class _MappedGallery:
    """An old store's vectors searchable with mapped new-model queries; an in-memory copy (items can be removed
    from it without touching the store). Uses the store's own index when the map's comparison space is the
    whole old space, else an exact index of the vectors projected into the comparison space."""

    def __init__(self, store: FeatureStore, alignment: AlignmentMap, *, exact: bool = False) -> None:
        from .index import build_index, load_store_index

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
        self.alignment = _as_alignment(alignment)
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
            from .extract import Embedder

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
        self.alignment = _as_alignment(alignment)
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
            from .extract import Embedder

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
        return marker is not None and _marker_target(self.old_store.root, marker).resolve() == self.new_root.resolve()

    def refresh(self) -> dict[str, int]:
        """Take in the new store's committed rows; returns counts (new, mapped)."""
        from .index import build_index
        from .index.base import digests

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


# -- the backfill ---------------------------------------------------------------------------------------------

def default_new_store_dir(old_store_dir: str | Path, alignment: AlignmentMap) -> Path:
    """``OLD-<new model>`` beside the old store."""
    old = Path(old_store_dir).resolve()
    return old.with_name(f"{old.name}-{alignment.new_store_config().model}")


def _embed_kwargs(alignment: AlignmentMap) -> dict[str, Any]:
    from .extract import make_config
    from .models import ModelSpec, get_model_spec

    config = alignment.new_store_config()
    spec = ModelSpec.from_dict(config.model_spec) if config.model_spec else get_model_spec(config.model)
    pool = None if config.pool == "none" else config.pool
    made = make_config(spec, config.layer, pool, config.augment)
    if made.identity() != alignment.new_identity:
        raise OffshelfError(f"cannot reproduce the map's new features ({config.describe()}) with this installation")
    return {"model": spec, "layer": config.layer, "pool": pool, "augment": config.augment}


def _copy_index_kind(old_dir: Path, new_dir: Path, new_dim: int) -> dict[str, Any] | None:
    """Give the new store an index of the old one's kind (default parameters), if the old store has one."""
    from .index import INDEX_DIR, build_store_index, load_store_index
    from .index.base import MANIFEST as INDEX_MANIFEST
    from .index.base import read_manifest

    if not (old_dir / INDEX_DIR / INDEX_MANIFEST).is_file() or load_store_index(new_dir) is not None:
        return None
    manifest = read_manifest(old_dir / INDEX_DIR)
    pca = manifest.get("pca")
    pca = pca if pca is None or pca < new_dim else None
    whiten = bool(manifest.get("whiten")) and pca is not None
    return build_store_index(new_dir, manifest["kind"], pca=pca, whiten=whiten)


def upgrade_index(old_store_dir: str | Path, map_dir: AlignmentMap | str | Path,
                  new_store_dir: str | Path | None = None, *, progress: bool = True,
                  on_progress: Callable[[dict[str, Any]], None] | None = None,
                  shard_size: int = DEFAULT_UPGRADE_SHARD_SIZE, chunk_size: int = DEFAULT_CHUNK_SIZE,
                  batch_size: int = 32, workers: int | None = None, threads: int | None = None,
                  allow_missing: bool = False, build_index: bool = True) -> dict[str, Any]:
    """Re-embed the old store's images with the map's new model into `new_store_dir`, then switch over.

    Resumable: images already in the new store are skipped, and `embed` commits every `shard_size` images
    atomically, so a killed upgrade is resumed by running it again. The gallery is processed in chunks of
    `chunk_size` paths; after each, `on_progress(report)` is called (from the calling thread; safe to call
    `MixedSearcher.refresh` there). Images added to the old store meanwhile are picked up by a further pass.
    When every old item is in the new store, the new store gets an index of the old one's kind (if the old
    store has one), and the marker ``OLD/upgrade.json`` naming the new store is written atomically: from then
    on `Searcher(OLD)` searches the new store. If some items cannot be re-embedded (files gone or unreadable)
    the switch is refused (`switched: False`, `missing` lists them) unless `allow_missing`.
    Call it from a thread (or `upgrade_in_background`) to keep serving queries with a `MixedSearcher`.
    """
    from .extract import embed

    started = time.perf_counter()
    alignment = _as_alignment(map_dir)
    old = alignment.check_old_store(old_store_dir)
    old_root = old.root.resolve()
    new_root = (Path(new_store_dir).resolve() if new_store_dir is not None
                else default_new_store_dir(old_root, alignment))
    if new_root == old_root:
        raise OffshelfError("the new store must be another directory than the old one")
    marker = read_upgrade_marker(old_root)
    if marker is not None and _marker_target(old_root, marker).resolve() != new_root:
        raise OffshelfError(f"store {old_root} was already upgraded to {marker['new_store']}")
    if (new_root / MANIFEST).is_file():
        alignment.check_new_store(new_root)
    kwargs = _embed_kwargs(alignment)
    report: dict[str, Any] = {"old_store": str(old_root), "new_store": str(new_root), "embedded": 0, "skipped": 0,
                              "failed": 0, "passes": 0, "switched": False, "failures": []}
    vanished: set[str] = set()
    for _ in range(5):  # one pass, plus one per batch of items added to the old store meanwhile
        gallery = FeatureStore.open(old_root).table().column("path").to_pylist()
        done = FeatureStore.open(new_root).known_files() if (new_root / MANIFEST).is_file() else {}
        todo = [p for p in gallery if p not in done and p not in vanished]
        report["items"] = len(gallery)
        if not todo:
            break
        report["passes"] += 1
        for start in range(0, len(todo), chunk_size):
            chunk = todo[start : start + chunk_size]
            for attempt in range(3):
                vanished.update(p for p in chunk if not os.path.exists(p))
                chunk = [p for p in chunk if p not in vanished]
                if not chunk:
                    break
                try:
                    summary = embed(chunk, new_root, batch_size=batch_size, workers=workers, threads=threads,
                                    shard_size=shard_size, progress=progress, **kwargs)
                except FileNotFoundError:  # a file vanished between the check and the embedding: drop it, retry
                    if attempt == 2:
                        raise
                    continue
                for key in ("embedded", "skipped", "failed"):
                    report[key] += getattr(summary, key)
                report["failures"] += summary.failures
                break
            report["done"] = min(len(todo), start + chunk_size)
            report["todo"] = len(todo)
            if on_progress is not None:
                on_progress(dict(report))
    old_paths = set(FeatureStore.open(old_root).table().column("path").to_pylist())
    new_paths: set[str] = set()
    if (new_root / MANIFEST).is_file():
        new_paths = set(FeatureStore.open(new_root).table().column("path").to_pylist())
    missing = sorted(old_paths - new_paths)
    report["missing_count"] = len(missing)
    report["missing"] = missing[:50]
    report["extra_in_new_store"] = len(new_paths - old_paths)
    if not old_paths:
        report["message"] = f"store {old_root} holds no items; nothing to upgrade"
    elif missing and not allow_missing:
        report["message"] = (f"{len(missing)} items could not be re-embedded (files gone or unreadable); not "
                             f"switching (fix them and run again, or allow_missing)")
    elif new_paths:
        if build_index:
            report["index"] = _copy_index_kind(old_root, new_root, FeatureStore.open(new_root).config.dim)
        atomic_write_json(old_root / UPGRADE_MARKER, {
            "kind": MARKER_KIND, "new_store": str(new_root), "old_identity": alignment.old_identity,
            "new_identity": alignment.new_identity, "items": len(new_paths), "missing": len(missing),
            "map_report": getattr(alignment, "report_", None) and {
                k: alignment.report_.get(k) for k in ("method", "holdout_cosine", "holdout_top1")},
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        })
        report["switched"] = True
    report["seconds"] = time.perf_counter() - started
    if on_progress is not None:
        on_progress(dict(report))
    return report


class UpgradeJob:
    """`upgrade_index` running in a background thread: `join`, `done`, `result()` (re-raises its error)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._result: dict[str, Any] | None = None
        self._error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=args, kwargs=kwargs, name="offshelf-upgrade", daemon=True)
        self.thread.start()

    def _run(self, *args: Any, **kwargs: Any) -> None:
        try:
            self._result = upgrade_index(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - handed to result()
            self._error = exc

    @property
    def done(self) -> bool:
        return not self.thread.is_alive()

    def join(self, timeout: float | None = None) -> bool:
        self.thread.join(timeout)
        return self.done

    def result(self, timeout: float | None = None) -> dict[str, Any]:
        if not self.join(timeout):
            raise TimeoutError("the upgrade is still running")
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result


def upgrade_in_background(old_store_dir: str | Path, map_dir: AlignmentMap | str | Path,
                          new_store_dir: str | Path | None = None, **kwargs: Any) -> UpgradeJob:
    """Start `upgrade_index` in a daemon thread (progress bars off unless asked) and return its job."""
    kwargs.setdefault("progress", False)
    return UpgradeJob(old_store_dir, map_dir, new_store_dir, **kwargs)


def upgrade_command(store: str | Path, map_dir: str | Path, new_store: str | Path | None = None, *,
                    progress: bool = True) -> dict[str, Any]:
    """`offshelf index upgrade --store OLD --align MAP_DIR --new-store NEW`: the JSON-ready report."""
    return upgrade_index(store, map_dir, new_store, progress=progress)
