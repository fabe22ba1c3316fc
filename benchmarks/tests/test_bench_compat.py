"""The backward-compatibility benchmark: its scoring against independent references, its criteria, a
synthetic upgrade whose answer is known (a rotated model), and the quick run through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import ortho_group
from sklearn.metrics import average_precision_score

from benchmarks.compat import Features, Task, criteria, evaluate_pair, map_fidelity, pairs_needed, sizes_for
from benchmarks.harness.retrieval_eval import class_retrieval_scores
from offshelf.vectors import l2_normalize


def test_class_retrieval_across_two_galleries_matches_sklearn() -> None:
    """Queries from one space against the same images in another: AP per query by sklearn, self excluded."""
    rng = np.random.default_rng(0)
    labels = np.repeat(["a", "b", "c"], 7)
    queries = rng.standard_normal((21, 5))
    gallery = rng.standard_normal((21, 5))
    scores = class_retrieval_scores(queries, list(labels), gallery)
    expected = []
    for q in range(21):
        others = np.arange(21) != q
        expected.append(average_precision_score(labels[others] == labels[q], (queries[q] @ gallery.T)[others]))
    assert scores["mAP"] == pytest.approx(np.mean(expected))
    assert scores["mAP"] != pytest.approx(class_retrieval_scores(queries, list(labels))["mAP"])


def test_criteria_and_pairs_needed() -> None:
    assert criteria(0.90, 0.85, 0.95)["both"] is True
    below_old = criteria(0.80, 0.85, 0.85)
    assert not below_old["at_least_old_old"] and below_old["at_least_90pct_new_new"] and not below_old["both"]
    assert criteria(0.80, 0.70, 0.95)["fraction_of_new_new"] == pytest.approx(0.80 / 0.95)
    assert sizes_for(100, (2, 10, 50, 100, 500)) == [10, 50, 100]
    curve = [{"method": "m", "n_pairs": n, "seed": s, "copy_mAP": v, "class_mAP": v / 2}
             for n, values in ((10, (0.5, 0.7)), (50, (0.8, 0.9)), (100, (0.95,))) for s, v in enumerate(values)]
    needed = pairs_needed(curve, ["m"], {"copy": (0.8, 1.0), "class": (0.45, 0.5)})
    assert needed["m"]["copy"] == {"at_least_old_old": 50, "at_least_90pct_new_new": 100}
    assert needed["m"]["class"] == {"at_least_old_old": 100, "at_least_90pct_new_new": 100}


def _synthetic_upgrade(seed: int = 0) -> tuple[Features, Features, Task]:
    """An 'old' model of clustered 32-d vectors; the 'new' model is an exact rotation of it (plus a little
    noise): a map fitted on enough pairs must make the new queries as good against the old gallery as the
    old ones are, and the unmapped new queries must be far worse."""
    rng = np.random.default_rng(seed)
    dim, n_classes = 32, 4
    centres = rng.standard_normal((n_classes, dim)) * 0.4

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = rng.integers(0, n_classes, n)
        return centres[labels] + rng.standard_normal((n, dim)), labels

    originals, _ = draw(10)
    queries = np.repeat(originals, 3, axis=0) + 0.9 * rng.standard_normal((30, dim))
    distractors, _ = draw(200)
    class_images, class_labels = draw(40)
    rotation = ortho_group.rvs(dim, random_state=seed)
    noise = np.random.default_rng(seed + 1)

    def model(x: np.ndarray, rotate: bool) -> np.ndarray:
        return l2_normalize(((x @ rotation) + 0.01 * noise.standard_normal(x.shape)) if rotate else x)

    old = Features(*(model(x, False) for x in (originals, queries, distractors, class_images)))
    new = Features(*(model(x, True) for x in (originals, queries, distractors, class_images)))
    task = Task(np.repeat(np.arange(10), 3), ["f"] * 30, ["1"] * 30, [str(c) for c in class_labels])
    return old, new, task


def test_a_rotated_model_is_fully_compatible_through_procrustes() -> None:
    old, new, task = _synthetic_upgrade()
    result = evaluate_pair(old, new, task, ["procrustes", "linear", "relative"], sizes=(8, 50), repeats=2,
                           log=lambda _: None)
    ref = result["reference"]
    assert ref["new_new"]["copy"]["mAP"] == pytest.approx(ref["old_old"]["copy"]["mAP"], abs=0.02)
    assert ref["identity"]["class"]["mAP"] < ref["old_old"]["class"]["mAP"] - 0.1  # not comparable as is
    full = result["full_pool"]["procrustes"]
    for bench in ("copy", "class"):
        assert full[bench]["mAP"] == pytest.approx(ref["old_old"][bench]["mAP"], abs=0.02), bench
        assert result["criteria"]["procrustes"][bench]["fraction_of_new_new"] > 0.97
    sizes = sorted({r["n_pairs"] for r in result["curve"]})
    assert sizes == [8, 50, 200] and result["pool"] == 200
    assert len([r for r in result["curve"] if r["n_pairs"] == 8]) == 3 * 2  # 3 methods x 2 seeds
    few = np.mean([r["class_mAP"] for r in result["curve"] if r["n_pairs"] == 8 and r["method"] == "procrustes"])
    assert few < full["class"]["mAP"]  # 8 pairs cannot determine a 32-d rotation
    # a rotation is the same on every image: the fitted map carries over to all sets (cosine ~1; the 0.01
    # noise of each model costs a little), while a model that is not a rotation of the old one does not
    fidelity = result["fidelity"]
    assert fidelity["n_train"] == 160 and fidelity["sets"]["copy queries"] == 30
    assert min(fidelity["procrustes"]["mean_cosine"].values()) > 0.99

    unrelated = Features(*(l2_normalize(np.abs(np.random.default_rng(5).standard_normal(x.shape)))
                           for x in (new.originals, new.queries, new.distractors, new.class_images)))
    assert max(map_fidelity(old, unrelated, ["procrustes"])["procrustes"]["mean_cosine"].values()) < 0.5


@pytest.mark.slow
def test_quick_run_through_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks.compat import main

    assert main(["--quick", "--json", "--no-progress", "--out", str(tmp_path)]) == 0
    printed = json.loads(capsys.readouterr().out)
    for name in ("compat.json", "compat.md", "compat.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    doc = json.loads((tmp_path / "compat.json").read_text())
    assert doc["pairs"] == printed["pairs"]
    assert [(p["old"], p["new"]) for p in doc["pairs"]] == [("efficientnet-lite0", "efficientnet-lite2"),
                                                             ("open-nsfw-resnet", "efficientnet-lite0")]
    for pair in doc["pairs"]:
        assert set(pair["full_pool"]) == {"procrustes", "linear", "mlp", "relative"}
        for scores in [*pair["reference"].values(), *pair["full_pool"].values()]:
            assert 0 < scores["copy"]["mAP"] <= 1 and 0 < scores["class"]["mAP"] <= 1
        assert isinstance(pair["goal"]["met"], bool)
    lite = doc["pairs"][0]
    assert lite["dims"] == {"old": 1280, "new": 1280} and "identity" in lite["reference"]
    assert doc["pairs"][1]["dims"] == {"old": 1024, "new": 1280} and "identity" not in doc["pairs"][1]["reference"]
    # a fitted map beats swapping the model without one
    assert lite["full_pool"]["procrustes"]["copy"]["mAP"] > lite["reference"]["identity"]["copy"]["mAP"]
    text = (tmp_path / "compat.md").read_text()
    assert "M(old, old)" in text and "Training pairs needed" in text
