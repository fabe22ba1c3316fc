"""Linear probes over feature stores: the `offshelf probe fit|predict|eval` workflows.

`probe` holds the estimator and its safe saving; this module only joins it to stores, label sources
and image files, and shapes JSON-ready reports.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from offshelf.extract import Embedder
from offshelf.io import check_bundle_target
from offshelf.probe.estimator import LinearProbe, check_compatible, evaluate, load_probe, save_probe
from offshelf.probe.labels import LabelSource, align_labels
from offshelf.store import FeatureStore, StoreConfig

TOP_SCORES = 3


def labelled_features(store: FeatureStore, labels: LabelSource) -> tuple[np.ndarray, Any, int]:
    """`(X, y, unlabeled)`: the store's labelled vectors, their labels, and how many rows had none."""
    _, paths, vectors = store.vectors()
    alignment = align_labels(paths, labels.labels_for(paths))
    return vectors[alignment.rows], alignment.y, alignment.unlabeled


def fit_store_probe(store_dir: str | Path, labels: LabelSource, out: str | Path, *, method: str = "svm",
                    post: Sequence[str] = ("l2",), cv: int = 3, overwrite: bool = False) -> dict[str, Any]:
    """Fit a probe on a store's labelled items, save it to `out`, and report its cross-validated scores.

    An existing probe at `out` is replaced only with `overwrite` (checked before any work)."""
    check_bundle_target(out, overwrite)
    store = FeatureStore.open(store_dir)
    X, y, unlabeled = labelled_features(store, labels)
    probe = LinearProbe(method=method, post=tuple(post), cv=cv).fit(X, y)
    save_probe(probe, out, store.config.identity(), overwrite=overwrite)
    return {
        "probe": str(out),
        "method": method,
        "n": len(X),
        "unlabeled": unlabeled,
        "classes": [str(c) for c in probe.classes_],
        "C": {str(c): float(v) for c, v in zip(probe.classes_, probe.C_)},
        "cv": probe.cv_score_,
    }


def _open_probe(probe_dir: str | Path, store: FeatureStore | None = None) -> LinearProbe:
    probe, identity = load_probe(probe_dir)
    if store is not None:
        check_compatible(identity, store.config.identity())
    return probe


def _predictions(probe: LinearProbe, paths: Sequence[str], X: np.ndarray) -> list[dict[str, Any]]:
    scores = probe.decision_function(X)
    predicted = probe.predict(X)
    rows = []
    for path, label, row in zip(paths, predicted, scores):
        best = np.argsort(-row)[:TOP_SCORES]
        rows.append({
            "path": path,
            "predicted": [str(x) for x in label] if probe.multilabel_ else str(label),
            "scores": {str(probe.classes_[i]): float(row[i]) for i in best},
        })
    return rows


def predict_store(probe_dir: str | Path, store_dir: str | Path) -> list[dict[str, Any]]:
    """The probe's predictions for every item of a store (which must hold the probe's kind of features)."""
    store = FeatureStore.open(store_dir)
    probe = _open_probe(probe_dir, store)
    _, paths, vectors = store.vectors()
    return _predictions(probe, paths, vectors)


def predict_images(probe_dir: str | Path, images: Sequence[str | Path]) -> list[dict[str, Any]]:
    """Embed image files the way the probe's training store did, and predict."""
    probe, identity = load_probe(probe_dir)
    embedder = Embedder(StoreConfig(**identity))
    return _predictions(probe, [str(p) for p in images], embedder.embed_files(images))


def eval_store_probe(probe_dir: str | Path, store_dir: str | Path, labels: LabelSource) -> dict[str, Any]:
    """Accuracy, mAP and per-class AP of a saved probe on a store's labelled items."""
    store = FeatureStore.open(store_dir)
    probe = _open_probe(probe_dir, store)
    X, y, unlabeled = labelled_features(store, labels)
    return {**evaluate(probe, X, y), "unlabeled": unlabeled}
