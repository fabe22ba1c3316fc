"""The retrieval benchmark in quick mode: files, structure, sane numbers; and its scoring helpers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks.harness.retrieval_eval import dense_ranks, list_ranks, summarize_ranks
from offshelf.images.copies import COPY_FAMILIES
from offshelf.metrics import mean_average_precision_ranked

FAMILIES = {"crop", "scale", "rotation", "jpeg", "colour", "blur", "text"}


def test_rank_helpers_match_ranked_ap() -> None:
    rng = np.random.default_rng(0)
    database = rng.standard_normal((50, 8)).astype(np.float32)
    queries = rng.standard_normal((20, 8)).astype(np.float32)
    truth = rng.integers(0, 50, 20)
    ranks = dense_ranks(queries, database, truth)
    order = np.argsort(-(queries @ database.T), axis=1)
    mAP, per_query = mean_average_precision_ranked([{t} for t in truth], order)
    np.testing.assert_allclose(1.0 / ranks, per_query)
    np.testing.assert_allclose(list_ranks(order, truth), ranks)
    assert list_ranks(order[:, :3], truth)[ranks > 3].tolist() == [np.inf] * int((ranks > 3).sum())
    summary = summarize_ranks(ranks, ["a"] * 10 + ["b"] * 10, ["1"] * 5 + ["2"] * 15)
    assert summary["mAP"] == pytest.approx(mAP)
    assert set(summary["families"]) == {"a", "b"} and set(summary["families"]["b"]["strengths"]) == {"2"}


def test_copy_families_are_deterministic(photos) -> None:
    from PIL import Image

    with Image.open(photos[0]) as im:
        image = im.convert("RGB")
    assert set(COPY_FAMILIES) == FAMILIES and all(len(edits) == 4 for edits in COPY_FAMILIES.values())
    for edits in COPY_FAMILIES.values():
        for edit in edits:
            a, b = edit.apply(image, "x"), edit.apply(image, "x")
            assert a.mode == "RGB" and np.array_equal(np.asarray(a), np.asarray(b)), edit.key


@pytest.mark.slow
def test_quick_run(tmp_path: Path) -> None:
    from benchmarks.copy_detection import run_retrieval

    result = run_retrieval(tmp_path, models=("efficientnet-lite0",), quick=True, progress=False)
    for name in ("copy_detection.json", "copy_detection.md", "class_retrieval.json", "class_retrieval.md",
                 "bytes_vs_map.json", "bytes_vs_map.md", "bytes_vs_map.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    copy = json.loads((tmp_path / "copy_detection.json").read_text())
    methods = copy["methods"]
    for name, m in methods.items():
        assert 0.0 <= m["mAP"] <= 1.0 and 0.0 <= m["recall_at_1"] <= 1.0, name
        assert set(m["families"]) == FAMILIES, name
        assert all(0.0 <= f["mAP"] <= 1.0 for f in m["families"].values())
    for expected in ("raw pixels", "colour histogram", "efficientnet-lite0 GAP", "efficientnet-lite0 GAP + pipeline",
                     "efficientnet-lite0 R-MAC", "efficientnet-lite0 GeM"):
        assert expected in methods
    assert any("AQE" in n for n in methods) and any("DBA" in n for n in methods)
    assert any("spatial search" in n for n in methods)
    assert methods["efficientnet-lite0 GAP"]["mAP"] > methods["raw pixels"]["mAP"]
    assert methods["efficientnet-lite0 GAP + pipeline"]["mAP"] > methods["raw pixels"]["mAP"]
    assert copy["protocol"]["n_queries"] == copy["methods"]["raw pixels"]["queries"]

    classes = json.loads((tmp_path / "class_retrieval.json").read_text())["methods"]
    assert all(0.0 <= m["mAP"] <= 1.0 for m in classes.values())
    assert {"raw pixels", "efficientnet-lite0 GAP", "efficientnet-lite0 GAP + pipeline"} <= set(classes)

    codes = json.loads((tmp_path / "bytes_vs_map.json").read_text())
    kinds = {row["kind"] for row in codes["rows"]}
    assert {"float", "float16", "pq", "binary", "binary+rerank"} <= kinds
    assert all(0.0 <= row["mAP"] <= 1.0 and row["code_bytes"] > 0 for row in codes["rows"])
    assert codes["goal"] is not None and isinstance(codes["goal"]["met"], bool)
    assert result["seconds"]["total"] > 0 and all(v >= 0 for v in result["seconds"].values())
