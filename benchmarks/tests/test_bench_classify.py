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
    assert json.loads((out / "paper_table.json").read_text()) == json.loads(json.dumps(result))
    assert (out / "paper_table.md").read_text() == result["summary"]
    assert not list(out.glob(".tmp-*")) and not (out / "classify_sweep.json").exists()


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
        assert aug["reported"] in ("mean_of_views", "sum_of_scores")
        assert aug["accuracy"] == aug[aug["reported"]]["accuracy"]
        assert aug["accuracy"] == max(aug["mean_of_views"]["accuracy"], aug["sum_of_scores"]["accuracy"])
        assert f"{MODEL}/plain+power" in task["extra"]
    seconds = result["seconds"]
    assert seconds["total"] > 0
    assert {"data", "baselines", "embed", "fit", "report"} <= set(seconds["by_kind"])
    assert any(name.startswith("embed/openclipart/") for name in seconds["stages"])
    found = result["findings"]["fashion-mnist"]
    assert {"best_baseline", "best_cnn", "cnn_beats_every_baseline", "augmented_ge_plain"} <= set(found)


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
        assert values[-1][-1] in "Σμ"  # augmented cells say which test-time combination is reported
    assert "## mAP (%)" in result["summary"]


def test_cnn_beats_raw_pixels(quick: tuple[Path, dict[str, Any]]) -> None:
    _, result = quick
    for task in result["tasks"].values():
        cells = task["cells"]
        assert cells[f"{MODEL}/plain"]["accuracy"] > cells["raw_pixels"]["accuracy"], task["title"]
        assert cells[f"{MODEL}/augmented"]["accuracy"] > cells["raw_pixels"]["accuracy"], task["title"]


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
