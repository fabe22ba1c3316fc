"""`offshelf evaluate`: cross-validated probes and leave-one-out retrieval, checked against independent references.

The real-image tests embed 48 Open Clip Art drawings (4 classes x 12) with the default model twice (global
average and global max pooling), once per module.
"""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import make_classification
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.multiclass import OneVsRestClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import Normalizer, StandardScaler, label_binarize
from sklearn.svm import LinearSVC
from threadpoolctl import threadpool_limits

from benchmarks.datasets import openclipart
from offshelf import embed
from offshelf.cli import main
from offshelf.errors import OffshelfError
from offshelf.evaluate import evaluate_features, evaluate_stores, plot_results, retrieval_map
from offshelf.probe import LinearProbe
from offshelf.probe import evaluate as probe_evaluate
from offshelf.store import FeatureStore, FileState, StoreConfig

CLASSES = ("bugs", "fruit", "hardware", "homes")
PER_CLASS = 12
REQUIRED_KEYS = {"name", "model", "layer", "pool", "accuracy", "mAP", "retrieval_mAP"}


# -- fixtures -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def clipart(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder per class holding the first 12 drawings of 4 Open Clip Art classes."""
    root = tmp_path_factory.mktemp("clipart") / "images"
    taken: dict[str, int] = {}
    data = openclipart()
    for path, label in zip(data.paths, data.labels):
        if label in CLASSES and taken.get(label, 0) < PER_CLASS:
            taken[label] = taken.get(label, 0) + 1
            (root / label).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, root / label / path.name)
    assert taken == dict.fromkeys(CLASSES, PER_CLASS)
    return root


@pytest.fixture(scope="module")
def stores(clipart: Path) -> dict[str, Path]:
    """efficientnet-lite0 stores of the drawings, head layer, pooled by GAP (the default) and by GMP."""
    out = {"gap": clipart.parent / "store-gap", "gmp": clipart.parent / "store-gmp"}
    embed([clipart], out["gap"], progress=False)
    embed([clipart], out["gmp"], pool="gmp", progress=False)
    return out


def run(capsys: pytest.CaptureFixture[str], *args: Any) -> tuple[int, str, str]:
    code = main(["evaluate", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def sorted_images(root: Path) -> list[Path]:
    return sorted((p.resolve() for p in root.rglob("*.png")), key=str)


# -- evaluate_features against references ----------------------------------------------------------------

def _brute_force_retrieval_map(X: np.ndarray, targets: list[set[str]]) -> float:
    """Mean over queries (with a relevant item) of sklearn's AP of cosine similarity to every other item."""
    Z = X / np.linalg.norm(X, axis=1, keepdims=True)
    similarity = Z @ Z.T
    aps = []
    for q in range(len(X)):
        others = np.arange(len(X)) != q
        relevant = np.array([bool(targets[q] & targets[j]) for j in range(len(X))])[others]
        if relevant.any():
            aps.append(average_precision_score(relevant, similarity[q, others]))
    return float(np.mean(aps))


def test_retrieval_map_equals_sklearn_ap_per_query() -> None:
    X, codes = make_classification(61, 16, n_informative=6, n_classes=3, random_state=4)
    y = np.array(["a", "b", "c"])[codes]
    y[0] = "alone"  # a query without any relevant item: left out of the mean
    expected = _brute_force_retrieval_map(X, [{label} for label in y])
    assert retrieval_map(X, y) == pytest.approx(expected, abs=1e-6)
    assert retrieval_map(X, y, block=7) == pytest.approx(expected, abs=1e-6)  # several blocks, ragged last one
    assert 0.3 < expected < 0.95  # informative, far from both chance and perfect


def test_retrieval_map_multilabel_counts_any_shared_label() -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 12))
    names = ["x", "y", "z"]
    y = [tuple(sorted({names[i % 3], names[int(rng.integers(3))]})) for i in range(40)]
    X[:, :3] += 2 * np.array([[name in labels for name in names] for labels in y])
    assert retrieval_map(X, y, block=9) == pytest.approx(_brute_force_retrieval_map(X, [set(t) for t in y]), abs=1e-6)


@pytest.fixture(scope="module")
def blobs() -> tuple[np.ndarray, np.ndarray]:
    X, codes = make_classification(120, 20, n_informative=6, n_classes=4, class_sep=2.0, random_state=2)
    return X, np.array(["car", "cat", "dog", "sky"])[codes]


def test_fixed_c_fold_scores_equal_sklearn_cross_validation(blobs: tuple[np.ndarray, np.ndarray]) -> None:
    """With a one-value C grid the probe is a fixed pipeline: L2 then one-vs-rest LinearSVC weighting positives 2:1."""
    X, y = blobs
    result = evaluate_features(X, y, folds=4, seed=3, Cs=(0.5,))
    reference = make_pipeline(Normalizer(), OneVsRestClassifier(
        LinearSVC(C=0.5, class_weight={0: 1.0, 1: 2.0}, dual="auto", max_iter=10_000, random_state=3)))
    splits = StratifiedKFold(4, shuffle=True, random_state=3)
    expected = cross_val_score(reference, X, y, cv=splits)
    np.testing.assert_allclose(result["fold_accuracy"], expected, atol=1e-12)
    assert result["accuracy"] == pytest.approx(expected.mean())
    assert result["accuracy_std"] == pytest.approx(expected.std())
    fold_map = []
    for train, test in splits.split(X, y):
        scores = reference.fit(X[train], y[train]).decision_function(X[test])
        fold_map.append(average_precision_score(label_binarize(y[test], classes=sorted(set(y))), scores))
    np.testing.assert_allclose(result["fold_mAP"], fold_map, atol=1e-9)
    assert result["mAP"] == pytest.approx(np.mean(fold_map))
    assert result["retrieval_mAP"] == pytest.approx(_brute_force_retrieval_map(X, [{label} for label in y]), abs=1e-6)
    assert (result["n"], result["folds"], result["classes"]) == (120, 4, ["car", "cat", "dog", "sky"])


def test_c_is_chosen_without_the_test_fold(blobs: tuple[np.ndarray, np.ndarray]) -> None:
    X, y = blobs
    result = evaluate_features(X, y, folds=4, seed=1)
    splits = list(StratifiedKFold(4, shuffle=True, random_state=1).split(X, y))
    for k, (train, test) in enumerate(splits):  # each fold's probe is the one fitted on its training part alone
        probe = LinearProbe(cv=3, random_state=1).fit(X[train], y[train])
        assert result["fold_C"][k] == probe.C_.tolist()
        assert result["fold_accuracy"][k] == pytest.approx(probe_evaluate(probe, X[test], y[test])["accuracy"])
    # Destroying the first test fold's features changes its score but not the C chosen for it.
    noisy = X.copy()
    noisy[splits[0][1]] = np.random.default_rng(0).normal(scale=5.0, size=(len(splits[0][1]), X.shape[1]))
    changed = evaluate_features(noisy, y, folds=4, seed=1)
    assert changed["fold_C"][0] == result["fold_C"][0]
    assert changed["fold_accuracy"][0] < result["fold_accuracy"][0] - 0.2
    assert result["accuracy"] > 0.6  # chance is 0.25


def test_multilabel_targets_use_plain_folds() -> None:
    rng = np.random.default_rng(5)
    names = ["p", "q", "r"]
    y = [tuple(sorted({names[i % 3], names[(i * 7) % 3] if i % 4 == 0 else names[i % 3]})) for i in range(60)]
    X = rng.normal(size=(60, 10)) + 3 * np.array([[name in labels for name in names] + [0] * 7 for labels in y])
    result = evaluate_features(X, y, folds=3)
    assert result["multilabel"] is True and result["classes"] == names and len(result["fold_C"]) == 3
    assert result["mAP"] > 0.8 and result["retrieval_mAP"] > 0.6


def test_small_classes_are_named(blobs: tuple[np.ndarray, np.ndarray]) -> None:
    X, y = blobs
    y = y.astype("<U8")
    y[:2] = "rare"
    with pytest.raises(OffshelfError, match="class 'rare' has 2 labelled items, fewer than the 5 cross-validation"):
        evaluate_features(X, y, folds=5)
    with pytest.raises(OffshelfError, match="class 'rare' has 1 items in a training fold"):
        evaluate_features(X, y, folds=2)  # enough for the folds, too few to choose C inside a training fold
    with pytest.raises(OffshelfError, match="at least 2 classes"):
        evaluate_features(X, np.full(len(X), "one"), folds=5)
    with pytest.raises(OffshelfError, match="120 feature vectors but 119 labels"):
        evaluate_features(X, y[1:])


# -- stores and the CLI on real images -------------------------------------------------------------------

def raw_pixels(path: Path) -> np.ndarray:
    """The drawing on white, 32 x 32 RGB, in [0, 1]: written here with Pillow alone, as an independent baseline."""
    with Image.open(path) as opened:
        rgba = opened.convert("RGBA")
    image = Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba).convert("RGB")
    return np.asarray(image.resize((32, 32), Image.Resampling.BILINEAR), dtype=np.float64).ravel() / 255


def test_cnn_store_beats_raw_pixel_logistic_regression(
    capsys: pytest.CaptureFixture[str], clipart: Path, stores: dict[str, Path]
) -> None:
    code, out, err = run(capsys, stores["gap"], "--labels-from-folders", "--json", "--quiet")
    assert code == 0, err
    [row] = json.loads(out)
    paths = sorted_images(clipart)  # the items, in the order evaluate uses: sorted by path
    labels = np.array([p.parent.name for p in paths])
    pixels = np.stack([raw_pixels(p) for p in paths])
    folds = StratifiedKFold(5, shuffle=True, random_state=0)
    logistic = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
    with threadpool_limits(1):  # tiny fits: BLAS threads only contend (25 s instead of 1 s on 2 busy cores)
        raw = cross_val_score(logistic, pixels, labels, cv=folds)
    assert (row["n"], row["folds"], row["classes"]) == (48, 5, sorted(CLASSES))
    assert (row["model"], row["layer"], row["pool"]) == ("efficientnet-lite0", "head", "gap")
    assert row["accuracy"] > raw.mean() + 0.15, (row["accuracy"], raw.mean())
    assert row["accuracy"] > 0.7 and row["mAP"] > 0.8 and row["retrieval_mAP"] > 1 / len(CLASSES) + 0.2


def test_cli_two_stores_and_baselines_json(
    capsys: pytest.CaptureFixture[str], stores: dict[str, Path]
) -> None:
    code, out, err = run(capsys, stores["gap"], stores["gmp"], "--labels-from-folders", "--baselines", "raw,hog",
                         "--folds", "3", "--json", "--quiet")
    assert code == 0, err
    assert err == ""  # --quiet: no progress
    rows = json.loads(out)
    assert [row["name"] for row in rows] == [str(stores["gap"]), str(stores["gmp"]), "raw_pixels", "hog"]
    assert [(row["model"], row["layer"], row["pool"]) for row in rows] == [
        ("efficientnet-lite0", "head", "gap"), ("efficientnet-lite0", "head", "gmp"),
        ("raw_pixels", None, None), ("hog", None, None),
    ]
    for row in rows:
        assert REQUIRED_KEYS <= set(row), row.keys()
        assert (row["n"], row["folds"], len(row["fold_accuracy"]), row["classes"]) == (48, 3, 3, sorted(CLASSES))
        assert all(0 <= row[key] <= 1 for key in ("accuracy", "mAP", "retrieval_mAP"))
        assert row["accuracy_std"] >= 0 and row["seconds"] > 0
    assert [row["dim"] for row in rows] == [1280, 1280, 3072, 8100]
    assert rows[0]["retrieval_mAP"] != rows[1]["retrieval_mAP"]  # two different features, not one read twice
    assert rows[0]["unlabeled"] == 0 and rows[0]["skipped"] == 0


def test_cli_table_and_plot(capsys: pytest.CaptureFixture[str], stores: dict[str, Path], tmp_path: Path) -> None:
    plot = tmp_path / "evaluate.png"
    code, out, err = run(capsys, stores["gap"], "--labels-from-folders", "--plot", plot)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("48 items, 4 classes; 5-fold cross-validated linear probe")
    assert lines[1].split()[:4] == ["name", "model", "layer", "pool"] and "retrieval mAP" in lines[1]
    assert lines[2].split()[:4] == [str(stores["gap"]), "efficientnet-lite0", "head", "gap"]
    assert lines[-1] == f"plot -> {plot}"
    assert "item/s" in err  # progress with a rate on stderr
    with Image.open(plot) as image:
        assert image.format == "PNG" and image.width >= 600 and image.height >= 400
        assert len(np.unique(np.asarray(image.convert("L")))) > 10  # drawn, not blank
    assert plot.stat().st_size > 10_000


def _labels_csv(path: Path, images: list[Path], keep: dict[str, int]) -> Path:
    """`path,label` rows (paths relative to the CSV) for the first `keep[class]` images of each class."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label"])
        taken: dict[str, int] = {}
        for image in images:
            label = image.parent.name
            if taken.get(label, 0) < keep.get(label, 0):
                taken[label] = taken.get(label, 0) + 1
                writer.writerow([f"images/{label}/{image.name}", label.upper()])
    return path


def test_cli_labels_csv_ignores_unlabelled_items(
    capsys: pytest.CaptureFixture[str], clipart: Path, stores: dict[str, Path]
) -> None:
    labels = _labels_csv(clipart.parent / "labels.csv", sorted_images(clipart), {"bugs": 12, "fruit": 10, "homes": 12})
    code, out, err = run(capsys, stores["gap"], "--labels", labels, "--json", "--quiet", "--folds", "4")
    assert code == 0, err
    [row] = json.loads(out)
    assert (row["n"], row["unlabeled"], row["classes"]) == (34, 14, ["BUGS", "FRUIT", "HOMES"])
    code, out, _ = run(capsys, stores["gap"], "--labels", labels, "--quiet", "--folds", "4")
    assert code == 0 and "14 unlabeled items ignored" in out


def test_cli_too_few_items_in_a_class_exits_2(
    capsys: pytest.CaptureFixture[str], clipart: Path, stores: dict[str, Path]
) -> None:
    labels = _labels_csv(clipart.parent / "few.csv", sorted_images(clipart), {"bugs": 12, "fruit": 3, "homes": 12})
    code, out, err = run(capsys, stores["gap"], "--labels", labels, "--json", "--quiet")
    assert code == 2 and out == ""
    assert err.strip() == ("offshelf: error: class 'FRUIT' has 3 labelled items, fewer than the 5 cross-validation "
                           "folds (use fewer folds or label more images)")
    code, _, err = run(capsys, stores["gap"], "--labels-from-folders", "--baselines", "sift", "--quiet")
    assert code == 2 and "unknown baseline 'sift'" in err


# -- item alignment across stores, without a model -------------------------------------------------------

def _vector(path: str, label: str) -> np.ndarray:
    """A deterministic vector per path: its class's direction plus noise seeded by the path."""
    seed = int.from_bytes(hashlib.sha256(path.encode()).digest()[:4], "big")
    direction = np.zeros(8)
    direction[CLASSES.index(label)] = 1.0
    return direction + 0.8 * np.random.default_rng(seed).normal(size=8)


def _synthetic_store(root: Path, paths: list[str]) -> FeatureStore:
    store = FeatureStore.open_or_create(root, StoreConfig("synthetic", "x", "none", "none", 8))
    rows = store.new_rows()
    for path in paths:
        label = Path(path).parent.name
        rows.add(path, FileState("0" * 64, 0, 0), _vector(path, label if label in CLASSES else "bugs"))
    with store.writer() as writer:
        writer.commit(rows)
    return store


def test_stores_are_compared_on_the_same_items(clipart: Path, tmp_path: Path) -> None:
    images = [str(p) for p in sorted_images(clipart) if p.parent.name != "homes"]  # 36 readable drawings
    missing = str(clipart / "fruit" / "gone.png")  # labelled and stored, but no file: baselines cannot read it
    extra = str(tmp_path / "elsewhere.png")  # stored without a label
    a = _synthetic_store(tmp_path / "a", [*images, missing])
    b = _synthetic_store(tmp_path / "b", [*images[2:], missing, extra])  # lacks two items that "a" has
    labels = {path: [Path(path).parent.name] for path in [*images, missing]}

    rows = evaluate_stores([a, b], labels, folds=3, progress=False)
    assert [(r["n"], r["unlabeled"], r["skipped"]) for r in rows] == [(35, 0, 2), (35, 1, 0)]
    same = ("accuracy", "mAP", "retrieval_mAP", "fold_accuracy", "fold_C")
    assert [rows[0][k] for k in same] == [rows[1][k] for k in same]  # the same vectors of the same items, aligned
    expected = sorted([*images[2:], missing])
    X = np.stack([_vector(p, Path(p).parent.name) for p in expected])
    assert rows[0]["retrieval_mAP"] == pytest.approx(
        _brute_force_retrieval_map(X, [{Path(p).parent.name} for p in expected]), abs=1e-6)

    rows = evaluate_stores([a, b], labels, baselines=["colour"], folds=3, progress=False)
    assert [(r["name"], r["n"]) for r in rows] == [(str(a.root), 34), (str(b.root), 34), ("color_histogram", 34)]
    assert rows[0]["skipped"] == 3 and rows[2]["layer"] is None

    with pytest.raises(OffshelfError, match="no labelled item is present in all 2 stores"):
        evaluate_stores([a, _synthetic_store(tmp_path / "c", [extra])], {**labels, extra: ["bugs"]}, progress=False)
    with pytest.raises(OffshelfError, match="unknown baseline 'sift'"):
        evaluate_stores([a], labels, baselines=["sift"], progress=False)


def test_plot_needs_matplotlib(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    row = {"name": "s", "model": "m", "layer": "l", "pool": "gap", "accuracy": 0.5, "accuracy_std": 0.1, "mAP": 0.6,
           "retrieval_mAP": 0.4, "n": 10, "classes": ["a", "b"], "folds": 2}
    assert plot_results([row], tmp_path / "ok.png").stat().st_size > 1000
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if it were not installed
    with pytest.raises(OffshelfError, match="plotting needs matplotlib: pip install matplotlib"):
        plot_results([row], tmp_path / "no.png")
    assert not (tmp_path / "no.png").exists()
