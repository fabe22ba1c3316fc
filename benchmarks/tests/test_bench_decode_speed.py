"""benchmarks.decode_speed's measuring code on a few real photos (the timings themselves are not checked)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from benchmarks.decode_speed import OTHER_METHODS, PILLOW_METHODS, SIZES, time_methods, time_reader
from benchmarks.datasets import build_photo_set


def test_time_methods_and_reader_on_real_photos(tmp_path: Path) -> None:
    paths = build_photo_set(tmp_path / "set", n=4, long_side=(600, 900), seed=3)
    blobs = {"photos": [p.read_bytes() for p in paths]}
    methods = PILLOW_METHODS | OTHER_METHODS
    timings, views = time_methods(methods, blobs, passes=2, check_n=3)
    for size in SIZES:
        row = timings["photos"][str(size)]
        assert set(row) == set(methods)
        for r in row.values():
            assert r["decode_ms"] > 0 and r["resize_ms"] > 0
            assert np.isclose(r["ms_per_image"], r["decode_ms"] + r["resize_ms"])
            assert len(r["passes_ms"]) == 2 and r["ms_per_image"] <= min(r["passes_ms"]) + 1e-3  # (rounded to 3 places)
        # the views kept for the picture check are the methods' own output
        assert views[f"photos/{size}/draft"].shape == (3, size, size, 3)
        np.testing.assert_array_equal(views[f"photos/{size}/simplejpeg"], views[f"photos/{size}/draft"])
        assert np.abs(views[f"photos/{size}/full"].astype(int) - views[f"photos/{size}/draft"]).mean() < 3
    reader = time_reader("simplejpeg", {"photos": paths}, passes=1)
    assert reader["photos"]["images"] == 4 and reader["photos"]["cpu_ms_per_image"] > 0
