"""`python -m benchmarks.classify` in quick mode: files, table structure, JSON keys, CNN above raw pixels.

The quick run reuses the default `$OFFSHELF_HOME` so its stores and caches are shared with other runs (the
first run ever embeds ~200 small images x 16 views; later runs only fit); results go to a temporary folder.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from benchmarks.classify import (
    CS,
    QUICK_CS,
    QUICK_OPENCLIPART_PER_CLASS,
    _per_class_prefix,
    fit_svm,
    main,
    run_classify,
)
from benchmarks.datasets import openclipart
from benchmarks.harness.classify_cache import cached_array, compute_view_features
from offshelf.errors import OffshelfError
from offshelf.extract import Embedder, make_config
from offshelf.models import get_model_spec

pytest.importorskip("matplotlib")

MODEL = "efficientnet-lite0"
BASELINES = ["raw_pixels", "color_histogram", "hog", "lbp"]
COLUMNS = BASELINES + [f"{MODEL}/plain", f"{MODEL}/augmented"]


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("classify")
    return out, run_classify(out, quick=True, progress=False)


def test_files_are_written(quick: tuple[Path, dict[str, Any]]) -> None:
    out, result = quick
    for name in ("paper_table.md", "paper_table.json", "paper_table.png"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "paper_table.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result["files"] == {kind: str(out / f"paper_table.{kind}") for kind in ("md", "json", "png")}
    assert not list(out.glob(".tmp-*")) and not (out / "classify_sweep.json").exists()


def _table_rows(text: str, title: str) -> list[list[str]]:
    """The cells (title row left out) of the task rows of the first table after the line `title`."""
    lines = text.splitlines()
    start = lines.index(title) if title else 0
    header = next(i for i in range(start, len(lines)) if lines[i].startswith("| task |"))
    rows = []
    for line in lines[header + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    return rows


def test_markdown_file_holds_the_json_files_numbers(quick: tuple[Path, dict[str, Any]]) -> None:
    """Both tables of paper_table.md (accuracy, mAP) show the numbers of paper_table.json, in %, to 0.1, with
    the augmented column's mode mark, and bold exactly on each row's best value."""
    out, _ = quick
    saved = json.loads((out / "paper_table.json").read_text())
    text = (out / "paper_table.md").read_text()
    marks = {"sum_of_scores": "Σ", "mean_of_views": "μ"}
    for title, metric in (("", "accuracy"), ("## mAP (%)", "mAP")):
        rows = _table_rows(text, title)
        assert [row[0] for row in rows] == [task["title"] for task in saved["tasks"].values()]
        for row, task in zip(rows, saved["tasks"].values()):
            assert row[1] == f"{task['n_train']} / {task['n_test']}"
            values = [task["cells"][key][metric] for key in COLUMNS]
            expected = []
            for key, value in zip(COLUMNS, values):
                text_value = f"{100 * value:.1f}" + (marks[task["cells"][key]["reported"]] if "augmented" in key else "")
                expected.append(f"**{text_value}**" if value == max(values) else text_value)
            assert row[2:] == expected, (metric, task["title"])


def test_json_keys(quick: tuple[Path, dict[str, Any]]) -> None:
    _, result = quick
    for key in ("benchmark", "quick", "models", "metric", "protocol", "columns", "tasks", "findings",
                "paper_reference", "seconds", "files", "machine", "summary"):
        assert key in result, key
    assert result["quick"] is True and result["models"] == [MODEL] and result["metric"] == "accuracy"
    assert [c["key"] for c in result["columns"]] == COLUMNS
    assert result["protocol"]["C_grid"] == list(QUICK_CS)
    assert set(result["tasks"]) == {"fashion-mnist", "openclipart"}
    for task in result["tasks"].values():
        assert task["n_train"] > 0 and task["n_test"] > 0
        assert set(task["cells"]) == set(COLUMNS)
        for cell in task["cells"].values():
            assert 0.0 <= cell["accuracy"] <= 1.0 and 0.0 <= cell["mAP"] <= 1.0
            assert cell["C"] in QUICK_CS and set(cell["cv_accuracy_by_C"]) == {f"{c:g}" for c in QUICK_CS}
            assert cell["n_train"] == task["n_train"] and cell["n_test"] == task["n_test"]
        aug = task["cells"][f"{MODEL}/augmented"]
        assert aug["views"] == 16 and aug["post"] == ["l2", "power"]
        # the reported combination is fixed in advance (never chosen on the test split)
        assert aug["reported"] == "mean_of_views"
        assert aug["accuracy"] == aug["mean_of_views"]["accuracy"] and aug["mAP"] == aug["mean_of_views"]["mAP"]
        assert f"{MODEL}/plain+power" in task["extra"]
    seconds = result["seconds"]
    assert seconds["total"] > 0
    assert {"data", "baselines", "embed", "fit", "report"} <= set(seconds["by_kind"])
    assert any(name.startswith("embed/openclipart/") for name in seconds["stages"])
    for key, task in result["tasks"].items():  # the findings say what the cells hold
        cells, found = task["cells"], result["findings"][key]
        bar = max(cells[b]["accuracy"] for b in BASELINES)
        assert found["best_baseline"]["accuracy"] == bar == cells[found["best_baseline"]["column"]]["accuracy"]
        assert found["best_cnn"]["accuracy"] == max(cells[c]["accuracy"] for c in COLUMNS[len(BASELINES):])
        assert found["cnn_beats_every_baseline"] == {c: cells[c]["accuracy"] > bar for c in COLUMNS[len(BASELINES):]}
        assert found["augmented_ge_plain"] == {
            MODEL: cells[f"{MODEL}/augmented"]["accuracy"] >= cells[f"{MODEL}/plain"]["accuracy"]}


def test_table_structure(quick: tuple[Path, dict[str, Any]]) -> None:
    _, result = quick
    lines = result["summary"].splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| task |"))
    cells = [c.strip() for c in lines[header].strip("|").split("|")]
    assert cells == ["task", "train / test", "raw pixels", "colour hist.", "HOG", "LBP", "lite0 plain", "lite0 aug"]
    rows = lines[header + 2 : header + 4]
    assert [r.split("|")[1].strip() for r in rows] == ["Fashion-MNIST", "Open Clip Art"]
    for row, task in zip(rows, result["tasks"].values()):
        values = [c.strip().strip("*") for c in row.strip("|").split("|")][2:]
        assert len(values) == len(COLUMNS)
        assert float(values[0]) == pytest.approx(100 * task["cells"]["raw_pixels"]["accuracy"], abs=0.051)
        assert values[-1][-1] == "μ"  # augmented cells report the mean of views
    assert "## mAP (%)" in result["summary"]


def test_cnn_beats_raw_pixels(quick: tuple[Path, dict[str, Any]]) -> None:
    _, result = quick
    for task in result["tasks"].values():
        cells = task["cells"]
        assert cells[f"{MODEL}/plain"]["accuracy"] > cells["raw_pixels"]["accuracy"], task["title"]
        assert cells[f"{MODEL}/augmented"]["accuracy"] > cells["raw_pixels"]["accuracy"], task["title"]


def test_counts_are_the_items_built(quick: tuple[Path, dict[str, Any]]) -> None:
    """Train/test counts are the per-class quotas times the classes; every confusion matrix holds each test
    image once, in its true row, and its trace is the reported accuracy; mAP is the mean of the per-class APs."""
    from benchmarks.classify import QUICK_FASHION_MNIST_PER_CLASS

    _, result = quick
    quotas = {"fashion-mnist": (QUICK_FASHION_MNIST_PER_CLASS, 10), "openclipart": (QUICK_OPENCLIPART_PER_CLASS, 6)}
    for key, task in result["tasks"].items():
        (n_train, n_test), n_classes = quotas[key]
        assert (task["n_train"], task["n_test"], len(task["classes"])) == (n_train * n_classes, n_test * n_classes,
                                                                           n_classes)
        for name, cell in [*task["cells"].items(), *task["extra"].items()]:
            reports = [cell] if "confusion" in cell else [cell["mean_of_views"], cell["sum_of_scores"]]
            for report in reports:
                matrix = np.array(report["confusion"]["matrix"])
                assert report["confusion"]["labels"] == task["classes"], (key, name)
                assert matrix.sum(axis=1).tolist() == [n_test] * n_classes, (key, name)
                assert report["accuracy"] == pytest.approx(np.trace(matrix) / matrix.sum(), abs=1e-12), (key, name)
                assert len(report["per_class"]) == n_classes
                assert report["mAP"] == pytest.approx(np.mean(list(report["per_class"].values())), abs=1e-12)


def _independent_metrics(scores: np.ndarray, classes: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(top-1 accuracy, mean over classes of scikit-learn's one-vs-rest AP) of class scores."""
    from sklearn.metrics import average_precision_score

    accuracy = float(np.mean(classes[scores.argmax(axis=1)] == y))
    return accuracy, float(np.mean([average_precision_score(y == c, scores[:, i]) for i, c in enumerate(classes)]))


def test_cells_recomputed_from_the_cached_features(quick: tuple[Path, dict[str, Any]]) -> None:
    """Refit the raw-pixel, plain and augmented cells on the features the run cached, score the test split
    by hand (argmax accuracy, scikit-learn AP; the 16 views' scores summed view by view) and compare."""
    from benchmarks.classify import AUGMENTED_POST, BASELINE_POST, PLAIN_POST, make_tasks
    from benchmarks.harness.classify_cache import baseline_features, store_features, view_features

    _, result = quick
    for task in make_tasks(quick=True):
        y, train = task.labels, task.split("train")
        cells = result["tasks"][task.key]["cells"]
        X_raw, cached = baseline_features(task.key, "raw_pixels", task.data.paths, progress=False)
        assert cached
        X_plain = store_features(task.key, task.data.paths, model=MODEL, progress=False)
        for name, X, post in (("raw_pixels", X_raw, BASELINE_POST), (f"{MODEL}/plain", X_plain, PLAIN_POST)):
            probe, fit = fit_svm(X[train], y[train], post, QUICK_CS)
            assert fit["C"] == cells[name]["C"], (task.key, name)
            accuracy, mAP = _independent_metrics(probe.decision_function(X[~train]), probe.classes_, y[~train])
            assert cells[name]["accuracy"] == pytest.approx(accuracy, abs=1e-12), (task.key, name)
            assert cells[name]["mAP"] == pytest.approx(mAP, abs=1e-9), (task.key, name)

        X_aug = store_features(task.key, task.paths("train"), model=MODEL, augment="paper", progress=False)
        views, cached = view_features(task.key, task.paths("test"), model=MODEL, progress=False)
        assert cached and views.shape[:2] == (int((~train).sum()), 16)
        probe, fit = fit_svm(X_aug, y[train], AUGMENTED_POST, QUICK_CS)
        aug = cells[f"{MODEL}/augmented"]
        assert fit["C"] == aug["C"]
        summed = sum(probe.decision_function(views[:, v]) for v in range(views.shape[1]))
        for mode, scores in (("mean_of_views", probe.decision_function(views.mean(axis=1))),
                             ("sum_of_scores", summed)):
            accuracy, mAP = _independent_metrics(scores, probe.classes_, y[~train])
            assert aug[mode]["accuracy"] == pytest.approx(accuracy, abs=1e-12), (task.key, mode)
            assert aug[mode]["mAP"] == pytest.approx(mAP, abs=1e-9), (task.key, mode)
        # view 0 of augment="paper" is the whole image, decoded as for the plain store (PNG files: no
        # draft-mode reduction), so its descriptor is the plain one (measured: bit-identical; the tolerance only
        # allows float32 rounding of values up to ~6 if ONNX Runtime batches differently)
        np.testing.assert_allclose(views[:, 0], X_plain[~train], rtol=0, atol=1e-5)


def test_trivially_separable_cells() -> None:
    """Well separated clusters get accuracy and mAP 1; identical views make both augmented test modes the plain
    cell with the same post-processing."""
    from benchmarks.classify import AUGMENTED_POST, augmented_cell, plain_cell

    rng = np.random.default_rng(3)
    codes = np.repeat(np.arange(3), 20)
    y = np.array(["a", "b", "c"])[codes]
    train = np.tile(np.arange(20) < 14, 3)
    easy = 10 * np.eye(3, 8)[codes] + 0.1 * rng.normal(size=(60, 8))
    cell = plain_cell(easy, y, train, ("l2",), QUICK_CS)
    assert (cell["accuracy"], cell["mAP"], cell["n_test"]) == (1.0, 1.0, 18)

    noisy = rng.normal(size=(3, 8))[codes] + 1.5 * rng.normal(size=(60, 8))
    plain = plain_cell(noisy, y, train, AUGMENTED_POST, QUICK_CS)
    assert 0.4 < plain["accuracy"] < 1.0  # not a trivial case
    views = np.repeat(noisy[~train][:, None, :], 16, axis=1)
    aug = augmented_cell(noisy[train], y[train], views, y[~train], QUICK_CS)
    for mode in ("mean_of_views", "sum_of_scores"):
        assert aug[mode]["accuracy"] == plain["accuracy"], mode
        assert aug[mode]["mAP"] == pytest.approx(plain["mAP"], abs=1e-12), mode
    assert aug["reported"] == "mean_of_views" and aug["views"] == 16


def test_quick_openclipart_subset() -> None:
    data = _per_class_prefix(openclipart(), *QUICK_OPENCLIPART_PER_CLASS)
    counts = Counter(zip(data.labels, data.split))
    assert set(counts.values()) <= set(QUICK_OPENCLIPART_PER_CLASS) and len(counts) == 12


def test_view_features_mean_is_the_store_descriptor() -> None:
    """The cached per-view features, averaged, are what a store with augment="paper" holds for an image."""
    paths = openclipart().paths[:2]
    config = make_config(get_model_spec(MODEL), None, None, "paper")
    views = compute_view_features(paths, config, progress=False)
    assert views.shape == (2, 16, config.dim)
    np.testing.assert_allclose(views.mean(axis=1), Embedder(config).embed_files(paths), rtol=1e-4, atol=1e-5)


def test_fit_svm_chooses_one_c_by_cv() -> None:
    rng = np.random.default_rng(0)
    codes = np.repeat(np.arange(3), 20)
    X = 3 * rng.normal(size=(3, 8))[codes] + rng.normal(size=(60, 8))
    y = np.array(["a", "b", "c"])[codes]
    probe, fit = fit_svm(X, y, ("l2",))
    assert fit["C"] in CS and set(probe.C_.tolist()) == {fit["C"]}
    assert set(fit["cv_accuracy_by_C"]) == {f"{c:g}" for c in CS}
    assert fit["cv_accuracy"] == pytest.approx(max(fit["cv_accuracy_by_C"].values()), abs=1e-4)
    assert fit["cv_accuracy"] > 0.8 and fit["dim"] == 8 and fit["n_train"] == 60


def test_cached_array_computes_once(tmp_path: Path) -> None:
    calls = []

    def compute() -> np.ndarray:
        calls.append(1)
        return np.arange(6, dtype=np.float32).reshape(2, 3)

    first, cached_first = cached_array(tmp_path / "a.npy", compute)
    second, cached_second = cached_array(tmp_path / "a.npy", compute)
    assert (cached_first, cached_second) == (False, True) and len(calls) == 1
    np.testing.assert_array_equal(first, second)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npy", "a.npy.lock"]


def test_main_rejects_bad_options() -> None:
    with pytest.raises(OffshelfError, match="fmnist-per-class"):
        main(["--quick", "--fmnist-per-class", "ten"])
    with pytest.raises(OffshelfError, match="unknown model"):
        main(["--quick", "--models", "no-such-model"])
