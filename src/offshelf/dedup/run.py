"""`dedup`: embed what is new, calibrate (once), find the pairs new items make, group, report, maybe move."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from offshelf.dedup.calibrate import DEFAULT_SAMPLE, DEFAULT_TARGET_PRECISION, Calibration, calibrate
from offshelf.dedup.groups import Group, form_groups, keep_order
from offshelf.dedup.moves import move_back, move_files, plan_moves
from offshelf.dedup.pairs import exact_pairs, index_pairs
from offshelf.dedup.state import CALIBRATION_FILE, DEDUP_DIR, STATE_FILE, RunState
from offshelf.errors import OffshelfError
from offshelf.extract import Embedder, embed
from offshelf.images import find_images
from offshelf.index import load_store_index
from offshelf.io import exclusive_lock
from offshelf.models import DEFAULT_MODEL, ModelSpec
from offshelf.store import FeatureStore

INDEX_MIN_ITEMS = 50_000  # from this many items on, a store's ANN index (if built) finds the pairs
METHODS = ("auto", "exact", "index")


@dataclass
class DedupReport:
    """What a run found: the groups (paths), the threshold and where it came from, what was compared."""

    threshold: float
    groups: list[dict[str, Any]]
    calibration: dict[str, Any] | None
    compared: dict[str, Any]
    embed: dict[str, Any]
    moved: list[dict[str, str]] = field(default_factory=list)
    log: str | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _embed(paths: Sequence[str | Path], store: Path, model: str | ModelSpec, progress: bool) -> dict[str, Any]:
    """The ordinary resumable `embed`, with the store's own model, layer, pooling and views if it exists."""
    try:
        config = FeatureStore.open(store).config
    except OffshelfError:
        return embed(paths, store, model=model, progress=progress).to_dict()
    spec = ModelSpec.from_dict(config.model_spec) if config.model_spec else config.model
    pool = None if config.pool == "none" else config.pool
    return embed(paths, store, model=spec, layer=config.layer, pool=pool, augment=config.augment,
                 progress=progress).to_dict()


def _calibration(feature_store: FeatureStore, vectors: np.ndarray, paths: list[str], target: float, sample: int,
                 recalibrate: bool, progress: bool) -> Calibration:
    """The store's saved calibration if it fits (same features, same target), else a new one, saved."""
    path = feature_store.root / DEDUP_DIR / CALIBRATION_FILE
    identity = feature_store.config.identity()
    if path.is_file() and not recalibrate:
        saved = Calibration.load(path)
        if saved.identity == identity and saved.target_precision == target:
            return saved
    if progress:
        print(f"calibrating on edited copies of {min(sample, len(paths))} of the {len(paths)} images ...",
              file=sys.stderr)
    embedder = Embedder(feature_store.config)
    calibration = calibrate(vectors, paths, embedder.embed_images, identity, target_precision=target, sample=sample)
    calibration.save(path)
    return calibration


def dedup(paths: Sequence[str | Path], store: str | Path, *, threshold: float | None = None, keep: str = "largest",
          target_precision: float = DEFAULT_TARGET_PRECISION, sample: int = DEFAULT_SAMPLE,
          recalibrate: bool = False, method: str = "auto", move_to: str | Path | None = None,
          model: str | ModelSpec = DEFAULT_MODEL, progress: bool = True) -> DedupReport:
    """Find the duplicate groups among the images under `paths` (see docs/dedup.md).

    Without `threshold`, the threshold is calibrated on the collection for `target_precision` (saved in the
    store folder and reused); a given `threshold` is a plain cosine similarity. Only items new since the last
    run (or changed) are compared with the rest. Files are moved only with `move_to`.
    """
    started = time.perf_counter()
    if method not in METHODS:
        raise OffshelfError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    if threshold is not None and not -1.0 <= threshold <= 1.0:
        raise OffshelfError(f"threshold is a cosine similarity between -1 and 1, got {threshold}")
    keep_order(np.empty(0, np.int64), [], np.empty(0), np.empty(0), keep)  # validates the policy early
    files = {str(p) for p in find_images(paths)}
    if not files:
        raise OffshelfError(f"no images found under {', '.join(map(str, paths))}")
    store = Path(store)
    embedded = _embed(paths, store, model, progress)
    feature_store = FeatureStore.open(store)
    table = feature_store.table()
    chosen = np.array([p in files for p in table.column("path").to_pylist()], bool)
    all_ids, all_paths, all_vectors = feature_store.vectors_of(table)  # the same rows as `table`
    ids, vectors = all_ids[chosen], all_vectors[chosen]
    item_paths = [p for p, c in zip(all_paths, chosen) if c]
    sha = [s for s, c in zip(table.column("sha256").to_pylist(), chosen) if c]
    sizes, mtimes = (table.column(c).to_numpy()[chosen] for c in ("size", "mtime_ns"))
    if len(ids) < 2:
        raise OffshelfError(f"need at least 2 embedded images to look for duplicates, found {len(ids)}")
    with exclusive_lock(store / DEDUP_DIR / ".lock", f"dedup state of {store}"):
        calibration = None
        if threshold is None:
            calibration = _calibration(feature_store, vectors, item_paths, target_precision, sample, recalibrate,
                                       progress)
            t, token, x = calibration.threshold, calibration.token, calibration.transform(vectors)
        else:
            plain = Calibration(threshold, 0.0, 0.0, 0.0, "plain", 0, 0, 0, False, {}, token="plain")
            t, token, x = threshold, "plain", plain.transform(vectors)
        state_path = store / DEDUP_DIR / STATE_FILE
        state = RunState.load(state_path)
        if state is not None and (state.threshold != t or state.token != token):
            state = None
        done = state.unchanged(ids, sha) if state is not None else np.zeros(len(ids), bool)
        queries = np.flatnonzero(~done)
        a, b, s = _find_pairs(feature_store, ids, vectors, x, t, queries, method, progress)
        if state is not None:
            old_a, old_b, old_s = state.pairs_among(ids[done])
            row = {i: r for r, i in enumerate(ids.tolist())}
            a = np.concatenate([a, [row[i] for i in old_a.tolist()]]).astype(np.int64)
            b = np.concatenate([b, [row[i] for i in old_b.tolist()]]).astype(np.int64)
            s = np.concatenate([s, old_s]).astype(np.float32)
        RunState(t, token, ids, np.array(sha, dtype=str), ids[a], ids[b], s).save(state_path)
    in_pairs = np.unique(np.concatenate([a, b]))
    groups = form_groups(a, b, s, keep_order(in_pairs, item_paths, sizes, mtimes, keep))
    report = DedupReport(
        threshold=t, groups=[_as_paths(g, item_paths) for g in groups],
        calibration=None if calibration is None else calibration.to_dict(),
        compared={"items": len(ids), "new": int(len(queries)), "previously_compared": int(done.sum()),
                  "pairs": int(len(a)), "method": _method(method, feature_store, len(ids))},
        embed=embedded)
    if move_to is not None:
        duplicates = [item_paths[d] for g in groups for d in g.duplicates]
        report.moved = plan_moves(duplicates, Path(move_to), [Path(p) for p in paths])
        if report.moved:
            report.log = str(move_files(report.moved, Path(move_to), {"store": str(Path(store).resolve()), "threshold": t,
                                                                     "groups": report.groups}))
            feature_store.remove(paths=duplicates)
    report.seconds = time.perf_counter() - started
    return report


def _method(method: str, feature_store: FeatureStore, n: int) -> str:
    if method != "auto":
        return method
    has_index = (feature_store.root / "index" / "index.json").is_file()
    return "index" if has_index and n >= INDEX_MIN_ITEMS else "exact"


def _find_pairs(feature_store: FeatureStore, ids: np.ndarray, raw: np.ndarray, x: np.ndarray, threshold: float,
                queries: np.ndarray, method: str, progress: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if not len(queries):
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32)
    if _method(method, feature_store, len(ids)) == "index":
        index = load_store_index(feature_store.root)
        if index is None:
            raise OffshelfError(f"store {feature_store.root} has no index; build one with `offshelf index build`")
        return index_pairs(index, ids, raw, x, threshold, queries, progress)
    return exact_pairs(x, threshold, queries, progress)


def _as_paths(group: Group, paths: list[str]) -> dict[str, Any]:
    return {"keep": paths[group.keep], "duplicates": [paths[d] for d in group.duplicates],
            "scores": list(group.scores)}


def restore(log: str | Path, store: str | Path | None = None, *, progress: bool = True) -> dict[str, Any]:
    """Undo `move_to`: move the files of a move log back, and add them back to the store they were removed
    from (`store`, else the one the log names), re-embedding them.

    Only files that store records as removed are added back, so a log can put back no more than a run took
    out; a store that cannot be opened is reported (`readd_skipped`), the files stay back in place.
    """
    result = move_back(Path(log))
    logged = result.pop("store")
    target = store if store is not None else logged
    readd: list[str] = []
    if target is None:
        result["readd_skipped"] = "the log names no store"
    else:
        try:
            removed = set(FeatureStore.open(target).removed().column("path").to_pylist())
        except OffshelfError as exc:
            result["readd_skipped"] = str(exc)
        else:
            readd = [p for p in result["paths"] if p in removed and Path(p).is_file()]
    result["readded"] = embed(readd, target, readd=True, progress=progress).embedded if readd else 0
    result["store"] = None if target is None else str(target)
    return result
