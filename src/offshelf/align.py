"""Backward-compatible model upgrades: compare a NEW model's embeddings with an OLD model's stored ones.

Two ways, both learned from images embedded by both models (nothing else, no labels):

* `AlignmentMap` (fitted on pairs matched by path, `fit_alignment`): a map from the new model's space into the
  old one, so a query embedded by the new model searches a gallery embedded by the old model.
  Methods: ``procrustes`` (scaled orthogonal map), ``linear`` (ridge regression, alpha by cross-validation),
  ``mlp`` (a residual MLP ``v + f(v)`` on top of the linear map, early-stopped).
* `RelativeRepresentation` (training-free, Moschella et al. 2023): both spaces re-described by cosine
  similarities to a fixed set of anchor images embedded by both models.

Conventions of the fitted map (see docs/upgrade.md for why):

* Inputs and targets are L2-normalized, then centred by their training means: the map is affine,
  ``y = mean_old + ((x - mean_new) @ weights_) @ basis_``, and `transform` L2-normalizes its output.
* The map's output lies in the *output subspace*: ``basis_`` (orthonormal rows) spans the principal subspace of
  the centred training targets. With fewer pairs than dimensions that is all a map can learn; comparing a mapped
  query with a gallery vector's full norm would then favour the training items (whose old vectors lie in that
  subspace) over all others. Searches therefore compare in the *comparison space*, the span of ``basis_`` and
  ``mean_old`` (`compare_new`, `compare_old`); when it is the whole old space (enough pairs) this is plain
  cosine similarity and the store's own index is used.
* Dimension mismatch (procrustes): each side is reduced by PCA to ``k = min(dims, ranks)`` components and the
  rotation is fitted between PCA coordinates, i.e. the larger side is reduced by PCA to the smaller dimension
  (zero-padding the smaller side is the documented alternative, see docs/upgrade.md).
* ``calibration_x_`` / ``calibration_y_``: a monotone (isotonic) map from comparison-space scores of mapped
  queries to the new-space cosine they stand for, fitted on held-out pairs; `upgrade.MixedSearcher` uses it to
  rank re-embedded and not-yet-re-embedded items together.

Saving (`save_alignment` / `load_alignment`) writes arrays + JSON through `offshelf.persist`: no pickle,
also for the MLP (its weight arrays).
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin

from ._version import __version__
from .errors import OffshelfError
from .persist import load_bundle, save_bundle
from .store import IDENTITY_FIELDS, FeatureStore, StoreConfig

METHODS = ("procrustes", "linear", "mlp")
BUNDLE_KIND = "offshelf-alignment"
RELATIVE_KIND = "offshelf-relative-representation"
FORMAT = 1
DEFAULT_ALPHAS = tuple(float(a) for a in np.logspace(-4, 2, 13))
_RANK_TOL = 1e-6  # singular values below this fraction of the largest count as zero (data is float32)
_CALIBRATION_SLOPE = 1e-3  # keeps the calibration strictly increasing, so it never creates ties


# -- small numerical helpers ---------------------------------------------------------------------------------

def _l2(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit norm (zero rows stay zero), in float64 for fitting."""
    x = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, 1e-30)


def _l2_32(x: np.ndarray) -> np.ndarray:
    return _l2(x).astype(np.float32)


def _blas_limit(work: float) -> Any:
    """One BLAS thread for small problems: there, threads cost more than they gain (and spin badly on a
    machine whose cores are busy); large problems keep the default."""
    from contextlib import nullcontext

    from threadpoolctl import threadpool_limits

    return threadpool_limits(1, user_api="blas") if work < 2e9 else nullcontext()


def _svd(a: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Thin SVD; falls back to the slower, more robust LAPACK driver when the default one does not converge."""
    try:
        return np.linalg.svd(a, full_matrices=False)
    except np.linalg.LinAlgError:
        import scipy.linalg

        return scipy.linalg.svd(a, full_matrices=False, lapack_driver="gesvd")


def principal_basis(centred: np.ndarray, n_components: int | None = None) -> np.ndarray:
    """Orthonormal rows spanning the principal subspace of centred data: its rank, or `n_components` if fewer."""
    _, s, vt = _svd(centred)
    if not len(s) or s[0] <= 0:
        return np.zeros((0, centred.shape[1]))
    rank = int(np.count_nonzero(s > s[0] * _RANK_TOL))
    if n_components is not None:
        rank = min(rank, n_components)
    return vt[:rank]


def procrustes(source: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, float]:
    """The rotation `R` and scale `s` minimizing ||s * source @ R - target|| (orthogonal Procrustes, with scale).

    `R = U V^T` from the SVD of `source^T target` (Schönemann 1966); `s = trace(Sigma) / ||source||^2`.
    """
    u, sigma, vt = _svd(source.T @ target)
    norm = float((source**2).sum())
    return u @ vt, float(sigma.sum() / norm) if norm > 0 else 1.0


def ridge_loo(xc: np.ndarray, tc: np.ndarray, mean_old: np.ndarray, alphas: tuple[float, ...]
              ) -> tuple[np.ndarray, dict[str, Any]]:
    """Ridge regression `tc ~ xc @ W` (both centred) with alpha chosen by exact leave-one-out mean cosine.

    One thin SVD of `xc` gives every alpha's fit and its leave-one-out predictions in closed form:
    ``loo_i = t_i - (t_i - fit_i) / (1 - h_ii)`` with the hat matrix of ridge *with an intercept*,
    ``h_ii = 1/n + sum_j U_ij^2 s_j^2 / (s_j^2 + alpha)`` (leaving the 1/n out, as when one runs a no-intercept
    ridge on pre-centred data, makes every leave-one-out residual vanish as alpha -> 0 with fewer pairs than
    dimensions, and so always picks the smallest alpha). The criterion is the mean cosine between
    ``mean_old + loo_i`` and the true old vector: what the held-out report measures and search relies on.
    """
    n = len(xc)
    u, s, vt = _svd(xc)
    uty = u.T @ tc
    t = mean_old + tc
    scores = {}
    for alpha in alphas:
        f = s**2 / (s**2 + alpha)
        fitted = u @ (f[:, None] * uty)
        h = (u**2) @ f + 1.0 / n
        loo = tc - (tc - fitted) / np.maximum(1.0 - h, 1e-12)[:, None]
        scores[float(alpha)] = float((_l2(mean_old + loo) * _l2(t)).sum(1).mean())
    best = max(scores, key=lambda a: (scores[a], a))
    coef = vt.T @ ((s / (s**2 + best))[:, None] * uty)
    return coef, {"alpha": best, "loo_cosine": scores[best], "loo_cosine_by_alpha": scores}


def _complete_basis(basis: np.ndarray, extra: np.ndarray) -> np.ndarray:
    """`basis` (orthonormal rows) plus the unit part of `extra` orthogonal to it, if that part is not ~0."""
    rest = extra - (extra @ basis.T) @ basis if len(basis) else extra.copy()
    norm = float(np.linalg.norm(rest))
    if norm > _RANK_TOL * float(np.linalg.norm(extra)) and norm > 0:
        return np.vstack([basis, rest / norm])
    return basis


def _isotonic(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Knots of the increasing isotonic regression of `y` on `x` (for `np.interp`)."""
    from sklearn.isotonic import IsotonicRegression

    iso = IsotonicRegression(increasing=True, out_of_bounds="clip").fit(x, y)
    return np.asarray(iso.X_thresholds_, np.float64), np.asarray(iso.y_thresholds_, np.float64)


# -- the residual MLP (numpy, so that it is saved as plain arrays) --------------------------------------------

def _mlp_forward(v: np.ndarray, w1: np.ndarray, b1: np.ndarray, w2: np.ndarray, b2: np.ndarray) -> np.ndarray:
    return v + np.maximum(v @ w1 + b1, 0.0) @ w2 + b2


def _train_mlp(v_fit: np.ndarray, t_fit: np.ndarray, v_val: np.ndarray, t_val: np.ndarray, *, hidden: int,
               lr: float, weight_decay: float, max_epochs: int, patience: int, seed: int
               ) -> tuple[list[np.ndarray], dict[str, Any]]:
    """Full-batch Adam on the squared error of ``v + relu(v W1 + b1) W2 + b2``; W2 starts at 0 (the identity,
    i.e. the linear init), training stops when the validation error has not improved for `patience` epochs and
    the best weights are kept."""
    rng = np.random.default_rng(seed)
    k = v_fit.shape[1]
    params = [rng.standard_normal((k, hidden)) * np.sqrt(2.0 / k), np.zeros(hidden), np.zeros((hidden, k)),
              np.zeros(k)]
    moments = [np.zeros_like(p) for p in params]
    squares = [np.zeros_like(p) for p in params]
    beta1, beta2, eps = 0.9, 0.999, 1e-8

    def val_error(p: list[np.ndarray]) -> float:
        return float(((_mlp_forward(v_val, *p) - t_val) ** 2).sum(1).mean())

    best, best_params, best_epoch, epoch = val_error(params), [p.copy() for p in params], 0, 0
    start_error = best
    for epoch in range(1, max_epochs + 1):
        w1, b1, w2, b2 = params
        pre = v_fit @ w1 + b1
        hid = np.maximum(pre, 0.0)
        err = v_fit + hid @ w2 + b2 - t_fit
        grad_out = 2.0 * err / len(v_fit)
        g_w2 = hid.T @ grad_out + weight_decay * w2
        g_b2 = grad_out.sum(0)
        grad_hid = (grad_out @ w2.T) * (pre > 0)
        g_w1 = v_fit.T @ grad_hid + weight_decay * w1
        g_b1 = grad_hid.sum(0)
        for i, g in enumerate((g_w1, g_b1, g_w2, g_b2)):
            moments[i] = beta1 * moments[i] + (1 - beta1) * g
            squares[i] = beta2 * squares[i] + (1 - beta2) * g * g
            m_hat = moments[i] / (1 - beta1**epoch)
            s_hat = squares[i] / (1 - beta2**epoch)
            params[i] = params[i] - lr * m_hat / (np.sqrt(s_hat) + eps)
        current = val_error(params)
        if current < best - 1e-12:
            best, best_params, best_epoch = current, [p.copy() for p in params], epoch
        elif epoch - best_epoch >= patience:
            break
    return best_params, {"epochs_run": epoch, "best_epoch": best_epoch, "val_error_start": start_error,
                         "val_error_best": best}


# -- the map ----------------------------------------------------------------------------------------------------

class AlignmentMap(TransformerMixin, BaseEstimator):
    """A fitted map from a new model's embedding space into an old model's (scikit-learn style).

    ``fit(X_new, Y_old)`` on paired rows (the same images), then ``transform(new_vectors)`` gives old-space
    vectors (L2-normalized). `fit_alignment` fits one from two feature stores and records both stores'
    identities (``old_identity_``, ``new_identity_``, ``new_config_``), which `check_old_store` /
    `check_new_store` enforce.

    Parameters: `method` (procrustes | linear | mlp); `alphas` (ridge candidates, chosen by efficient
    leave-one-out CV on the training pairs); `n_components` (cap on the output subspace; None = the rank of the
    training targets); for mlp: `init` (linear | procrustes), `hidden`, `lr`, `weight_decay`, `max_epochs`,
    `patience`, `val_fraction`, `folds` (out-of-fold linear predictions the residual is trained on), `seed`.

    Learned: ``mean_new_`` (d_new,), ``mean_old_`` (d_old,), ``weights_`` (d_new, k), ``basis_`` (k, d_old),
    ``mlp_`` (W1, b1, W2, b2 in output coordinates, or None), ``compare_basis_`` ((c, d_old), or None when the
    comparison space is the whole old space), ``calibration_x_``/``calibration_y_`` (isotonic knots, or None),
    ``fit_info_``. Thread-safe once fitted (all methods only read).
    """

    def __init__(self, method: str = "procrustes", *, alphas: tuple[float, ...] = DEFAULT_ALPHAS,
                 n_components: int | None = None, init: str = "linear", hidden: int = 128, lr: float = 1e-3,
                 weight_decay: float = 1e-4, max_epochs: int = 2000, patience: int = 50,
                 val_fraction: float = 0.2, folds: int = 5, seed: int = 0) -> None:
        self.method = method
        self.alphas = alphas
        self.n_components = n_components
        self.init = init
        self.hidden = hidden
        self.lr = lr
        self.weight_decay = weight_decay
        self.max_epochs = max_epochs
        self.patience = patience
        self.val_fraction = val_fraction
        self.folds = folds
        self.seed = seed

    # -- fitting --------------------------------------------------------------------------------------
    def _check_params(self) -> None:
        if self.method not in METHODS:
            raise OffshelfError(f"unknown alignment method {self.method!r}; choose from {', '.join(METHODS)}")
        if self.method == "mlp" and self.init not in ("linear", "procrustes"):
            raise OffshelfError(f"mlp init must be 'linear' or 'procrustes', got {self.init!r}")

    def fit(self, X: np.ndarray, y: np.ndarray) -> AlignmentMap:
        """Fit on paired rows: `X` new-model vectors (n, d_new), `y` old-model vectors (n, d_old)."""
        self._check_params()
        x, t = _l2(X), _l2(y)
        if x.ndim != 2 or t.ndim != 2 or len(x) != len(t):
            raise OffshelfError(f"need paired 2-d arrays, got shapes {np.shape(X)} and {np.shape(y)}")
        if len(x) < 3:
            raise OffshelfError(f"need at least 3 pairs to fit an alignment, got {len(x)}")
        with _blas_limit(float(len(x)) * x.shape[1] * t.shape[1]):
            return self._fit(x, t)

    def _fit(self, x: np.ndarray, t: np.ndarray) -> AlignmentMap:
        started = time.perf_counter()
        linear_method = "procrustes" if self.method == "procrustes" or (
            self.method == "mlp" and self.init == "procrustes") else "linear"
        mean_new, mean_old, weights, basis, info = self._fit_linear(linear_method, x, t)
        self.fit_info_linear_ = info
        self.mean_new_, self.mean_old_, self.weights_, self.basis_ = mean_new, mean_old, weights, basis
        self.mlp_: list[np.ndarray] | None = None
        if self.method == "mlp":
            info["mlp"] = self._fit_mlp(linear_method, x, t)
        self.compare_basis_ = _complete_basis(basis, mean_old)
        if len(self.compare_basis_) >= t.shape[1]:
            self.compare_basis_ = None  # the whole old space: comparison = plain cosine similarity
        self.calibration_x_: np.ndarray | None = None
        self.calibration_y_: np.ndarray | None = None
        self.n_features_in_ = x.shape[1]
        self.fit_info_ = {**info, "n_pairs": len(x), "output_dim": int(len(basis)),
                          "comparison_dim": int(t.shape[1] if self.compare_basis_ is None
                                                else len(self.compare_basis_)),
                          "fit_seconds": time.perf_counter() - started}
        return self

    def _fit_linear(self, method: str, x: np.ndarray, t: np.ndarray, alpha: float | None = None
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """(mean_new, mean_old, weights, basis, info) of the procrustes or ridge map."""
        mean_new, mean_old = x.mean(0), t.mean(0)
        xc, tc = x - mean_new, t - mean_old
        if method == "procrustes":
            a = principal_basis(xc)
            b = principal_basis(tc)
            k = min(len(a), len(b))
            if self.n_components is not None:
                k = min(k, self.n_components)
            a, b = a[:k], b[:k]
            rotation, scale = procrustes(xc @ a.T, tc @ b.T)
            return mean_new, mean_old, scale * (a.T @ rotation), b, {"scale": scale, "k": k}
        coef, info = ridge_loo(xc, tc, mean_old, self.alphas if alpha is None else (alpha,))
        basis = principal_basis(tc, self.n_components)  # coef's rows lie in the span of tc's rows
        return mean_new, mean_old, coef @ basis.T, basis, info

    def _fit_mlp(self, linear_method: str, x: np.ndarray, t: np.ndarray) -> dict[str, Any]:
        """Train the residual on out-of-fold linear predictions (so it learns the linear map's error on unseen
        images, not on the pairs it interpolates), early-stopped on a validation split."""
        n = len(x)
        alpha = self.fit_info_linear_.get("alpha")  # the folds reuse the chosen alpha (no nested CV)
        rng = np.random.default_rng(self.seed)
        order = rng.permutation(n)
        folds = max(2, min(self.folds, n))
        oof = np.zeros((n, len(self.basis_)))
        for fold in np.array_split(order, folds):
            rest = np.setdiff1d(order, fold)
            if len(rest) < 3:
                oof[fold] = self._coordinates_linear(x[fold])
                continue
            mn, mo, w, b, _ = self._fit_linear(linear_method, x[rest], t[rest], alpha)
            mapped = mo + ((x[fold] - mn) @ w) @ b  # old space, then into this map's output coordinates
            oof[fold] = (mapped - self.mean_old_) @ self.basis_.T
        target = (t - self.mean_old_) @ self.basis_.T
        n_val = max(1, int(round(self.val_fraction * n)))
        val, fit = order[:n_val], order[n_val:]
        with _blas_limit(float(len(fit)) * len(self.basis_) * self.hidden * 10):
            params, info = _train_mlp(oof[fit], target[fit], oof[val], target[val], hidden=self.hidden, lr=self.lr,
                                      weight_decay=self.weight_decay, max_epochs=self.max_epochs,
                                      patience=self.patience, seed=self.seed)
        self.mlp_ = params
        return info

    # -- using ----------------------------------------------------------------------------------------
    def _check_fitted(self) -> None:
        if not hasattr(self, "weights_"):
            raise OffshelfError("this AlignmentMap is not fitted; call fit() or load_alignment()")

    def _coordinates_linear(self, x: np.ndarray) -> np.ndarray:
        return (x - self.mean_new_) @ self.weights_

    def coordinates(self, new_vectors: np.ndarray) -> np.ndarray:
        """Mapped vectors in the output subspace's coordinates (centred), float64 (n, k)."""
        self._check_fitted()
        x = _l2(np.atleast_2d(new_vectors))
        if x.shape[1] != self.mean_new_.shape[0]:
            raise OffshelfError(f"new vectors have dim {x.shape[1]}, the map expects {self.mean_new_.shape[0]}")
        v = self._coordinates_linear(x)
        if self.mlp_ is not None:
            v = _mlp_forward(v, *self.mlp_)
        return v

    def _mapped64(self, new_vectors: np.ndarray) -> np.ndarray:
        return _l2(self.mean_old_ + self.coordinates(new_vectors) @ self.basis_)

    def transform(self, X: np.ndarray) -> np.ndarray:
        """New-model vectors -> old-space vectors, L2-normalized float32 (n, d_old)."""
        return self._mapped64(X).astype(np.float32)

    @property
    def coef_(self) -> np.ndarray:
        """The linear part as one (d_new, d_old) matrix: ``y = mean_old_ + (x - mean_new_) @ coef_`` (+ MLP)."""
        self._check_fitted()
        return self.weights_ @ self.basis_

    @property
    def old_dim(self) -> int:
        return int(self.mean_old_.shape[0])

    @property
    def new_dim(self) -> int:
        return int(self.mean_new_.shape[0])

    @property
    def full_comparison(self) -> bool:
        """True if the comparison space is the whole old space (searches use plain cosine similarity)."""
        return self.compare_basis_ is None

    def compare_old(self, old_vectors: np.ndarray) -> np.ndarray:
        """Old-model vectors as unit vectors of the comparison space (float32)."""
        self._check_fitted()
        y = _l2(np.atleast_2d(old_vectors))
        if y.shape[1] != self.old_dim:
            raise OffshelfError(f"old vectors have dim {y.shape[1]}, the map expects {self.old_dim}")
        return _l2_32(y if self.compare_basis_ is None else y @ self.compare_basis_.T)

    def compare_new(self, new_vectors: np.ndarray) -> np.ndarray:
        """New-model vectors, mapped, as unit vectors of the comparison space (float32)."""
        y = self._mapped64(new_vectors)
        return _l2_32(y if self.compare_basis_ is None else y @ self.compare_basis_.T)

    def calibrate(self, scores: np.ndarray) -> np.ndarray:
        """Comparison-space scores of mapped queries -> the new-space cosine they predict (strictly increasing).

        Identity if the map has no calibration (fitted without held-out pairs)."""
        s = np.asarray(scores, np.float64)
        if self.calibration_x_ is None or self.calibration_y_ is None:
            return s.astype(np.float32)
        fitted = np.interp(s, self.calibration_x_, self.calibration_y_)
        return ((1 - _CALIBRATION_SLOPE) * fitted + _CALIBRATION_SLOPE * s).astype(np.float32)

    def fit_calibration(self, scores: np.ndarray, new_scores: np.ndarray) -> AlignmentMap:
        """Fit `calibrate` from comparison-space scores and the new-space cosines of the same (query, item) pairs."""
        self.calibration_x_, self.calibration_y_ = _isotonic(np.ravel(scores), np.ravel(new_scores))
        return self

    # -- store identities -----------------------------------------------------------------------------
    @property
    def old_identity(self) -> dict[str, Any] | None:
        return getattr(self, "old_identity_", None)

    @property
    def new_identity(self) -> dict[str, Any] | None:
        return getattr(self, "new_identity_", None)

    def new_store_config(self) -> StoreConfig:
        """The new model's full feature description (to embed queries or re-embed a gallery)."""
        config = getattr(self, "new_config_", None)
        if not config:
            raise OffshelfError("this alignment does not record its new model (fit it with fit_alignment)")
        return StoreConfig(**config)

    def _check(self, store: FeatureStore | str | Path, side: str) -> FeatureStore:
        opened = store if isinstance(store, FeatureStore) else FeatureStore.open(store)
        expected = self.old_identity if side == "old" else self.new_identity
        other = self.new_identity if side == "old" else self.old_identity
        found = opened.config.identity()
        if expected is None:
            raise OffshelfError("this alignment records no store identities (fit it with fit_alignment)")
        if found != expected:
            swapped = f" (that is the map's {'new' if side == 'old' else 'old'} model: swapped stores?)"
            hint = swapped if found == other else ""
            raise OffshelfError(
                f"store {opened.root} holds {opened.config.describe()}, but this alignment maps "
                f"{'into' if side == 'old' else 'from'} {_describe(expected)}{hint}")
        return opened

    def check_old_store(self, store: FeatureStore | str | Path) -> FeatureStore:
        """The store, opened; OffshelfError unless it holds the map's OLD model's features."""
        return self._check(store, "old")

    def check_new_store(self, store: FeatureStore | str | Path) -> FeatureStore:
        """The store, opened; OffshelfError unless it holds the map's NEW model's features."""
        return self._check(store, "new")

    # -- saving ---------------------------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        return save_alignment(self, directory)


def _describe(identity: dict[str, Any]) -> str:
    order = [k for k in IDENTITY_FIELDS if k in identity] + [k for k in identity if k not in IDENTITY_FIELDS]
    return ", ".join(f"{k}={identity[k]}" for k in order)


_ARRAYS = ("mean_new_", "mean_old_", "weights_", "basis_")
_OPTIONAL_ARRAYS = ("compare_basis_", "calibration_x_", "calibration_y_")


def save_alignment(alignment: AlignmentMap, directory: str | Path) -> Path:
    """Save a fitted map under `directory` (arrays.npz + meta.json, written atomically; no pickle)."""
    alignment._check_fitted()
    arrays = {name: getattr(alignment, name) for name in _ARRAYS}
    arrays.update({name: value for name in _OPTIONAL_ARRAYS if (value := getattr(alignment, name)) is not None})
    if alignment.mlp_ is not None:
        arrays.update({f"mlp_{i}": w for i, w in enumerate(alignment.mlp_)})
    params = alignment.get_params()
    params["alphas"] = list(params["alphas"])
    meta = {
        "kind": BUNDLE_KIND, "format": FORMAT, "offshelf_version": __version__, "params": params,
        "old_identity": alignment.old_identity, "new_identity": alignment.new_identity,
        "old_config": getattr(alignment, "old_config_", None), "new_config": getattr(alignment, "new_config_", None),
        "fit_info": getattr(alignment, "fit_info_", {}), "report": getattr(alignment, "report_", None),
    }
    return save_bundle(directory, meta, arrays)


def load_alignment(directory: str | Path) -> AlignmentMap:
    """Load what `save_alignment` wrote (never unpickles); OffshelfError if it is not an alignment."""
    meta, arrays = load_bundle(directory, BUNDLE_KIND)
    if meta.get("format") != FORMAT:
        raise OffshelfError(f"{directory} holds an alignment of format {meta.get('format')}; "
                            f"this version reads {FORMAT}")
    try:
        params = dict(meta["params"])
        params["alphas"] = tuple(params["alphas"])
        alignment = AlignmentMap(**params)
        for name in _ARRAYS:
            setattr(alignment, name, np.asarray(arrays[name], np.float64))
        for name in _OPTIONAL_ARRAYS:
            setattr(alignment, name, np.asarray(arrays[name], np.float64) if name in arrays else None)
        mlp = [arrays[f"mlp_{i}"] for i in range(4)] if "mlp_0" in arrays else None
        alignment.mlp_ = [np.asarray(w, np.float64) for w in mlp] if mlp else None
    except (KeyError, TypeError) as exc:
        raise OffshelfError(f"incomplete alignment at {directory}: {exc}") from None
    alignment.n_features_in_ = alignment.new_dim
    alignment.old_identity_, alignment.new_identity_ = meta.get("old_identity"), meta.get("new_identity")
    alignment.old_config_, alignment.new_config_ = meta.get("old_config"), meta.get("new_config")
    alignment.fit_info_, alignment.report_ = meta.get("fit_info", {}), meta.get("report")
    return alignment


# -- fitting from two stores --------------------------------------------------------------------------------

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
    old = _l2(old_vectors)
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
            report["identity_baseline"] = {"cosine": float((_l2(new_x[held]) * _l2(old_x[held])).sum(1).mean()),
                                           "top1": _top1(_l2(new_x[held]), _l2(old_x[held]), np.arange(len(held)))}
        # calibration: held-out queries against every paired item, comparison-space score -> new-space cosine
        scores = alignment.compare_new(new_x[held]) @ alignment.compare_old(old_x).T
        truth_scores = _l2(new_x[held]) @ _l2(new_x).T
        calibration = _isotonic(scores.ravel(), truth_scores.ravel())
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


# -- relative representations -------------------------------------------------------------------------------

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
        a_old, a_new = _l2(anchors_old), _l2(anchors_new)
        if a_old.ndim != 2 or a_new.ndim != 2 or len(a_old) != len(a_new):
            raise OffshelfError(f"need the same anchors in both spaces, got {np.shape(anchors_old)} and "
                                f"{np.shape(anchors_new)}")
        if len(a_old) < 2:
            raise OffshelfError("need at least 2 anchors")
        self.center = center
        self.mean_old_ = a_old.mean(0) if center else np.zeros(a_old.shape[1])
        self.mean_new_ = a_new.mean(0) if center else np.zeros(a_new.shape[1])
        self.anchors_old_ = _l2(a_old - self.mean_old_)
        self.anchors_new_ = _l2(a_new - self.mean_new_)

    @property
    def n_anchors(self) -> int:
        return len(self.anchors_old_)

    def _relative(self, x: np.ndarray, mean: np.ndarray, anchors: np.ndarray) -> np.ndarray:
        x = _l2(np.atleast_2d(x))
        if x.shape[1] != anchors.shape[1]:
            raise OffshelfError(f"vectors have dim {x.shape[1]}, the anchors {anchors.shape[1]}")
        rel = _l2(x - mean) @ anchors.T
        if self.center:
            rel = rel - rel.mean(1, keepdims=True)
        return _l2_32(rel)

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

    def save(self, directory: str | Path) -> Path:
        arrays = {"mean_old": self.mean_old_, "mean_new": self.mean_new_, "anchors_old": self.anchors_old_,
                  "anchors_new": self.anchors_new_}
        return save_bundle(directory, {"kind": RELATIVE_KIND, "format": FORMAT, "center": self.center}, arrays)

    @classmethod
    def load(cls, directory: str | Path) -> RelativeRepresentation:
        meta, arrays = load_bundle(directory, RELATIVE_KIND)
        rep = cls.__new__(cls)
        rep.center = bool(meta.get("center", True))
        rep.mean_old_, rep.mean_new_ = arrays["mean_old"], arrays["mean_new"]
        rep.anchors_old_, rep.anchors_new_ = arrays["anchors_old"], arrays["anchors_new"]
        return rep


# -- CLI handler ---------------------------------------------------------------------------------------------

def align_command(old: str | Path, new: str | Path, out: str | Path, method: str = "procrustes", *,
                  holdout: float = 0.2, seed: int = 0) -> dict[str, Any]:
    """`offshelf align`: fit, save to `out`, return the JSON-ready report (method, held-out fit error, ...)."""
    alignment, report = fit_alignment(old, new, method=method, holdout=holdout, seed=seed)
    report["map"] = str(save_alignment(alignment, out))
    return report
