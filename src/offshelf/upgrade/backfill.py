"""The backfill of an upgrade: re-embed an old store's images with the new model into a new store (resumable:
`embed` commits shards atomically and skips what is done), then write the upgrade marker (`offshelf.store.marker`)
so that every command acts on the new store. `upgrade_in_background` runs it in a thread while a `MixedSearcher`
serves queries.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from offshelf.errors import OffshelfError
from offshelf.io import atomic_write_json
from offshelf.store import MANIFEST, UPGRADE_MARKER, FeatureStore, read_upgrade_marker
from offshelf.store.marker import MARKER_KIND, marker_target
from offshelf.upgrade.maps import AlignmentMap, as_alignment

DEFAULT_UPGRADE_SHARD_SIZE = 256
DEFAULT_CHUNK_SIZE = 4096


def default_new_store_dir(old_store_dir: str | Path, alignment: AlignmentMap) -> Path:
    """``OLD-<new model>`` beside the old store."""
    old = Path(old_store_dir).resolve()
    return old.with_name(f"{old.name}-{alignment.new_store_config().model}")


def _embed_kwargs(alignment: AlignmentMap) -> dict[str, Any]:
    """How to embed with the map's new model: its recorded spec is checked against the registry, never run."""
    from offshelf.extract import make_config
    from offshelf.models import resolve_spec

    config = alignment.new_store_config()
    spec = resolve_spec(config.model, config.model_spec)
    pool = None if config.pool == "none" else config.pool
    made = make_config(spec, config.layer, pool, config.augment)
    if made.identity() != alignment.new_identity:
        raise OffshelfError(f"cannot reproduce the map's new features ({config.describe()}) with this installation")
    return {"model": spec, "layer": config.layer, "pool": pool, "augment": config.augment}


def _copy_index_kind(old_dir: Path, new_dir: Path, new_dim: int) -> dict[str, Any] | None:
    """Give the new store an index of the old one's kind (default parameters), if the old store has one."""
    from offshelf.index import INDEX_DIR, build_store_index, load_store_index
    from offshelf.index.base import MANIFEST as INDEX_MANIFEST
    from offshelf.index.base import read_manifest

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
    from offshelf.extract import embed

    started = time.perf_counter()
    alignment = as_alignment(map_dir)
    old = alignment.check_old_store(old_store_dir)
    old_root = old.root.resolve()
    new_root = (Path(new_store_dir).resolve() if new_store_dir is not None
                else default_new_store_dir(old_root, alignment))
    if new_root == old_root:
        raise OffshelfError("the new store must be another directory than the old one")
    marker = read_upgrade_marker(old_root)
    if marker is not None and marker_target(old_root, marker).resolve() != new_root:
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

