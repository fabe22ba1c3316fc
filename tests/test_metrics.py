"""Metrics against scikit-learn (random inputs with ties), an exact VOC07 11-point reference, hand-worked cases."""

from __future__ import annotations

import warnings
from fractions import Fraction

import numpy as np
import pytest
from sklearn import metrics as sk

from offshelf.metrics import (
    accuracy,
    average_precision,
    confusion_matrix,
    mean_average_precision,
    mean_average_precision_ranked,
    recall_at_k,
)

SEEDS = range(25)


def _binary_case(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random labels (at least one positive) and scores with many ties (rounded to 1 decimal for odd seeds)."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 60))
    y = rng.random(n) < rng.uniform(0.05, 0.9)
    y[rng.integers(n)] = True
    scores = rng.normal(size=n)
    return y.astype(int), np.round(scores, 1) if seed % 2 else scores


def _voc11_exact(y: np.ndarray, scores: np.ndarray) -> Fraction:
    """VOC07 11-point AP in exact arithmetic: thresholds t = k/10, precision/recall at every distinct score."""
    positives = int(y.sum())
    points = []
    for threshold in np.unique(scores):
        kept = scores >= threshold
        hits = int(y[kept].sum())
        points.append((Fraction(hits, positives), Fraction(hits, int(kept.sum()))))
    total = Fraction(0)
    for k in range(11):
        total += max((p for r, p in points if r >= Fraction(k, 10)), default=Fraction(0))
    return total / 11


def test_accuracy_matches_sklearn() -> None:
    rng = np.random.default_rng(0)
    y_true, y_pred = rng.choice(["a", "b", "c"], 200), rng.choice(["a", "b", "c"], 200)
    assert accuracy(y_true, y_pred) == pytest.approx(sk.accuracy_score(y_true, y_pred))
    indicator_true, indicator_pred = rng.random((50, 4)) < 0.3, rng.random((50, 4)) < 0.3
    indicator_pred[:20] = indicator_true[:20]
    assert accuracy(indicator_true, indicator_pred) == pytest.approx(sk.accuracy_score(indicator_true, indicator_pred))
    with pytest.raises(ValueError, match=r"^y_true and y_pred differ in shape: \(2,\) vs \(1,\)$"):
        accuracy([1, 2], [1])


@pytest.mark.parametrize("seed", SEEDS)
def test_average_precision_matches_sklearn_including_ties(seed: int) -> None:
    y, scores = _binary_case(seed)
    assert average_precision(y, scores) == pytest.approx(sk.average_precision_score(y, scores), abs=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
def test_voc11_matches_exact_reference(seed: int) -> None:
    y, scores = _binary_case(seed)
    assert average_precision(y, scores, "voc11") == pytest.approx(float(_voc11_exact(y, scores)), abs=1e-12)


def test_hand_worked_example() -> None:
    # ranks 1..6: + - + - - +  -> (recall, precision) = (1/3, 1) (1/3, 1/2) (2/3, 2/3) (2/3, 1/2) (2/3, 2/5) (1, 1/2)
    y, scores = [1, 0, 1, 0, 0, 1], [0.9, 0.8, 0.7, 0.6, 0.5, 0.4]
    assert average_precision(y, scores) == pytest.approx(1 / 3 + 1 / 3 * 2 / 3 + 1 / 3 * 1 / 2)
    # t = 0..0.3 -> 1; t = 0.4..0.6 -> 2/3; t = 0.7..1 -> 1/2
    assert average_precision(y, scores, "voc11") == pytest.approx((4 * 1 + 3 * 2 / 3 + 4 * 1 / 2) / 11)
    # + + + - then 7 +: a recall of exactly 3/10 at precision 1 counts for t = 0.3 (t = 0.4..1 -> 10/11)
    y10 = [1, 1, 1, 0, 1, 1, 1, 1, 1, 1, 1]
    assert average_precision(y10, np.arange(11, 0, -1), "voc11") == pytest.approx((4 + 7 * 10 / 11) / 11)
    assert average_precision([1, 1, 0, 0], [0.5, 0.5, 0.5, 0.5]) == pytest.approx(0.5)  # one tied threshold
    with pytest.raises(ValueError, match="variant"):
        average_precision(y, scores, "trapezoid")  # type: ignore[arg-type]


def test_mean_average_precision_skips_classes_without_positives_silently() -> None:
    rng = np.random.default_rng(3)
    Y = (rng.random((80, 5)) < 0.3).astype(int)
    Y[:, 2] = 0
    scores = np.round(rng.normal(size=(80, 5)), 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mAP, per_class = mean_average_precision(Y, scores)
        all_nan, nothing = mean_average_precision(np.zeros((4, 2)), np.ones((4, 2)), "voc11")
    expected = [sk.average_precision_score(Y[:, c], scores[:, c]) for c in (0, 1, 3, 4)]
    np.testing.assert_allclose(per_class[[0, 1, 3, 4]], expected, atol=1e-12)
    assert np.isnan(per_class[2]) and mAP == pytest.approx(np.mean(expected))
    assert np.isnan(all_nan) and np.isnan(nothing).all()


@pytest.mark.parametrize("seed", range(5))
def test_confusion_matrix_matches_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y_true, y_pred = rng.choice(list("abcd"), 150), rng.choice(list("abcde"), 150)
    np.testing.assert_array_equal(confusion_matrix(y_true, y_pred), sk.confusion_matrix(y_true, y_pred))
    labels = ["d", "a", "z", "b"]
    np.testing.assert_array_equal(
        confusion_matrix(y_true, y_pred, labels), sk.confusion_matrix(y_true, y_pred, labels=labels)
    )


@pytest.mark.parametrize("k", [1, 3, 10])
def test_recall_at_k_matches_sklearn_top_k_accuracy(k: int) -> None:
    rng = np.random.default_rng(k)
    scores = rng.normal(size=(300, 20))
    truth = rng.integers(0, 20, 300)
    ranked = np.argsort(-scores, axis=1)
    expected = sk.top_k_accuracy_score(truth, scores, k=k, labels=np.arange(20))
    assert recall_at_k(ranked, truth, k) == pytest.approx(expected)
    with pytest.raises(ValueError, match=r"^k must be in 1\.\.20, got 21$"):
        recall_at_k(ranked, truth, 21)


@pytest.mark.parametrize("seed", range(10))
def test_ranked_map_matches_sklearn_scaled_by_recall_of_the_list(seed: int) -> None:
    """AP over a truncated ranking = sklearn's AP on the returned list times the fraction of positives returned."""
    rng = np.random.default_rng(seed)
    relevant, ranked, expected = [], [], []
    for _ in range(12):
        positives = set(rng.choice(200, int(rng.integers(1, 15)), replace=False).tolist())
        returned = rng.permutation(200)[: int(rng.integers(20, 201))]
        hit = np.isin(returned, list(positives))
        found = hit.sum()
        ap = sk.average_precision_score(hit, -np.arange(len(returned))) * found / len(positives) if found else 0.0
        relevant.append(positives), ranked.append(returned.tolist()), expected.append(ap)
    relevant.append(set()), ranked.append([1, 2, 3])
    mAP, per_query = mean_average_precision_ranked(relevant, ranked)
    np.testing.assert_allclose(per_query[:-1], expected, atol=1e-12)
    assert np.isnan(per_query[-1]) and mAP == pytest.approx(np.mean(expected))


def test_ranked_ap_hand_worked_with_missed_and_repeated_ids() -> None:
    # relevant {a, b, c}; returned a x a b -> a at rank 1, repeated a dropped, b at rank 3; c never returned
    _, per_query = mean_average_precision_ranked([{"a", "b", "c"}], [["a", "x", "a", "b"]])
    assert per_query[0] == pytest.approx((1 / 1 + 2 / 3) / 3)
