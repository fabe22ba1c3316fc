"""Training-free comparability of two models' spaces through anchors: relative representations."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from offshelf.errors import OffshelfError
from offshelf.io import load_bundle, save_bundle
from offshelf.store import FeatureStore
from offshelf.upgrade.fitting import paired_vectors
from offshelf.vectors import l2_normalize

RELATIVE_KIND = "offshelf-relative-representation"
FORMAT = 1


class RelativeRepresentation:
    """Training-free comparability (Moschella et al. 2023, "Relative representations enable zero-shot latent
    space communication"): a vector is described by its cosine similarities to a fixed set of anchor images,
    embedded by both models; the i-th coordinate means "similarity to anchor i" in both spaces.

    ``anchors_old[i]`` and ``anchors_new[i]`` must be the same image. With `center` (default) each space is
    centred by its anchors' mean before the cosines (CNN descriptors are all-positive, so raw cosines are all
    high and mostly measure that shared offset), and each relative vector is centred over the anchors and
    L2-normalized, so the two spaces' relative vectors are compared by cosine similarity (dot products).
    """

    def __init__(self, anchors_old: np.ndarray, anchors_new: np.ndarray, *, center: bool = True) -> None:
        a_old, a_new = l2_normalize(anchors_old, np.float64), l2_normalize(anchors_new, np.float64)
        if a_old.ndim != 2 or a_new.ndim != 2 or len(a_old) != len(a_new):
            raise OffshelfError(f"need the same anchors in both spaces, got {np.shape(anchors_old)} and "
                                f"{np.shape(anchors_new)}")
        if len(a_old) < 2:
            raise OffshelfError("need at least 2 anchors")
        self.center = center
        self.mean_old_ = a_old.mean(0) if center else np.zeros(a_old.shape[1])
        self.mean_new_ = a_new.mean(0) if center else np.zeros(a_new.shape[1])
        self.anchors_old_ = l2_normalize(a_old - self.mean_old_, np.float64)
        self.anchors_new_ = l2_normalize(a_new - self.mean_new_, np.float64)

    @property
    def n_anchors(self) -> int:
        return len(self.anchors_old_)

    def _relative(self, x: np.ndarray, mean: np.ndarray, anchors: np.ndarray) -> np.ndarray:
        x = l2_normalize(np.atleast_2d(x), np.float64)
        if x.shape[1] != anchors.shape[1]:
            raise OffshelfError(f"vectors have dim {x.shape[1]}, the anchors {anchors.shape[1]}")
        rel = l2_normalize(x - mean, np.float64) @ anchors.T
        if self.center:
            rel = rel - rel.mean(1, keepdims=True)
        return l2_normalize(rel, np.float64).astype(np.float32)

    def transform_old(self, old_vectors: np.ndarray) -> np.ndarray:
        """Old-model vectors -> unit vectors of the shared anchor space (n, n_anchors)."""
        return self._relative(old_vectors, self.mean_old_, self.anchors_old_)

    def transform_new(self, new_vectors: np.ndarray) -> np.ndarray:
        """New-model vectors -> unit vectors of the shared anchor space (n, n_anchors)."""
        return self._relative(new_vectors, self.mean_new_, self.anchors_new_)

    @classmethod
    def from_stores(cls, old_store: FeatureStore | str | Path, new_store: FeatureStore | str | Path,
                    anchor_paths: list[str] | None = None, **kwargs: Any) -> RelativeRepresentation:
        """Anchors taken from two stores: `anchor_paths` (each must be in both) or every image they share."""
        old = old_store if isinstance(old_store, FeatureStore) else FeatureStore.open(old_store)
        new = new_store if isinstance(new_store, FeatureStore) else FeatureStore.open(new_store)
        paths, old_x, new_x = paired_vectors(old, new)
        if anchor_paths is not None:
            where = {p: i for i, p in enumerate(paths)}
            missing = [p for p in map(str, anchor_paths) if p not in where]
            if missing:
                raise OffshelfError(f"{len(missing)} anchors are not in both stores (e.g. {missing[0]})")
            rows = [where[str(p)] for p in anchor_paths]
            old_x, new_x = old_x[rows], new_x[rows]
        return cls(old_x, new_x, **kwargs)

    def save(self, directory: str | Path, *, overwrite: bool = False) -> Path:
        arrays = {"mean_old": self.mean_old_, "mean_new": self.mean_new_, "anchors_old": self.anchors_old_,
                  "anchors_new": self.anchors_new_}
        return save_bundle(directory, {"kind": RELATIVE_KIND, "format": FORMAT, "center": self.center}, arrays,
                           overwrite=overwrite)

    @classmethod
    def load(cls, directory: str | Path) -> RelativeRepresentation:
        meta, arrays = load_bundle(directory, RELATIVE_KIND)
        rep = cls.__new__(cls)
        rep.center = bool(meta.get("center", True))
        try:
            rep.mean_old_, rep.mean_new_ = arrays["mean_old"], arrays["mean_new"]
            rep.anchors_old_, rep.anchors_new_ = arrays["anchors_old"], arrays["anchors_new"]
            if rep.anchors_old_.ndim != 2 or len(rep.anchors_old_) != len(rep.anchors_new_):
                raise ValueError(f"anchors of shapes {rep.anchors_old_.shape} and {rep.anchors_new_.shape}")
            rep.transform_old(np.ones((1, rep.mean_old_.shape[0])))  # every saved part fits the others
            rep.transform_new(np.ones((1, rep.mean_new_.shape[0])))
        except (KeyError, ValueError, IndexError, OffshelfError) as exc:
            raise OffshelfError(f"incomplete or inconsistent relative representation at {directory}: "
                                f"{type(exc).__name__}: {exc}") from None
        return rep

