"""benchmarks.serve_load: its goals are judged from the measured numbers, and a missed goal is shown as missed."""

from __future__ import annotations

from pathlib import Path

from benchmarks.serve_load import KINDS, chart, goals, markdown


def _run(rate: float, p99: float, errors: int = 0) -> dict:
    return {"requests": 100, "concurrency": 16, "requests_per_s": rate, "images_per_s": rate, "p50_ms": p99 / 3,
            "p95_ms": p99 / 2, "p99_ms": p99, "server_errors": errors, "foreign_cpu_share": 0.1, "server_cpu_share": 0.5, "client_cpu_share": 0.2, "mean_batch_size": 4.0}


def _result(on_rate: float, off_rate: float, offline: float, serial_p99: float, errors: int = 0) -> dict:
    server = {mode: {kind: _run(rate if kind == "image_queries" else 500.0, serial_p99 if kind == "id_queries_serial"
                                else 80.0, errors) for kind in KINDS} for mode, rate in
              (("batching on", on_rate), ("batching off", off_rate))}
    return {"items": 100_000, "server": server, "offline_images_per_s": offline,
            "offline": [{"images_per_s": offline, "foreign_cpu_share": 0.0}], "date": "today",
            "environment": {"cores": 2, "offshelf": "0", "onnxruntime": "1"},
            "index": {"kind": "hnsw", "recall_at_10": 0.99}}


def test_goals_follow_the_numbers_and_misses_are_marked(tmp_path: Path) -> None:
    result = _result(on_rate=70.0, off_rate=30.0, offline=90.0, serial_p99=12.0)
    by_name = [(g["met"], round(g["value"], 3)) for g in goals(result)]
    assert by_name == [(True, 12.0), (False, 80.0), (True, round(70 / 90, 3)), (True, round(70 / 30, 3)), (True, 0)]
    result["goals"] = goals(_result(on_rate=50.0, off_rate=40.0, offline=90.0, serial_p99=60.0, errors=2))
    text = markdown({**result, "goals": result["goals"]})
    assert text.count("**missed**") == 5 and "| id queries, 1 client, batching on |" in text
    chart(result, tmp_path / "chart.png")
    assert (tmp_path / "chart.png").stat().st_size > 10_000
