"""Linear probes on stored descriptors: the paper's classification protocol as a scikit-learn estimator.

`LinearProbe` is fitted post-processing (`post`: L2, signed square root, standardization, in the order given)
followed by linear classifiers:

* ``method="svm"`` (VOC07 as in VISSL): one `LinearSVC` per class (one-vs-rest), positives weighted 2:1
  (``class_weight="voc"``), C chosen per class by stratified k-fold cross-validated AP over `Cs`, then refit
  on all the data with that C.
* ``method="logreg"``: for multi-class targets one multinomial `LogisticRegression` with one C chosen by
  cross-validated accuracy; for multi-label targets one binary logistic model per class, C chosen per class by
  cross-validated AP as for the SVM.

Targets: a 1-D array of labels is multi-class; a sequence of label collections (lists, tuples, sets) or a 0/1
indicator matrix (classes 0..C-1) is multi-label. Multi-label predictions are the labels scoring > 0 (for
logistic models that is p > 0.5). The post-processing is fitted on all the training data before the
cross-validation (it uses no labels; L2 and the signed root learn nothing at all).

Augmented views: `decision_function` accepts `(n, V, D)` per-view features and sums each class's score over
the views (the paper's test-time combination); `(n, D)` is one descriptor per image (e.g. the mean of views).

A fitted probe is its linear weights (`coef_`, `intercept_`), `classes_` and `post_`; `save_probe` writes
them with the store identity they were fitted on as arrays plus JSON (no pickle); `load_probe` restores a probe
that predicts identically. Labels come from a CSV (`read_labels_csv`) or from folder names
(`labels_from_folders`); `align_labels` matches them to a store's rows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from joblib import Parallel, delayed
from scipy.special import expit, softmax
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import Normalizer, StandardScaler
from sklearn.svm import LinearSVC
from sklearn.utils.metaestimators import available_if
from sklearn.utils.validation import check_array, check_is_fitted
from threadpoolctl import threadpool_limits

from offshelf.errors import OffshelfError
from offshelf.io import load_bundle, save_bundle
from offshelf.metrics import accuracy, average_precision, confusion_matrix, json_float, mean_average_precision
from offshelf.probe.labels import Targets, is_indicator, label_tuples, looks_multilabel
from offshelf.store import IDENTITY_FIELDS, full_identity
from offshelf.store.identity import check_identity
from offshelf.transforms import SignedPower, pipeline_from_bundle, pipeline_to_bundle

METHODS = ("svm", "logreg")
POST_STEPS = {"l2": Normalizer, "power": SignedPower, "standardize": StandardScaler}
CLASS_WEIGHTS = ("voc", "balanced", None)
VOC_CLASS_WEIGHT = {1: 2.0, -1: 1.0}
PROBE_KIND = "probe"
PROBE_FORMAT = 1


# -- targets -------------------------------------------------------------------------------------

def _indicator(targets: Targets, classes: np.ndarray) -> np.ndarray:
    """`(n, C)` bool membership of `classes` in each item's labels (labels outside `classes` are ignored)."""
    column = {label: c for c, label in enumerate(classes.tolist())}
    Y = np.zeros((len(targets), len(classes)), dtype=bool)
    for i, labels in enumerate(targets):
        Y[i, [column[label] for label in labels if label in column]] = True
    return Y



# -- fitting helpers -------------------------------------------------------------------------------

def _fit_linear(model: Any, Z: np.ndarray, target: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fit `model` on the given rows; its `(coef_, intercept_)`."""
    model.fit(Z[rows], target[rows])
    return model.coef_.copy(), np.atleast_1d(model.intercept_).copy()


def _multinomial_rows(coef: np.ndarray, intercept: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One row per class: scikit-learn keeps a single row (for class 1) in a two-class logistic model."""
    if coef.shape[0] == 1:
        return np.vstack([-coef / 2, coef / 2]), np.r_[-intercept / 2, intercept / 2]
    return coef, intercept


def _make_post(post: Sequence[str]) -> Pipeline | None:
    return Pipeline([(name, POST_STEPS[name]()) for name in post]) if post else None


class LinearProbe(ClassifierMixin, BaseEstimator):
    """Linear classifiers on (post-processed) descriptors, with C chosen by cross-validation.

    Parameters
    ----------
    method : "svm" or "logreg".
    post : post-processing steps applied in order before the classifiers: "l2", "power" (signed square root),
        "standardize".
    Cs : the grid of inverse regularization strengths searched by cross-validation.
    cv : number of stratified folds (each class needs at least `cv` examples and `cv` non-examples).
    class_weight : "voc" weights positives 2:1 in every one-vs-rest model (a multinomial model has no
        positives and stays unweighted), "balanced" as in scikit-learn, or None.
    multilabel : None detects the kind of targets from `y`; True/False forces it.
    max_iter : iteration cap of the solvers.
    n_jobs : parallel fits (threads; liblinear and lbfgs release the GIL; BLAS is held to one thread per fit);
        -1 (default) uses all cores, None one.
    random_state : seed of the fold shuffling and of liblinear.

    Attributes
    ----------
    classes_, multilabel_, n_features_in_, post_ (fitted Pipeline or None),
    coef_ (C, D) and intercept_ (C,) in the post-processed space, C_ (C,) the chosen C of each class,
    cv_results_ : {"scoring": "AP" or "accuracy", "Cs": (k,), "mean_score": (C, k) per class or (1, k) for a
        multinomial model} mean cross-validated score of each C,
    cv_score_ : the `evaluate` report (accuracy, mAP, mAP_voc11, per_class, confusion) of the out-of-fold
        scores made with the chosen Cs (slightly optimistic: the same folds chose C).
    """

    def __init__(
        self,
        method: str = "svm",
        post: Sequence[str] = ("l2",),
        Cs: Sequence[float] = (0.01, 0.1, 0.2, 1.0, 2.0, 10.0),
        cv: int = 3,
        class_weight: str | None = "voc",
        multilabel: bool | None = None,
        max_iter: int = 10_000,
        n_jobs: int | None = -1,
        random_state: int = 0,
    ) -> None:
        self.method = method
        self.post = post
        self.Cs = Cs
        self.cv = cv
        self.class_weight = class_weight
        self.multilabel = multilabel
        self.max_iter = max_iter
        self.n_jobs = n_jobs
        self.random_state = random_state

    # -- fitting ---------------------------------------------------------------------------------

    def _check_params(self) -> None:
        if self.method not in METHODS:
            raise OffshelfError(f"unknown probe method {self.method!r}; choose from {', '.join(METHODS)}")
        unknown = [name for name in self.post if name not in POST_STEPS]
        if unknown:
            raise OffshelfError(f"unknown post-processing {unknown}; choose from {', '.join(POST_STEPS)}")
        if not self.Cs or min(self.Cs) <= 0:
            raise OffshelfError(f"Cs must be a non-empty grid of positive numbers, got {self.Cs}")
        if self.cv < 2:
            raise OffshelfError(f"cv must be at least 2, got {self.cv}")
        if self.class_weight not in CLASS_WEIGHTS:
            raise OffshelfError(f"unknown class_weight {self.class_weight!r}; choose from {CLASS_WEIGHTS}")

    def _check_counts(self, Y: np.ndarray) -> None:
        if Y.shape[1] < (1 if self.multilabel_ else 2):
            raise OffshelfError(f"a {'multi-label' if self.multilabel_ else 'multi-class'} probe needs more classes")
        for label, positives in zip(self.classes_.tolist(), Y.sum(axis=0).tolist()):
            if min(positives, len(Y) - positives) < self.cv:
                raise OffshelfError(
                    f"class {label!r} has {positives} of {len(Y)} items; {self.cv}-fold cross-validation needs "
                    f"at least {self.cv} items with and {self.cv} without each label"
                )

    @property
    def _one_vs_rest(self) -> bool:
        return self.method == "svm" or self.multilabel_

    def _binary_model(self, C: float) -> Any:
        weight = VOC_CLASS_WEIGHT if self.class_weight == "voc" else self.class_weight
        if self.method == "svm":
            return LinearSVC(C=C, class_weight=weight, dual="auto", max_iter=self.max_iter,
                             random_state=self.random_state)
        return LogisticRegression(C=C, class_weight=weight, max_iter=self.max_iter)

    def _multinomial_model(self, C: float) -> LogisticRegression:
        weight = None if self.class_weight == "voc" else self.class_weight
        return LogisticRegression(C=C, class_weight=weight, max_iter=self.max_iter)

    def _folds(self, Z: np.ndarray, strata: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        return list(StratifiedKFold(self.cv, shuffle=True, random_state=self.random_state).split(Z, strata))

    def fit(self, X: np.ndarray, y: Any) -> LinearProbe:
        """Fit on descriptors `X (n, D)` and labels `y` (see the module docstring for the target kinds)."""
        self._check_params()
        X = check_array(X, dtype=np.float64)
        self.multilabel_ = bool(looks_multilabel(y) if self.multilabel is None else self.multilabel)
        targets = label_tuples(y, self.multilabel_)
        if len(targets) != len(X):
            raise OffshelfError(f"{len(X)} descriptors but {len(targets)} labels")
        all_labels = [label for labels in targets for label in labels]
        self.classes_ = np.arange(y.shape[1]) if is_indicator(y) else np.unique(all_labels)
        Y = _indicator(targets, self.classes_)
        self._check_counts(Y)
        self.n_features_in_ = X.shape[1]
        self.post_ = _make_post(self.post)
        Z = X if self.post_ is None else self.post_.fit_transform(X)
        Cs = np.unique(np.asarray(self.Cs, dtype=np.float64))
        fit = self._fit_one_vs_rest if self._one_vs_rest else self._fit_multinomial
        with threadpool_limits(limits=1, user_api="blas"):  # the parallelism is across fits
            mean_score, out_of_fold = fit(Z, Y, Cs, Parallel(n_jobs=self.n_jobs, prefer="threads"))
        self.cv_results_ = {"scoring": "AP" if self._one_vs_rest else "accuracy", "Cs": Cs, "mean_score": mean_score}
        self.cv_score_ = self._report(out_of_fold, targets)
        return self

    def _fit_one_vs_rest(
        self, Z: np.ndarray, Y: np.ndarray, Cs: np.ndarray, parallel: Parallel
    ) -> tuple[np.ndarray, np.ndarray]:
        signs = np.where(Y, 1, -1)
        folds = [self._folds(Z, Y[:, c]) for c in range(Y.shape[1])]
        jobs = [(c, fold, j) for c in range(Y.shape[1]) for fold in range(self.cv) for j in range(len(Cs))]
        fitted = parallel(
            delayed(_fit_linear)(self._binary_model(Cs[j]), Z, signs[:, c], folds[c][fold][0]) for c, fold, j in jobs
        )
        out_of_fold = np.zeros((len(Cs), *Y.shape))
        mean_score = np.zeros((Y.shape[1], len(Cs)))
        for (c, fold, j), (coef, intercept) in zip(jobs, fitted):
            held_out = folds[c][fold][1]
            scores = Z[held_out] @ coef[0] + intercept[0]
            out_of_fold[j, held_out, c] = scores
            mean_score[c, j] += average_precision(Y[held_out, c], scores) / self.cv
        best = mean_score.argmax(axis=1)
        everything = np.arange(len(Z))
        refit = parallel(
            delayed(_fit_linear)(self._binary_model(Cs[best[c]]), Z, signs[:, c], everything) for c in range(Y.shape[1])
        )
        self.coef_ = np.vstack([coef for coef, _ in refit])
        self.intercept_ = np.concatenate([intercept for _, intercept in refit])
        self.C_ = Cs[best]
        return mean_score, out_of_fold[best, :, np.arange(Y.shape[1])].T

    def _fit_multinomial(
        self, Z: np.ndarray, Y: np.ndarray, Cs: np.ndarray, parallel: Parallel
    ) -> tuple[np.ndarray, np.ndarray]:
        codes = Y.argmax(axis=1)
        folds = self._folds(Z, codes)
        jobs = [(fold, j) for fold in range(self.cv) for j in range(len(Cs))]
        fitted = parallel(
            delayed(_fit_linear)(self._multinomial_model(Cs[j]), Z, codes, folds[fold][0]) for fold, j in jobs
        )
        out_of_fold = np.zeros((len(Cs), *Y.shape))
        mean_score = np.zeros((1, len(Cs)))
        for (fold, j), params in zip(jobs, fitted):
            held_out = folds[fold][1]
            coef, intercept = _multinomial_rows(*params)
            scores = Z[held_out] @ coef.T + intercept
            out_of_fold[j, held_out] = scores
            mean_score[0, j] += accuracy(codes[held_out], scores.argmax(axis=1)) / self.cv
        best = int(mean_score[0].argmax())
        self.coef_, self.intercept_ = _multinomial_rows(
            *_fit_linear(self._multinomial_model(Cs[best]), Z, codes, np.arange(len(Z)))
        )
        self.C_ = np.full(Y.shape[1], Cs[best])
        return mean_score, out_of_fold[best]

    # -- prediction ------------------------------------------------------------------------------

    def _view_scores(self, X: np.ndarray) -> np.ndarray:
        """`(n, V, C)` class scores of `(n, D)` (V = 1) or `(n, V, D)` descriptors."""
        check_is_fitted(self)
        X = np.asarray(X)
        if X.ndim not in (2, 3) or X.shape[-1] != self.n_features_in_:
            raise OffshelfError(
                f"expected descriptors (n, {self.n_features_in_}) or (n, views, {self.n_features_in_}), got {X.shape}"
            )
        flat = check_array(X.reshape(-1, X.shape[-1]), dtype=np.float64)
        Z = flat if self.post_ is None else self.post_.transform(flat)
        scores = Z @ self.coef_.T + self.intercept_
        return scores.reshape(len(X), -1 if X.ndim == 3 else 1, len(self.classes_))

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        """`(n, C)` class scores, summed over the views of a `(n, V, D)` input."""
        return self._view_scores(X).sum(axis=1)

    def _from_scores(self, scores: np.ndarray) -> np.ndarray | Targets:
        if self.multilabel_:
            return [tuple(self.classes_[row > 0].tolist()) for row in scores]
        return self.classes_[scores.argmax(axis=1)]

    def predict(self, X: np.ndarray) -> np.ndarray | Targets:
        """Labels (multi-class) or, for multi-label probes, a tuple of the labels scoring > 0 per item."""
        return self._from_scores(self.decision_function(X))

    @available_if(lambda probe: probe.method == "logreg")
    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """`(n, C)` probabilities (softmax, or per-class sigmoid if multi-label) of the mean logits over views."""
        logits = self._view_scores(X).mean(axis=1)
        return expit(logits) if self.multilabel_ else softmax(logits, axis=1)

    # -- evaluation ------------------------------------------------------------------------------

    def _report(self, scores: np.ndarray, targets: Targets) -> dict[str, Any]:
        """The `evaluate` report of class scores against each item's labels."""
        Y = _indicator(targets, self.classes_)
        predicted = self._from_scores(scores)
        predicted_sets = predicted if self.multilabel_ else [(label,) for label in predicted.tolist()]
        mAP, per_class = mean_average_precision(Y, scores, "auc")
        mAP_voc11, _ = mean_average_precision(Y, scores, "voc11")
        report = {
            "n": len(targets),
            "accuracy": float(np.mean([set(p) == set(t) for p, t in zip(predicted_sets, targets)])),
            "mAP": json_float(mAP),
            "mAP_voc11": json_float(mAP_voc11),
            "per_class": {str(label): json_float(ap) for label, ap in zip(self.classes_.tolist(), per_class)},
        }
        if not self.multilabel_:
            truth = [labels[0] for labels in targets]
            known = self.classes_.tolist()
            labels = known + sorted(set(truth) - set(known))
            matrix = confusion_matrix(truth, predicted.tolist(), labels)
            report["confusion"] = {"labels": labels, "matrix": matrix.tolist()}
        return report

    def score(self, X: np.ndarray, y: Any, sample_weight: None = None) -> float:
        """Accuracy as in `evaluate` (exact match of the label sets for multi-label probes)."""
        return float(evaluate(self, X, y)["accuracy"])


def evaluate(probe: LinearProbe, X: np.ndarray, y: Any) -> dict[str, Any]:
    """JSON-ready metrics of `probe` on `(X, y)`.

    `accuracy`: top-1 for multi-class, exact match of the predicted and true label sets for multi-label;
    `mAP` (scikit-learn's AP), `mAP_voc11` (VOC07 11-point), `per_class` {label: AP}, over the classes with at
    least one positive (others are null); `n`; for multi-class also `confusion`: {"labels", "matrix"} with
    rows = true labels, columns = predicted (labels unknown to the probe are appended).
    """
    targets = label_tuples(y, probe.multilabel_)
    if len(targets) != len(X):
        raise OffshelfError(f"{len(X)} descriptors but {len(targets)} labels")
    return probe._report(probe.decision_function(X), targets)


# -- saving ----------------------------------------------------------------------------------------

def check_compatible(saved_identity: Mapping[str, Any], store_identity: Mapping[str, Any]) -> None:
    """Raise OffshelfError if a store's features are not the kind a probe was fitted on."""
    check_identity(store_identity, saved_identity, "the probe was fitted on features ({expected}) but the store "
                   "holds ({found}); they differ in {differ}", OffshelfError)


def _json_param(value: Any) -> Any:
    return np.asarray(value).tolist() if isinstance(value, (tuple, list, np.ndarray)) else value


def save_probe(probe: LinearProbe, directory: str | Path, store_identity: Mapping[str, Any], *,
               overwrite: bool = False) -> Path:
    """Save a fitted probe and the identity of the store its features came from (arrays + JSON, no pickle),
    as one unit; an existing probe at `directory` is replaced only with `overwrite`."""
    check_is_fitted(probe)
    missing = [name for name in IDENTITY_FIELDS if name not in store_identity]
    if missing:
        raise OffshelfError(f"store identity lacks {', '.join(missing)}")
    if store_identity["dim"] != probe.n_features_in_:
        raise OffshelfError(f"the probe takes {probe.n_features_in_}-d features, the store has {store_identity['dim']}")
    post_steps, arrays = pipeline_to_bundle(probe.post_, prefix="post") if probe.post_ is not None else (None, {})
    arrays.update(
        coef=probe.coef_, intercept=probe.intercept_, classes=probe.classes_, C=probe.C_,
        cv_Cs=probe.cv_results_["Cs"], cv_mean_score=probe.cv_results_["mean_score"],
    )
    meta = {
        "kind": PROBE_KIND,
        "format": PROBE_FORMAT,
        "params": {k: _json_param(v) for k, v in probe.get_params().items()},
        "multilabel": probe.multilabel_,
        "n_features_in": probe.n_features_in_,
        "post": post_steps,
        "cv_scoring": probe.cv_results_["scoring"],
        "cv_score": probe.cv_score_,
        "store": full_identity(store_identity),
    }
    return save_bundle(directory, meta, arrays, overwrite=overwrite)


def load_probe(directory: str | Path) -> tuple[LinearProbe, dict[str, Any]]:
    """`(probe, store identity)` saved by `save_probe`; OffshelfError naming `directory` if it is incomplete or
    its parts do not fit together."""
    meta, arrays = load_bundle(directory, kind=PROBE_KIND)
    if meta.get("format") != PROBE_FORMAT:
        raise OffshelfError(f"{directory} holds a probe of format {meta.get('format')}; expected {PROBE_FORMAT}")
    try:
        probe = LinearProbe(**{k: tuple(v) if isinstance(v, list) else v for k, v in meta["params"].items()})
        probe.multilabel_ = bool(meta["multilabel"])
        probe.n_features_in_ = meta["n_features_in"]
        probe.post_ = None if meta["post"] is None else pipeline_from_bundle(meta["post"], arrays, prefix="post")
        probe.coef_, probe.intercept_, probe.classes_, probe.C_ = (
            arrays["coef"], arrays["intercept"], arrays["classes"], arrays["C"],
        )
        probe.cv_results_ = {"scoring": meta["cv_scoring"], "Cs": arrays["cv_Cs"],
                             "mean_score": arrays["cv_mean_score"]}
        probe.cv_score_ = meta["cv_score"]
        identity = full_identity(meta["store"])
        if probe.coef_.ndim != 2 or not probe.coef_.shape[1] == probe.n_features_in_ == identity["dim"]:
            raise ValueError(f"coef has shape {probe.coef_.shape} for {probe.n_features_in_}-d features "
                             f"of dim {identity['dim']}")
        probe.decision_function(np.ones((1, probe.coef_.shape[1])))  # every saved part fits the others
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, OffshelfError) as exc:
        raise OffshelfError(f"incomplete or inconsistent probe at {directory}: {type(exc).__name__}: {exc}") from None
    return probe, identity
