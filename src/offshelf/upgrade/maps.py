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

Saving (`save_alignment` / `load_alignment`) writes arrays + JSON through `offshelf.io`: no pickle,
also for the MLP (its weight arrays).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin

from offshelf._version import __version__
from offshelf.errors import OffshelfError
from offshelf.io import load_bundle, save_bundle
from offshelf.models import resolve_spec
from offshelf.store import FeatureStore, StoreConfig, check_identity
from offshelf.vectors import l2_normalize

METHODS = ("procrustes", "linear", "mlp")
BUNDLE_KIND = "offshelf-alignment"
FORMAT = 1
DEFAULT_ALPHAS = tuple(float(a) for a in np.logspace(-4, 2, 13))
_RANK_TOL = 1e-6  # singular values below this fraction of the largest count as zero (data is float32)
_CALIBRATION_SLOPE = 1e-3  # keeps the calibration strictly increasing, so it never creates ties


# -- small numerical helpers ---------------------------------------------------------------------------------



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
        scores[float(alpha)] = float((l2_normalize(mean_old + loo, np.float64) * l2_normalize(t, np.float64)).sum(1).mean())
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


def isotonic(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
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
        x, t = l2_normalize(X, np.float64), l2_normalize(y, np.float64)
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
        x = l2_normalize(np.atleast_2d(new_vectors), np.float64)
        if x.shape[1] != self.mean_new_.shape[0]:
            raise OffshelfError(f"new vectors have dim {x.shape[1]}, the map expects {self.mean_new_.shape[0]}")
        v = self._coordinates_linear(x)
        if self.mlp_ is not None:
            v = _mlp_forward(v, *self.mlp_)
        return v

    def _mapped64(self, new_vectors: np.ndarray) -> np.ndarray:
        return l2_normalize(self.mean_old_ + self.coordinates(new_vectors) @ self.basis_, np.float64)

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
        y = l2_normalize(np.atleast_2d(old_vectors), np.float64)
        if y.shape[1] != self.old_dim:
            raise OffshelfError(f"old vectors have dim {y.shape[1]}, the map expects {self.old_dim}")
        return l2_normalize(y if self.compare_basis_ is None else y @ self.compare_basis_.T, np.float64).astype(np.float32)

    def compare_new(self, new_vectors: np.ndarray) -> np.ndarray:
        """New-model vectors, mapped, as unit vectors of the comparison space (float32)."""
        y = self._mapped64(new_vectors)
        return l2_normalize(y if self.compare_basis_ is None else y @ self.compare_basis_.T, np.float64).astype(np.float32)

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
        self.calibration_x_, self.calibration_y_ = isotonic(np.ravel(scores), np.ravel(new_scores))
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
        swapped = f" (that is the map's {'new' if side == 'old' else 'old'} model: swapped stores?)"
        hint = swapped if found == other else ""
        check_identity(found, expected, f"store {opened.root} holds {{found}}, but this alignment maps "
                       f"{'into' if side == 'old' else 'from'} {{expected}}{hint}", OffshelfError)
        return opened

    def check_old_store(self, store: FeatureStore | str | Path) -> FeatureStore:
        """The store, opened; OffshelfError unless it holds the map's OLD model's features."""
        return self._check(store, "old")

    def check_new_store(self, store: FeatureStore | str | Path) -> FeatureStore:
        """The store, opened; OffshelfError unless it holds the map's NEW model's features."""
        return self._check(store, "new")

    # -- saving ---------------------------------------------------------------------------------------
    def save(self, directory: str | Path, *, overwrite: bool = False) -> Path:
        return save_alignment(self, directory, overwrite=overwrite)



_ARRAYS = ("mean_new_", "mean_old_", "weights_", "basis_")
_OPTIONAL_ARRAYS = ("compare_basis_", "calibration_x_", "calibration_y_")


def save_alignment(alignment: AlignmentMap, directory: str | Path, *, overwrite: bool = False) -> Path:
    """Save a fitted map as the folder `directory` (arrays.npz + meta.json, written as one unit; no pickle); an
    existing map there is replaced only with `overwrite`."""
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
    return save_bundle(directory, meta, arrays, overwrite=overwrite)


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
        alignment.n_features_in_ = alignment.new_dim
        alignment.old_identity_, alignment.new_identity_ = meta.get("old_identity"), meta.get("new_identity")
        alignment.old_config_, alignment.new_config_ = meta.get("old_config"), meta.get("new_config")
        alignment.fit_info_, alignment.report_ = meta.get("fit_info", {}), meta.get("report")
        config = alignment.new_store_config() if alignment.new_config_ else None
        # every saved part fits the others
        alignment.compare_new(np.ones((1, alignment.new_dim)))
        alignment.compare_old(np.ones((1, alignment.old_dim)))
        alignment.calibrate(np.zeros(1))
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, OffshelfError) as exc:
        raise OffshelfError(f"incomplete or inconsistent alignment at {directory}: {type(exc).__name__}: {exc}") from None
    if config is not None and config.model_spec:  # the model that embeds queries is the registry's: check it
        resolve_spec(config.model, config.model_spec, Path(directory) / "meta.json")
    return alignment


def as_alignment(alignment: AlignmentMap | str | Path) -> AlignmentMap:
    """A fitted map, or the one saved in the folder `alignment`."""
    return alignment if isinstance(alignment, AlignmentMap) else load_alignment(alignment)
