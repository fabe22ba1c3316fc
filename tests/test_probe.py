"""Linear probes: the VOC-style protocol on synthetic data, saving without pickle, labels, and real CNN features."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.base import clone
from sklearn.datasets import make_classification, make_multilabel_classification
from sklearn.metrics import accuracy_score
from sklearn.model_selection import cross_val_score
from sklearn.preprocessing import StandardScaler, normalize
from sklearn.svm import LinearSVC

from offshelf import FeatureStore, embed
from offshelf.errors import OffshelfError
from offshelf.images import real_photos
from offshelf.probe import (
    LinearProbe,
    align_labels,
    check_compatible,
    evaluate,
    labels_from_folders,
    load_probe,
    read_labels_csv,
    save_probe,
)

IDENTITY = {"model": "synthetic", "layer": "x", "pool": "none", "augment": "none", "dim": 24}


@pytest.fixture(scope="module")
def multiclass() -> tuple[np.ndarray, np.ndarray]:
    """4 classes in 24-d with 8 informative features; 240 training + 160 test items."""
    X, y = make_classification(400, 24, n_informative=8, n_redundant=4, n_classes=4, class_sep=1.5, random_state=1)
    return X.astype(np.float32), np.array(["cat", "dog", "car", "sky"])[y]


@pytest.fixture(scope="module")
def multilabel() -> tuple[np.ndarray, list[list[str]]]:
    X, Y = make_multilabel_classification(300, 24, n_classes=4, n_labels=2, random_state=2)
    names = np.array(["a", "b", "c", "d"])
    return X.astype(np.float32), [names[row.astype(bool)].tolist() for row in Y]


@pytest.fixture(scope="module")
def svm(multiclass: tuple[np.ndarray, np.ndarray]) -> LinearProbe:
    X, y = multiclass
    return LinearProbe(post=("power", "l2", "standardize")).fit(X[:240], y[:240])


def test_svm_beats_chance_and_records_per_class_cross_validation(
    svm: LinearProbe, multiclass: tuple[np.ndarray, np.ndarray]
) -> None:
    X, y = multiclass
    assert svm.classes_.tolist() == ["car", "cat", "dog", "sky"]
    assert svm.score(X[240:], y[240:]) > 0.6 and svm.cv_score_["accuracy"] > 0.6  # chance is 0.25
    Cs = svm.cv_results_["Cs"]
    assert svm.cv_results_["scoring"] == "AP" and svm.cv_results_["mean_score"].shape == (4, len(Cs))
    np.testing.assert_array_equal(svm.C_, Cs[svm.cv_results_["mean_score"].argmax(axis=1)])
    assert svm.cv_score_["mAP"] > 0.6 and set(svm.cv_score_["per_class"]) == {"car", "cat", "dog", "sky"}
    assert np.sum(svm.cv_score_["confusion"]["matrix"]) == 240


def test_post_processing_and_refit_equal_a_manual_pipeline(
    svm: LinearProbe, multiclass: tuple[np.ndarray, np.ndarray]
) -> None:
    X, y = multiclass
    powered = normalize(np.sign(X) * np.sqrt(np.abs(X.astype(np.float64))))
    Z = StandardScaler().fit(powered[:240]).transform(powered)
    np.testing.assert_allclose(svm.decision_function(X), Z @ svm.coef_.T + svm.intercept_, rtol=1e-10, atol=1e-10)
    for c, label in enumerate(svm.classes_):
        manual = LinearSVC(C=svm.C_[c], class_weight={1: 2, -1: 1}, dual="auto", max_iter=10_000, random_state=0)
        manual.fit(Z[:240], np.where(y[:240] == label, 1, -1))
        np.testing.assert_allclose(svm.coef_[c], manual.coef_[0], rtol=1e-8, atol=1e-10)


def test_logreg_multinomial_probabilities(multiclass: tuple[np.ndarray, np.ndarray]) -> None:
    X, y = multiclass
    probe = LinearProbe(method="logreg", Cs=(0.1, 1.0, 10.0)).fit(X[:240], y[:240])
    proba = probe.predict_proba(X[240:])
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    np.testing.assert_array_equal(probe.classes_[proba.argmax(axis=1)], probe.predict(X[240:]))
    assert accuracy_score(y[240:], probe.predict(X[240:])) > 0.6
    assert probe.cv_results_["scoring"] == "accuracy" and probe.cv_results_["mean_score"].shape == (1, 3)
    assert len(set(probe.C_)) == 1
    assert not hasattr(LinearProbe(method="svm"), "predict_proba")


def test_sklearn_conventions(svm: LinearProbe, multiclass: tuple[np.ndarray, np.ndarray]) -> None:
    X, y = multiclass
    assert clone(svm).get_params() == svm.get_params()
    assert not hasattr(clone(svm), "coef_")
    scores = cross_val_score(LinearProbe(Cs=(1.0,), cv=2), X[:150], y[:150], cv=3)
    assert scores.mean() > 0.5


def test_views_are_summed(svm: LinearProbe, multiclass: tuple[np.ndarray, np.ndarray]) -> None:
    X, _ = multiclass
    rng = np.random.default_rng(0)
    views = X[:20, None, :] + rng.normal(0, 0.3, (20, 5, X.shape[1])).astype(np.float32)
    summed = sum(svm.decision_function(views[:, v]) for v in range(5))
    np.testing.assert_allclose(svm.decision_function(views), summed, rtol=1e-10)
    np.testing.assert_array_equal(svm.predict(views), svm.classes_[summed.argmax(axis=1)])
    with pytest.raises(OffshelfError, match="expected descriptors"):
        svm.decision_function(X[:, :5])


@pytest.mark.parametrize("method", ["svm", "logreg"])
def test_multilabel(method: str, multilabel: tuple[np.ndarray, list[list[str]]]) -> None:
    X, labels = multilabel
    probe = LinearProbe(method=method, Cs=(0.1, 1.0)).fit(X[:200], labels[:200])
    assert probe.multilabel_ and probe.classes_.tolist() == ["a", "b", "c", "d"]
    predicted = probe.predict(X[200:])
    assert all(isinstance(p, tuple) for p in predicted)
    np.testing.assert_array_equal(
        [len(p) for p in predicted], (probe.decision_function(X[200:]) > 0).sum(axis=1)
    )
    report = evaluate(probe, X[200:], labels[200:])
    prevalence = np.mean([["a", "b", "c", "d"][c] in t for t in labels[200:] for c in range(4)])
    assert report["mAP"] > prevalence + 0.2 and "confusion" not in report
    assert probe.cv_results_["mean_score"].shape == (4, 2)
    if method == "logreg":
        np.testing.assert_array_equal(probe.predict_proba(X[200:]) > 0.5, probe.decision_function(X[200:]) > 0)


def test_indicator_targets_match_label_lists(multilabel: tuple[np.ndarray, list[list[str]]]) -> None:
    X, labels = multilabel
    indicator = np.array([[name in t for name in "abcd"] for t in labels], dtype=int)
    from_lists = LinearProbe(Cs=(1.0,)).fit(X, labels)
    from_indicator = LinearProbe(Cs=(1.0,)).fit(X, indicator)
    assert from_indicator.classes_.tolist() == [0, 1, 2, 3]
    np.testing.assert_allclose(from_indicator.decision_function(X), from_lists.decision_function(X))


def test_evaluate_is_json_ready(svm: LinearProbe, multiclass: tuple[np.ndarray, np.ndarray]) -> None:
    X, y = multiclass
    truth = y[240:].astype("<U8")
    truth[0] = "unseen"
    report = json.loads(json.dumps(evaluate(svm, X[240:], truth), allow_nan=False))
    assert report["accuracy"] == pytest.approx(accuracy_score(truth, svm.predict(X[240:])))
    assert report["confusion"]["labels"] == ["car", "cat", "dog", "sky", "unseen"]
    assert np.sum(report["confusion"]["matrix"]) == 160 and report["n"] == 160
    assert 0 < report["mAP_voc11"] <= 1 and set(report["per_class"]) == {"car", "cat", "dog", "sky"}
    with pytest.raises(OffshelfError, match="one label per item"):
        evaluate(svm, X[:2], [["car"], ["cat"]])


def test_refuses_bad_input(multiclass: tuple[np.ndarray, np.ndarray]) -> None:
    X, y = multiclass
    with pytest.raises(OffshelfError, match="class 'rare' has 2"):
        LinearProbe().fit(X[:50], np.r_[y[:48], ["rare", "rare"]])
    with pytest.raises(OffshelfError, match="method"):
        LinearProbe(method="knn").fit(X, y)
    with pytest.raises(OffshelfError, match="post-processing"):
        LinearProbe(post=("l3",)).fit(X, y)
    with pytest.raises(OffshelfError, match="2 classes|more classes"):
        LinearProbe().fit(X, ["one"] * len(X))


SCRIPT = """
import sys, numpy as np
from offshelf.probe import load_probe
probe, identity = load_probe(sys.argv[1])
np.save(sys.argv[3], probe.decision_function(np.load(sys.argv[2])))
"""


@pytest.mark.parametrize("kind", ["multiclass", "multilabel"])
def test_save_load_round_trip_in_a_fresh_process(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    X, y = request.getfixturevalue(kind)
    probe = LinearProbe(post=("power", "l2", "standardize"), Cs=(0.1, 1.0)).fit(X, y)
    save_probe(probe, tmp_path / "probe", IDENTITY)
    np.save(tmp_path / "x.npy", X)
    subprocess.run(
        [sys.executable, "-c", textwrap.dedent(SCRIPT), str(tmp_path / "probe"), str(tmp_path / "x.npy"),
         str(tmp_path / "out.npy")],
        check=True,
    )
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), probe.decision_function(X))
    loaded, identity = load_probe(tmp_path / "probe")
    assert identity == {**IDENTITY, "precision": "fp32", "calibration": ""}  # fp32: what a probe without it means
    assert loaded.get_params() == probe.get_params()
    assert loaded.cv_score_ == probe.cv_score_ and loaded.multilabel_ == probe.multilabel_
    np.testing.assert_array_equal(loaded.cv_results_["mean_score"], probe.cv_results_["mean_score"])
    np.testing.assert_array_equal(loaded.C_, probe.C_)
    assert evaluate(loaded, X, y) == evaluate(probe, X, y)


def test_store_identity_is_checked(svm: LinearProbe, tmp_path: Path) -> None:
    with pytest.raises(OffshelfError, match="the store has 1280"):
        save_probe(svm, tmp_path / "p", {**IDENTITY, "dim": 1280})
    with pytest.raises(OffshelfError, match="lacks pool"):
        save_probe(svm, tmp_path / "p", {k: v for k, v in IDENTITY.items() if k != "pool"})
    check_compatible(IDENTITY, dict(IDENTITY))
    other = {**IDENTITY, "layer": "block5", "pool": "gem"}
    with pytest.raises(OffshelfError, match=r"layer=x, pool=none.*layer=block5, pool=gem.*differ in layer, pool"):
        check_compatible(IDENTITY, other)
    with pytest.raises(OffshelfError, match="not a 'probe'|nothing saved"):
        load_probe(tmp_path / "missing")


# -- labels ---------------------------------------------------------------------------------------

def test_labels_csv_multilabel_and_relative_paths(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    csv_file = tmp_path / "sub" / "labels.csv"
    absolute = tmp_path / "abs.jpg"
    rows = ["path,label,note", "img/a.jpg,cat,x", "img/a.jpg,pet,", "img/b.jpg,car,", f"{absolute},sky,",
            "img/a.jpg,cat,"]
    csv_file.write_text("\n".join(rows) + "\n")
    labels = read_labels_csv(csv_file)
    a, b = str((tmp_path / "sub/img/a.jpg").resolve()), str((tmp_path / "sub/img/b.jpg").resolve())
    assert labels == {a: ["cat", "pet"], b: ["car"], str(absolute.resolve()): ["sky"]}


@pytest.mark.parametrize(
    ("content", "message"),
    [("", "empty"), ("path,label\n", "no rows"), ("file,label\nx.jpg,a\n", "lacks column.*path"),
     ("path,label\nx.jpg,\n", "line 2")],
)
def test_labels_csv_errors(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / "l.csv").write_text(content)
    with pytest.raises(OffshelfError, match=message):
        read_labels_csv(tmp_path / "l.csv")
    with pytest.raises(OffshelfError, match="cannot read"):
        read_labels_csv(tmp_path / "missing.csv")


def test_labels_from_folders_and_alignment(tmp_path: Path) -> None:
    store_paths = [str(tmp_path / d / f"{i}.jpg") for d in ("cats", "dogs") for i in range(3)]
    labels = labels_from_folders(store_paths[1:])
    assert labels[store_paths[1]] == ["cats"] and labels[store_paths[5]] == ["dogs"]
    rows, y, unlabeled = align_labels(store_paths, labels)
    np.testing.assert_array_equal(rows, [1, 2, 3, 4, 5])
    assert y.tolist() == ["cats", "cats", "dogs", "dogs", "dogs"] and unlabeled == 1
    rows, y, _ = align_labels(store_paths, {store_paths[0]: ["cats", "pet"], store_paths[3]: ["dogs"]})
    assert rows.tolist() == [0, 3] and y == [("cats", "pet"), ("dogs",)]
    with pytest.raises(OffshelfError, match="none of the 6 items"):
        align_labels(store_paths, {"/elsewhere/x.jpg": ["a"]})


# -- real CNN features ------------------------------------------------------------------------------

def _crops(photo: Path, folder: Path, n: int, seed: int) -> None:
    """`n` random crops (40-70% of each side) of one photo, as small JPEGs in `folder`."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    with Image.open(photo) as opened:
        image = opened.convert("RGB")
    for i in range(n):
        w, h = (int(side * rng.uniform(0.4, 0.7)) for side in image.size)
        x, y = int(rng.integers(0, image.width - w)), int(rng.integers(0, image.height - h))
        image.crop((x, y, x + w, y + h)).resize((160, 160)).save(folder / f"{i}.jpg", quality=90)


def test_probe_on_real_cnn_features(tmp_path: Path) -> None:
    photos = {p.name: p for p in real_photos()}
    for seed, name in enumerate(("chelsea.png", "coffee.png", "motorcycle_left.png")):
        _crops(photos[name], tmp_path / "images" / name.split(".")[0], 10, seed)
    embed([tmp_path / "images"], tmp_path / "store", progress=False)
    store = FeatureStore.open(tmp_path / "store")
    _, paths, X = store.vectors()
    rows, y, unlabeled = align_labels(paths, labels_from_folders(paths))
    probe = LinearProbe(cv=3).fit(X[rows], y)
    assert unlabeled == 0 and len(rows) == 30
    assert probe.cv_score_["accuracy"] >= 0.9 and probe.cv_score_["mAP"] >= 0.9
    save_probe(probe, tmp_path / "probe", store.config.identity())
    loaded, identity = load_probe(tmp_path / "probe")
    check_compatible(identity, store.config.identity())
    np.testing.assert_array_equal(loaded.predict(X[rows]), probe.predict(X[rows]))
