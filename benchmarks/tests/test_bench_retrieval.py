"""The retrieval benchmark in quick mode: its numbers recomputed independently, its tables against its JSON,
relations that must hold; and its scoring helpers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from benchmarks.harness.retrieval_eval import dense_ranks, list_ranks, summarize_ranks
from offshelf.images.copies import COPY_FAMILIES
from offshelf.metrics import mean_average_precision_ranked

FAMILIES = {"crop", "scale", "rotation", "jpeg", "colour", "blur", "text"}
MODEL = "efficientnet-lite0"


def unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def md_rows(text: str, header_start: str) -> dict[str, list[str]]:
    """The rows (first cell -> other cells) of the Markdown table whose header line starts with `header_start`."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        rows[cells[0]] = cells[1:]
    return rows


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
    assert summary["families"]["a"]["mAP"] == pytest.approx(np.mean(1.0 / ranks[:10]))
    assert summary["families"]["b"]["strengths"]["2"]["queries"] == 10
    assert summary["recall_at_10"] == pytest.approx(np.mean(ranks <= 10))


def test_perfect_ranking_and_ties() -> None:
    """Each unit vector queried against the set finds itself first (mAP 1); an exact duplicate of the relevant
    row ties with it and, as documented, counts against the query (rank 2, AP 1/2)."""
    rng = np.random.default_rng(1)
    database = unit(rng.standard_normal((30, 16))).astype(np.float32)
    ranks = dense_ranks(database, database, np.arange(30))
    assert ranks.tolist() == [1] * 30
    perfect = summarize_ranks(ranks, ["f"] * 30, ["s"] * 30)
    assert (perfect["mAP"], perfect["recall_at_1"], perfect["recall_at_10"]) == (1.0, 1.0, 1.0)
    with_copy = np.vstack([database, database[:1]])
    assert dense_ranks(database[:2], with_copy, np.array([0, 1])).tolist() == [2, 1]
    assert summarize_ranks(np.array([2, 1]), ["f", "f"], ["s", "s"])["mAP"] == pytest.approx(0.75)


def test_copy_families_are_deterministic(photos) -> None:
    from PIL import Image

    with Image.open(photos[0]) as im:
        image = im.convert("RGB")
    assert set(COPY_FAMILIES) == FAMILIES and all(len(edits) == 4 for edits in COPY_FAMILIES.values())
    for edits in COPY_FAMILIES.values():
        for edit in edits:
            a, b = edit.apply(image, "x"), edit.apply(image, "x")
            assert a.mode == "RGB" and np.array_equal(np.asarray(a), np.asarray(b)), edit.key


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    from benchmarks.copy_detection import run_retrieval

    out = tmp_path_factory.mktemp("retrieval")
    return out, run_retrieval(out, models=(MODEL,), quick=True, progress=False)


def _copy_scores(queries: np.ndarray, database: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per query (AP by scikit-learn, hit@1), cosine scores; one relevant database row per query."""
    from sklearn.metrics import average_precision_score

    scores = unit(queries) @ unit(database).T
    relevant = np.zeros_like(scores, dtype=bool)
    relevant[np.arange(len(truth)), truth] = True
    ap = np.array([average_precision_score(r, s) for r, s in zip(relevant, scores)])
    others = np.where(relevant, -np.inf, scores)
    hit = scores[np.arange(len(truth)), truth] > others.max(axis=1)
    return ap, hit


@pytest.mark.slow
def test_quick_run_counts(quick: tuple[Path, dict[str, Any]]) -> None:
    """Every count in the JSON equals the number of items the quick protocol builds."""
    from benchmarks.harness.retrieval_data import QUICK

    out, result = quick
    for name in ("copy_detection.json", "copy_detection.md", "class_retrieval.json", "class_retrieval.md",
                 "bytes_vs_map.json", "bytes_vs_map.md"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "bytes_vs_map.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    copy = json.loads((out / "copy_detection.json").read_text())
    proto = copy["protocol"]
    n_orig = QUICK.n_photo_originals + QUICK.n_wallpaper_originals
    per_family = n_orig * len(QUICK.levels)
    n_queries = per_family * len(FAMILIES)
    n_distractors = QUICK.n_clipart + 10 * QUICK.fashion_per_class + QUICK.n_wall_art
    assert (proto["n_originals"], proto["n_queries"], proto["n_distractors"]) == (n_orig, n_queries, n_distractors)
    assert proto["database_size"] == n_orig + n_distractors
    assert proto["distractors"] == {"openclipart": QUICK.n_clipart, "fashion-mnist": 10 * QUICK.fashion_per_class,
                                    "wallpaper-art": QUICK.n_wall_art}
    assert {f: len(s) for f, s in proto["families"].items()} == {f: len(QUICK.levels) for f in FAMILIES}
    expected_methods = {"raw pixels", "colour histogram", f"{MODEL} GAP", f"{MODEL} GAP + pipeline",
                        f"{MODEL} R-MAC", f"{MODEL} R-MAC + pipeline", f"{MODEL} GeM", f"{MODEL} GeM + pipeline"}
    assert expected_methods <= set(copy["methods"])
    assert sum("AQE" in n for n in copy["methods"]) == 2 and sum("DBA" in n for n in copy["methods"]) == 2
    assert sum("spatial search" in n for n in copy["methods"]) == 2
    for name, m in copy["methods"].items():
        assert m["queries"] == n_queries, name
        assert {f: b["queries"] for f, b in m["families"].items()} == {f: per_family for f in FAMILIES}, name
        for block in m["families"].values():
            assert [s["queries"] for s in block["strengths"].values()] == [n_orig] * len(QUICK.levels), name
    classes = json.loads((out / "class_retrieval.json").read_text())
    assert classes["protocol"]["images"] == 6 * QUICK.class_per_category
    assert all(m["queries"] == 6 * QUICK.class_per_category for m in classes["methods"].values())
    assert {"raw pixels", f"{MODEL} GAP", f"{MODEL} GAP + pipeline"} <= set(classes["methods"])
    stages = result["seconds"]
    assert stages["total"] >= max(v for k, v in stages.items() if k != "total") > 0


@pytest.mark.slow
def test_quick_run_metrics_recomputed(quick: tuple[Path, dict[str, Any]]) -> None:
    """Copy-detection and class-retrieval mAP of raw pixels and lite0 GAP, recomputed by brute force with
    scikit-learn's average_precision_score from the same descriptors, equal the reported ones."""
    from sklearn.metrics import average_precision_score

    from benchmarks.copy_detection import embedded_sets
    from benchmarks.harness.retrieval_data import QUICK, class_retrieval_set, copy_detection_set
    from benchmarks.harness.retrieval_eval import baseline_features

    out, _ = quick
    copy = json.loads((out / "copy_detection.json").read_text())["methods"]
    classes = json.loads((out / "class_retrieval.json").read_text())["methods"]
    data = copy_detection_set(QUICK)
    class_paths, class_labels = class_retrieval_set(QUICK)
    truth = np.asarray(data.query_original)
    families = np.array([e.family for e in data.query_edit])
    assert len(truth) == len(data.queries) == copy["raw pixels"]["queries"]

    parts = embedded_sets(data, class_paths, MODEL, "gap", progress=False)
    assert all(present.all() for _, present in parts.values())
    distractors = np.concatenate([parts[f"distractors:{s}"][0] for s in data.distractors])
    n_orig, n_q = len(data.originals), len(data.queries)
    raw_px, _, failed = baseline_features(data.originals + data.queries + data.all_distractors + list(class_paths))
    assert failed == []
    candidates = {
        "raw pixels": (raw_px[n_orig : n_orig + n_q],
                       np.concatenate([raw_px[:n_orig], raw_px[n_orig + n_q : n_orig + n_q + len(distractors)]]),
                       raw_px[n_orig + n_q + len(distractors) :]),
        f"{MODEL} GAP": (parts["queries"][0], np.concatenate([parts["originals"][0], distractors]),
                         parts["class"][0]),
    }
    labels = np.asarray(class_labels)
    for name, (queries, database, class_x) in candidates.items():
        ap, hit = _copy_scores(queries, database, truth)
        reported = copy[name]
        assert reported["mAP"] == pytest.approx(ap.mean(), abs=1e-9), name
        assert reported["recall_at_1"] == pytest.approx(hit.mean(), abs=1e-9), name
        for family, block in reported["families"].items():
            assert block["mAP"] == pytest.approx(ap[families == family].mean(), abs=1e-9), (name, family)

        sims = unit(class_x) @ unit(class_x).T
        expected_ap, top1 = [], []
        for q in range(len(labels)):
            others = np.arange(len(labels)) != q
            expected_ap.append(average_precision_score(labels[others] == labels[q], sims[q, others]))
            top1.append(labels[others][np.argmax(sims[q, others])] == labels[q])
        assert classes[name]["mAP"] == pytest.approx(np.mean(expected_ap), abs=1e-6), name
        assert classes[name]["precision_at_1"] == pytest.approx(np.mean(top1), abs=1e-9), name
    # the CNN finds copies better than raw pixels on this set (measured 0.99 against 0.89)
    assert copy[f"{MODEL} GAP"]["mAP"] > copy["raw pixels"]["mAP"]


@pytest.mark.slow
def test_quick_run_relations(quick: tuple[Path, dict[str, Any]]) -> None:
    """Rows that compute the same thing by different routes agree."""
    out, _ = quick
    methods = json.loads((out / "copy_detection.json").read_text())["methods"]
    codes = json.loads((out / "bytes_vs_map.json").read_text())
    rows = {row["name"]: row for row in codes["rows"]}
    d0, dim = codes["pipeline_dim"], methods[f"{MODEL} GAP"]["dim"]
    # the bytes-vs-mAP float rows are the same vectors as the copy-detection GAP and GAP + pipeline rows
    plain = rows[f"GAP float32 {dim}-d (no post-processing)"]
    assert plain["mAP"] == pytest.approx(methods[f"{MODEL} GAP"]["mAP"], abs=1e-9)
    float_row = rows[f"pipeline float32 {d0}-d"]
    assert float_row["mAP"] == pytest.approx(methods[f"{MODEL} GAP + pipeline"]["mAP"], abs=1e-9)
    assert methods[f"{MODEL} GAP + pipeline"]["dim"] == d0
    assert {"float", "float16", "pq", "binary", "binary+rerank"} <= {row["kind"] for row in codes["rows"]}
    # the database is smaller than the re-ranking depth: re-ranking the whole Hamming list with the float
    # vectors gives back the float ranking, whatever the code length
    assert codes["list_depth"] == methods["raw pixels"]["queries"] and codes["list_depth"] <= codes["rerank_depth"]
    reranked = [row for row in codes["rows"] if row["kind"] == "binary+rerank"]
    assert len(reranked) == 3
    for row in reranked:
        assert row["mAP"] == pytest.approx(float_row["mAP"], abs=1e-9), row["name"]
    for row in codes["rows"]:
        assert row["fraction_of_float_mAP"] == pytest.approx(row["mAP"] / float_row["mAP"]), row["name"]
        if row["kind"] in ("binary", "binary+rerank"):
            assert row["code_bytes"] * 8 == int(row["name"].split(" bits")[0].split()[-1]), row["name"]
            assert row["compression"] == pytest.approx(4 * d0 / row["code_bytes"]), row["name"]
    assert float_row["code_bytes"] == 4 * d0 and rows[f"pipeline float16 {d0}-d"]["code_bytes"] == 2 * d0
    goal = codes["goal"]
    assert goal["binary_row"] == reranked[0]["name"] and reranked[0]["compression"] == 32
    assert goal["fraction"] == pytest.approx(reranked[0]["mAP"] / float_row["mAP"])
    assert goal["met"] == (goal["fraction"] >= 0.9)


@pytest.mark.slow
def test_quick_run_tables_match_json(quick: tuple[Path, dict[str, Any]]) -> None:
    """Every number of the Markdown reports is the JSON's, rounded to 3 decimals."""
    out, _ = quick
    copy = json.loads((out / "copy_detection.json").read_text())["methods"]
    text = (out / "copy_detection.md").read_text()
    families = ["crop", "scale", "rotation", "jpeg", "colour", "blur", "text"]
    table = md_rows(text, "| method | dim | mAP |")
    assert list(table) == list(copy)
    for name, m in copy.items():
        expected = [str(m["dim"]), *(f"{m[k]:.3f}" for k in ("mAP", "recall_at_1", "recall_at_10")),
                    *(f"{m['families'][f]['mAP']:.3f}" for f in families)]
        assert table[name] == expected, name
    recall = md_rows(text, "| method | crop |")
    assert recall == {name: [f"{m['families'][f]['recall_at_1']:.3f}" for f in families] for name, m in copy.items()}

    classes = json.loads((out / "class_retrieval.json").read_text())["methods"]
    table = md_rows((out / "class_retrieval.md").read_text(), "| method | dim | post-processing |")
    assert table == {name: [str(m["dim"]), m["post"], *(f"{m[k]:.3f}" for k in ("mAP", "precision_at_1",
                                                                                  "precision_at_10"))]
                     for name, m in classes.items()}

    codes = json.loads((out / "bytes_vs_map.json").read_text())
    table = md_rows((out / "bytes_vs_map.md").read_text(), "| representation |")
    assert list(table) == [row["name"] for row in codes["rows"]]
    for row in codes["rows"]:
        cells = table[row["name"]]
        assert cells[0] == f"{row['code_bytes']:g}" and cells[3:5] == [f"{row['mAP']:.3f}", f"{row['recall_at_1']:.3f}"]
        assert cells[5] == f"{row['fraction_of_float_mAP']:.1%}", row["name"]
