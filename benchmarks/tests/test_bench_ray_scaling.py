"""The Ray scaling benchmark's report: its medians, the overhead verdict and the N-node arithmetic."""

from __future__ import annotations

from typing import Any

from benchmarks.ray_scaling import markdown, scaling_paragraph, summarize


def _result(local_s: float, ray_s: float) -> dict[str, Any]:
    embed = {name: summarize([{"images": 300, "seconds": s} for s in seconds])
             for name, seconds in {"local": [local_s, local_s + 2, local_s - 2], "ray-1": [ray_s * 1.5],
                                   "ray-2": [ray_s]}.items()}
    result = {
        "date": "2026-12-03T00:00:00", "photos": 300, "rounds": 3, "embed": embed,
        "environment": {"cores": 2, "load_average_at_start": [1.0, 1.0, 1.0]}, "load_average_at_end": [2.0, 2.0, 2.0],
        "ray_start_seconds": 10.0, "ray_stop_seconds": 2.0, "tiny": {"images": 4, "seconds": 8.0},
        "tiny_local": {"images": 4, "seconds": 0.5},
        "overhead": {"running_instance": ray_s / local_s - 1, "with_instance_start": (ray_s + 12) / local_s - 1,
                     "goal": 0.25, "met": ray_s / local_s - 1 <= 0.25},
        "serial": {"listing_files_per_s": 20_000.0, "commit_rows_per_s": 2_000.0},
        "index": {"n": 20_000,
                  "single": {"seconds": 30.0, "build_seconds": 25.0, "recall_at_1": 0.5, "recall_at_10": 0.8},
                  "sharded": {"seconds": 33.0, "train_seconds": 20.0, "add_seconds": 8.0, "merge_seconds": 0.2,
                              "tasks": 2, "build_seconds": 28.0, "recall_at_1": 0.5, "recall_at_10": 0.8}},
    }
    result["scaling"] = scaling_paragraph(result)
    return result


def test_medians_overhead_verdict_and_node_arithmetic() -> None:
    met = _result(local_s=10.0, ray_s=12.0)
    assert met["embed"]["local"]["seconds"] == 10.0 and met["embed"]["local"]["rounds"] == [10.0, 12.0, 8.0]
    assert met["embed"]["ray-2"]["images_per_s"] == 25.0
    text = markdown(met)
    assert "+20% of the local engine's time on a running instance (goal <= 25%: met)" in text
    assert "| ray-2 | 25.0 | 12.0 | 1.20x |" in text
    # 2,000 committed rows/s over 25 images/s per node: 80 nodes; 1e7 files at 20,000 files/s: 8.3 min
    assert "near 80 such nodes" in met["scaling"] and "(8.3 min for 10 million files" in met["scaling"]
    # merge 0.2 s over 20,000 vectors = 10 us per vector; add 8 s x 2 tasks / 20,000 = 800 us per vector per task
    assert "10.00 us per vector" in met["scaling"] and "800 us per vector per task" in met["scaling"]
    # beyond the 4-image run: (12 - 8) / 296 s per image with Ray, (10 - 0.5) / 296 locally
    assert f"an image costs {4 / 296 * 1e3:.0f} ms with the Ray engine (2 actors) and {9.5 / 296 * 1e3:.0f} ms" in text
    missed = markdown(_result(local_s=10.0, ray_s=14.0))
    assert "+40% of the local engine's time on a running instance (goal <= 25%: missed)" in missed
