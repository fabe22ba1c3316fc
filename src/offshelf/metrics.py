"""Evaluation metrics for classification and retrieval, in plain numpy (checked against scikit-learn in tests).

Conventions:

* `average_precision(..., variant="auc")` is scikit-learn's `average_precision_score`: the step-wise area
  under the precision-recall curve, sum over thresholds of (R_n - R_{n-1}) * P_n, where tied scores form one
  threshold. `variant="voc11"` is PASCAL VOC 2007's 11-point interpolated AP: the mean over t in
  {0, 0.1, ..., 1} of the best precision at recall >= t, on the same tie-aware curve; the thresholds are the
  correctly rounded t/10 (so a recall of exactly 3/10 counts for t = 0.3, unlike `np.arange(0, 1.1, 0.1)`).
* A class (or retrieval query) without any positive has an undefined AP: it is `nan` in per-class/per-query
  results and left out of the mean. The mean of nothing but `nan` is `nan`. No warning is emitted.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any, Literal

import numpy as np

APVariant = Literal["auc", "voc11"]
AP_VARIANTS: tuple[str, ...] = ("auc", "voc11")


def accuracy(y_true: Sequence[Any] | np.ndarray, y_pred: Sequence[Any] | np.ndarray) -> float:
    """Fraction of predictions equal to the truth (rows of 2-D inputs must match entirely)."""
    true, pred = np.asarray(y_true), np.asarray(y_pred)
    if true.shape != pred.shape:
        raise ValueError(f"y_true and y_pred differ in shape: {true.shape} vs {pred.shape}")
    if true.size == 0:
        raise ValueError("accuracy of an empty set is undefined")
    equal = true == pred
    return float(equal.reshape(len(equal), -1).all(axis=1).mean())


def json_float(value: float) -> float | None:
    """A metric for a JSON report: None where it is undefined (nan), else a plain float."""
    return None if np.isnan(value) else float(value)


def mean_defined(values: np.ndarray) -> float:
    """Mean of the non-nan entries; nan if there are none (the rule for mAP over classes or queries)."""
    defined = values[~np.isnan(values)]
    return float(defined.mean()) if defined.size else float("nan")


def _binary(y_true: Sequence[Any] | np.ndarray, scores: Sequence[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    truth, values = np.asarray(y_true), np.asarray(scores, dtype=np.float64)
    if truth.ndim != 1 or truth.shape != values.shape:
        raise ValueError(f"expected two 1-D arrays of one length, got shapes {truth.shape} and {values.shape}")
    if not np.isin(truth, (0, 1)).all():
        raise ValueError("y_true must be binary (0/1 or bool)")
    return truth.astype(bool), values


def _pr_curve(truth: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`(precision, recall)` at every distinct score, from the highest down (ties are one threshold).

    `truth` is a bool array with at least one positive.
    """
    order = np.argsort(values, kind="mergesort")[::-1]
    values, truth = values[order], truth[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(values)), len(values) - 1]
    true_positives = np.cumsum(truth)[last_of_tie]
    precision = true_positives / (last_of_tie + 1)
    recall = true_positives / true_positives[-1]
    return precision, recall


def average_precision(
    y_true: Sequence[Any] | np.ndarray, scores: Sequence[float] | np.ndarray, variant: APVariant = "auc"
) -> float:
    """AP of ranking by `scores` (higher = more likely positive) for binary `y_true`; nan without positives."""
    if variant not in AP_VARIANTS:
        raise ValueError(f"unknown AP variant {variant!r}; choose from {', '.join(AP_VARIANTS)}")
    truth, values = _binary(y_true, scores)
    if not truth.any():
        return float("nan")
    precision, recall = _pr_curve(truth, values)
    if variant == "auc":
        return float(np.sum(np.diff(recall, prepend=0.0) * precision))
    thresholds = np.arange(11) / 10
    best = [precision[recall >= t].max(initial=0.0) for t in thresholds]
    return float(np.mean(best))


def mean_average_precision(
    Y_true: np.ndarray, scores: np.ndarray, variant: APVariant = "auc"
) -> tuple[float, np.ndarray]:
    """`(mAP, per-class AP)` for a binary indicator matrix `Y_true (n, C)` and `scores (n, C)`."""
    truth, values = np.asarray(Y_true), np.asarray(scores, dtype=np.float64)
    if truth.ndim != 2 or truth.shape != values.shape:
        raise ValueError(f"expected two (n, C) arrays of one shape, got {truth.shape} and {values.shape}")
    per_class = np.array([average_precision(truth[:, c], values[:, c], variant) for c in range(truth.shape[1])])
    return mean_defined(per_class), per_class


def confusion_matrix(
    y_true: Sequence[Any] | np.ndarray, y_pred: Sequence[Any] | np.ndarray, labels: Sequence[Any] | None = None
) -> np.ndarray:
    """Counts `M[i, j]` of items of true label `labels[i]` predicted as `labels[j]` (scikit-learn's layout).

    `labels` defaults to the sorted union of both inputs; pairs involving other labels are not counted.
    """
    true, pred = np.asarray(y_true), np.asarray(y_pred)
    if true.ndim != 1 or true.shape != pred.shape:
        raise ValueError(f"expected two 1-D arrays of one length, got shapes {true.shape} and {pred.shape}")
    chosen = np.unique(np.r_[true, pred]) if labels is None else np.asarray(labels)
    index = {label: i for i, label in enumerate(chosen.tolist())}
    matrix = np.zeros((len(chosen), len(chosen)), dtype=np.int64)
    for t, p in zip(true.tolist(), pred.tolist()):
        if t in index and p in index:
            matrix[index[t], index[p]] += 1
    return matrix


def recall_at_k(ranked_ids: np.ndarray, true_ids: Sequence[Any] | np.ndarray, k: int) -> float:
    """Fraction of queries whose true neighbour `true_ids[q]` is among the first `k` of `ranked_ids[q]`.

    `ranked_ids` is `(n_queries, >= k)`, best first (e.g. the `I` of a FAISS search); with exact nearest
    neighbours as `true_ids` this is FAISS's "1-recall@k".
    """
    ranked, truth = np.asarray(ranked_ids), np.asarray(true_ids)
    if ranked.ndim != 2 or len(ranked) != len(truth) or truth.ndim != 1:
        raise ValueError(f"expected ranked ids (n, k) and true ids (n,), got {ranked.shape} and {truth.shape}")
    if not 1 <= k <= ranked.shape[1]:
        raise ValueError(f"k must be in 1..{ranked.shape[1]}, got {k}")
    return float((ranked[:, :k] == truth[:, None]).any(axis=1).mean())


def ranked_average_precision(relevant: Collection[Any], ranked: Sequence[Any] | np.ndarray) -> float:
    """Non-interpolated AP of one ranked result list against the set of relevant ids.

    The sum of precision@r over the ranks r holding a relevant id, divided by the number of relevant ids:
    relevant ids that were not returned count as missed. A repeated id counts at its first rank only.
    nan if `relevant` is empty.
    """
    wanted = np.asarray(list(set(relevant)))
    if wanted.size == 0:
        return float("nan")
    returned = np.asarray(ranked)
    _, first = np.unique(returned, return_index=True)
    returned = returned[np.sort(first)]
    hit = np.isin(returned, wanted)
    ranks = np.flatnonzero(hit) + 1
    return float(np.sum(np.arange(1, len(ranks) + 1) / ranks) / wanted.size)


def mean_average_precision_ranked(
    relevant: Sequence[Collection[Any]], ranked: Sequence[Sequence[Any]] | np.ndarray
) -> tuple[float, np.ndarray]:
    """Retrieval `(mAP, per-query AP)`: `relevant[q]` is the set of ids relevant to query q, `ranked[q]` the
    ids returned for it, best first. Queries without relevant ids are nan and left out of the mean."""
    if len(relevant) != len(ranked):
        raise ValueError(f"{len(relevant)} relevance sets for {len(ranked)} rankings")
    per_query = np.array([ranked_average_precision(r, q) for r, q in zip(relevant, ranked)], dtype=np.float64)
    return mean_defined(per_query), per_query
