"""Fitted post-processing of descriptors, as scikit-learn estimators that compose in a `Pipeline`.

Building blocks: `Normalizer` (L2, from scikit-learn), `SignedPower` (the "power normalization"
sign(x)|x|^a), `PCA` (with `whiten=True` for PCA-whitening; keeping the first D components is the
Matryoshka-like truncation of the PCA order) and `StandardScaler`. `retrieval_pipeline` is the paper's
retrieval post-processing: L2 -> PCA(d) -> whitening -> L2 -> signed power -> L2.

`pipeline_to_bundle` / `pipeline_from_bundle` save and restore these pipelines as arrays plus JSON
(no pickle); only the step types above are supported.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.decomposition import PCA
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import Normalizer, StandardScaler
from sklearn.utils.validation import check_array

from offshelf.errors import OffshelfError


class SignedPower(TransformerMixin, BaseEstimator):
    """sign(x) * |x| ** alpha, element-wise (alpha = 0.5 is the signed square root). Stateless."""

    def __init__(self, alpha: float = 0.5) -> None:
        self.alpha = alpha

    def fit(self, X: np.ndarray, y: Any = None) -> SignedPower:
        if not self.alpha > 0:
            raise ValueError(f"alpha must be > 0, got {self.alpha}")
        self.n_features_in_ = check_array(X).shape[1]
        return self

    def transform(self, X: np.ndarray) -> np.ndarray:
        X = check_array(X, dtype=(np.float32, np.float64))
        return np.sign(X) * np.abs(X) ** self.alpha

    def __sklearn_tags__(self):  # type: ignore[no-untyped-def]
        tags = super().__sklearn_tags__()
        tags.requires_fit = False
        return tags


def retrieval_pipeline(n_components: int | None = 500, *, whiten: bool = True, alpha: float = 0.5) -> Pipeline:
    """L2 -> PCA(n_components, whitening) -> L2 -> signed power -> L2 (Razavian et al., retrieval)."""
    return Pipeline(
        [
            ("l2", Normalizer()),
            ("pca", PCA(n_components=n_components, whiten=whiten, svd_solver="auto", random_state=0)),
            ("l2_pca", Normalizer()),
            ("power", SignedPower(alpha)),
            ("l2_out", Normalizer()),
        ]
    )


# -- saving without pickle -----------------------------------------------------------------------

def _step_to_bundle(step: Any) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    if isinstance(step, Normalizer):
        return {"type": "Normalizer", "norm": step.norm}, {}
    if isinstance(step, SignedPower):
        return {"type": "SignedPower", "alpha": step.alpha}, {}
    if isinstance(step, PCA):
        arrays = {"components_": step.components_, "mean_": step.mean_, "explained_variance_": step.explained_variance_}
        return {"type": "PCA", "whiten": step.whiten}, arrays
    if isinstance(step, StandardScaler):
        return {"type": "StandardScaler"}, {"mean_": step.mean_, "scale_": step.scale_}
    raise OffshelfError(f"cannot save a pipeline step of type {type(step).__name__}")


def _step_from_bundle(meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> Any:
    kind = meta["type"]
    if kind == "Normalizer":
        return Normalizer(norm=meta["norm"])
    if kind == "SignedPower":
        return SignedPower(meta["alpha"])
    if kind == "PCA":
        components = arrays["components_"]
        pca = PCA(n_components=components.shape[0], whiten=meta["whiten"])
        pca.components_, pca.mean_ = components, arrays["mean_"]
        pca.explained_variance_ = arrays["explained_variance_"]
        pca.n_components_, pca.n_features_in_ = components.shape
        return pca
    if kind == "StandardScaler":
        scaler = StandardScaler()
        scaler.mean_, scaler.scale_ = arrays["mean_"], arrays["scale_"]
        scaler.var_ = scaler.scale_**2
        scaler.n_features_in_ = len(scaler.mean_)
        return scaler
    raise OffshelfError(f"unknown saved pipeline step type {kind!r}")


def pipeline_to_bundle(pipeline: Pipeline, prefix: str = "step") -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    """The JSON step list and the arrays (keys `{prefix}{i}.{name}`) describing a fitted pipeline."""
    steps, arrays = [], {}
    for i, (name, step) in enumerate(pipeline.steps):
        meta, step_arrays = _step_to_bundle(step)
        steps.append({"name": name, **meta})
        arrays.update({f"{prefix}{i}.{key}": value for key, value in step_arrays.items()})
    return steps, arrays


def pipeline_from_bundle(steps: list[dict[str, Any]], arrays: dict[str, np.ndarray], prefix: str = "step") -> Pipeline:
    """Inverse of `pipeline_to_bundle`."""
    built = []
    for i, meta in enumerate(steps):
        own = {key.split(".", 1)[1]: value for key, value in arrays.items() if key.startswith(f"{prefix}{i}.")}
        built.append((meta["name"], _step_from_bundle(meta, own)))
    return Pipeline(built)
