"""benchmarks.ann_peers on a tiny synthetic run with the real peers: every system measured against its own exact
ground truth, the report written (JSON + Markdown) and its goals judged from the numbers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from benchmarks.ann_peers import goals, parser, run  # the peers usearch and hnswlib are in the test extra


def clustered(n: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = 3 * rng.standard_normal((20, dim))
    return (centers[rng.integers(20, size=n)] + rng.standard_normal((n, dim))).astype(np.float32)


def test_tiny_run_writes_a_report_with_every_system(tmp_path: Path) -> None:
    drawn = clustered(2400, 24, seed=0)
    base, queries = drawn[:2000], drawn[2000:]  # 200 tuning + 200 evaluation queries, held out
    args = parser().parse_args(["--n", "2000", "--queries", "200", "--single", "5", "--out", str(tmp_path),
                                "--usearch", "f32:8:32,i8:8:32", "--hnswlib", "8:32", "--threads", "1"])
    args.name = "ann_peers_tiny"
    result = run(args, base, queries, ["tiny"])
    saved = json.loads((tmp_path / "ann_peers_tiny.json").read_text())
    text = (tmp_path / "ann_peers_tiny.md").read_text()
    assert saved["finished"] and [r["system"] for r in saved["rows"]][:2] == ["brute force (FAISS IndexFlatIP)",
                                                                                "offshelf (auto)"]
    rows = {r["system"]: r for r in result["rows"]}
    assert rows["offshelf (auto)"]["kind"] == "flat" and rows["offshelf (auto)"]["recall_at_10"] == 1.0
    for peer in ("usearch", "hnswlib"):  # reached the target on the tuning queries; scored on the evaluation ones
        assert rows[peer]["reached"] and rows[peer]["recall_at_10"] > 0.9, rows[peer]
        assert rows[peer]["build_seconds"] > 0 and rows[peer]["qps"] > 0
    assert len(rows["usearch"]["tried"]) == 2 and "| usearch | dtype=i8, connectivity=8" in text
    assert "| offshelf (auto) |" in text and "PARTIAL" not in text and saved["machine"]["loadavg_start"]
    assert (tmp_path / "ann_peers_tiny.png").stat().st_size > 10_000  # the recall-vs-QPS chart


def test_goals_follow_the_numbers() -> None:
    def result(ours_qps: float, ours_recall: float, peer_qps: float) -> dict:
        return {"target": 0.95, "rows": [
            {"system": "offshelf (auto)", "qps": ours_qps, "recall_at_10": ours_recall,
             "speedup_vs_brute": ours_qps / 50},
            {"system": "usearch", "qps": peer_qps, "recall_at_10": 0.96, "reached": True},
            {"system": "hnswlib", "qps": peer_qps / 2, "recall_at_10": 0.97, "reached": True}]}

    assert list(goals(result(1500, 0.96, 900)).values()) == [True, True, True]
    assert list(goals(result(800, 0.96, 900)).values()) == [True, False, False]
    assert list(goals(result(1500, 0.94, 900)).values()) == [False, False, False]
    partial = result(1500, 0.96, 900)
    partial["rows"] = partial["rows"][:1]
    assert list(goals(partial).values()) == [True, True, None]
