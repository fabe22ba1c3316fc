"""Fitting an `AlignmentMap` from two stores that hold the same images embedded by the old and the new model,
with its fit error measured on held-out pairs."""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from offshelf.errors import OffshelfError
from offshelf.store import FeatureStore
from offshelf.upgrade.maps import METHODS, AlignmentMap, isotonic
from offshelf.vectors import l2_normalize


def paired_vectors(old_store: FeatureStore, new_store: FeatureStore) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(paths, old vectors, new vectors) of the images both stores hold, matched by path, in old-store order.

    A path whose stored file hashes differ (the file changed between the two embeddings) is not a pair."""
    old_table = old_store.table().select(["path", "sha256"]).to_pylist()
    new_rows = {r["path"]: (i, r["sha256"]) for i, r in
                enumerate(new_store.table().select(["path", "sha256"]).to_pylist())}
    _, _, old_x = old_store.vectors()
    _, _, new_x = new_store.vectors()
    paths, old_rows, new_idx = [], [], []
    for i, row in enumerate(old_table):
        match = new_rows.get(row["path"])
        if match is not None and match[1] == row["sha256"]:
            paths.append(row["path"])
            old_rows.append(i)
            new_idx.append(match[0])
    return paths, old_x[old_rows], new_x[new_idx]


def _top1(queries: np.ndarray, gallery: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean((queries @ gallery.T).argmax(1) == truth)) if len(queries) else float("nan")


def evaluate_alignment(alignment: AlignmentMap, new_vectors: np.ndarray, old_vectors: np.ndarray,
                       gallery: np.ndarray | None = None, gallery_truth: np.ndarray | None = None) -> dict[str, float]:
    """Fit error on pairs (rows matched): mean cosine between mapped new and true old vectors, and retrieval
    top-1 of the mapped new vectors among these old vectors (in the comparison space, as searches rank); with
    `gallery` (all old vectors) and `gallery_truth` (each pair's row in it) also top-1 among the whole gallery."""
    mapped = alignment._mapped64(new_vectors)
    old = l2_normalize(old_vectors, np.float64)
    queries = alignment.compare_new(new_vectors)
    n = len(old)
    report = {
        "cosine": float((mapped * old).sum(1).mean()),
        "top1": _top1(queries, alignment.compare_old(old), np.arange(n)),
        "top1_plain_cosine": _top1(mapped, old, np.arange(n)),
        "chance_top1": 1.0 / n if n else float("nan"),
    }
    if gallery is not None and gallery_truth is not None:
        report["top1_all"] = _top1(queries, alignment.compare_old(gallery), gallery_truth)
        report["gallery_size"] = len(gallery)
    return report


def fit_alignment(old_store_dir: str | Path | FeatureStore, new_store_dir: str | Path | FeatureStore,
                  method: str = "procrustes", holdout: float = 0.2, seed: int = 0, *, refit: bool = True,
                  **params: Any) -> tuple[AlignmentMap, dict[str, Any]]:
    """Learn a map from the new store's model into the old store's from the images both hold (matched by path).

    A random `holdout` fraction of the pairs (seed `seed`) is kept out of fitting and measures the fit error:
    mean cosine of mapped new vs true old, and top-1 retrieval of mapped new among the held-out old vectors and
    among the whole old store. The held-out scores also fit the map's score calibration (see `calibrate`).
    With `refit` (default) the returned map is then refitted on all pairs (more data; its error is at most the
    reported one, typically lower). `params` go to `AlignmentMap` (e.g. `alphas`, `hidden`, `n_components`).
    Refuses two stores with the same features (already comparable: nothing to align).
    """
    started = time.perf_counter()
    old_store = old_store_dir if isinstance(old_store_dir, FeatureStore) else FeatureStore.open(old_store_dir)
    new_store = new_store_dir if isinstance(new_store_dir, FeatureStore) else FeatureStore.open(new_store_dir)
    if method not in METHODS:
        raise OffshelfError(f"unknown alignment method {method!r}; choose from {', '.join(METHODS)}")
    if old_store.config.identity() == new_store.config.identity():
        raise OffshelfError(f"stores {old_store.root} and {new_store.root} hold the same features "
                            f"({old_store.config.describe()}): they are already comparable, there is nothing to align")
    if not 0 <= holdout < 1:
        raise OffshelfError(f"holdout must be in [0, 1), got {holdout}")
    paths, old_x, new_x = paired_vectors(old_store, new_store)
    n = len(paths)
    n_holdout = int(round(holdout * n)) if holdout > 0 else 0
    if holdout > 0 and n >= 5:
        n_holdout = max(1, n_holdout)
    if n - n_holdout < 3:
        raise OffshelfError(f"stores {old_store.root} and {new_store.root} share {n} images (matched by path); "
                            f"an alignment needs at least {3 + n_holdout} (embed the same images with both models)")
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    held, train = np.sort(order[:n_holdout]), np.sort(order[n_holdout:])
    alignment = AlignmentMap(method, seed=seed, **params).fit(new_x[train], old_x[train])
    report: dict[str, Any] = {"method": method, "n_pairs": n, "n_train": len(train), "n_holdout": len(held),
                              "seed": seed,
                              "params": {k: v for k, v in alignment.fit_info_.items() if k != "fit_seconds"}}
    _, _, old_gallery = old_store.vectors()
    row_in_gallery = {p: i for i, p in enumerate(old_store.table().column("path").to_pylist())}
    calibration = None
    if len(held):
        truth = np.array([row_in_gallery[paths[i]] for i in held])
        report["holdout"] = evaluate_alignment(alignment, new_x[held], old_x[held], old_gallery, truth)
        if new_x.shape[1] == old_x.shape[1]:
            report["identity_baseline"] = {"cosine": float((l2_normalize(new_x[held], np.float64) * l2_normalize(old_x[held], np.float64)).sum(1).mean()),
                                           "top1": _top1(l2_normalize(new_x[held], np.float64), l2_normalize(old_x[held], np.float64), np.arange(len(held)))}
        # calibration: held-out queries against every paired item, comparison-space score -> new-space cosine
        scores = alignment.compare_new(new_x[held]) @ alignment.compare_old(old_x).T
        truth_scores = l2_normalize(new_x[held], np.float64) @ l2_normalize(new_x, np.float64).T
        calibration = isotonic(scores.ravel(), truth_scores.ravel())
    report["train"] = evaluate_alignment(alignment, new_x[train], old_x[train])
    if refit and len(held):
        alignment = AlignmentMap(method, seed=seed, **params).fit(new_x, old_x)
        report["refit_on_all_pairs"] = True
    if calibration is not None:
        alignment.calibration_x_, alignment.calibration_y_ = calibration
    alignment.old_identity_ = old_store.config.identity()
    alignment.new_identity_ = new_store.config.identity()
    alignment.old_config_ = asdict(old_store.config)
    alignment.new_config_ = asdict(new_store.config)
    held_report = report.get("holdout", {})
    report.update({
        "old_store": str(old_store.root), "new_store": str(new_store.root),
        "old_identity": alignment.old_identity_, "new_identity": alignment.new_identity_,
        "holdout_cosine": held_report.get("cosine"), "holdout_top1": held_report.get("top1"),
        "holdout_top1_all": held_report.get("top1_all"),
        "fit_error": None if held_report.get("cosine") is None else 1.0 - held_report["cosine"],
        "seconds": time.perf_counter() - started,
    })
    alignment.report_ = report
    return alignment, report
