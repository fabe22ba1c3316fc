"""Numeric helpers on descriptor matrices (numpy only, so that inference never imports scikit-learn)."""

from __future__ import annotations

import numpy as np


def l2_normalize(x: np.ndarray, dtype: type[np.floating] = np.float32) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero), computed and returned in `dtype`."""
    x = np.asarray(x, dtype=dtype)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, np.finfo(dtype).tiny)
