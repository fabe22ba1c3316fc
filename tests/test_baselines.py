"""Hand-crafted baseline features: shapes, determinism, and values against direct skimage / numpy code."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage.feature import hog as skimage_hog
from skimage.feature import local_binary_pattern

from offshelf.baselines import BASELINES, BaselineError, extract_baseline
from offshelf.errors import OffshelfError
from offshelf.images import decode_image

DIMS = {"raw_pixels": 3072, "color_histogram": 512, "hog": 8100, "lbp": 448}


@pytest.fixture(scope="module")
def pngs(photos: list[Path]) -> list[Path]:
    """The real PNG photos (decoded at full size, so a direct computation sees the same pixels)."""
    found = [p for p in photos if p.suffix == ".png"]
    assert len(found) >= 4
    return found


@pytest.fixture(scope="module")
def image(pngs: list[Path]) -> Image.Image:
    return decode_image(pngs[0].read_bytes())


def _resize(im: Image.Image, size: int) -> Image.Image:
    return im.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=2.0)


def _gray128(im: Image.Image) -> np.ndarray:
    return np.asarray(_resize(im.convert("L"), 128))


@pytest.mark.parametrize("name", list(DIMS))
def test_shapes_dtype_and_determinism(name: str, pngs: list[Path]):
    features = extract_baseline(name, pngs, workers=3)
    assert features.shape == (len(pngs), DIMS[name]) == (len(pngs), BASELINES[name].dim)
    assert features.dtype == np.float32 and np.isfinite(features).all()
    np.testing.assert_array_equal(features, extract_baseline(name, pngs, workers=1))
    assert len({row.tobytes() for row in features}) == len(pngs)  # different images, different features
    assert BASELINES[name]([]).shape == (0, DIMS[name])


@pytest.mark.parametrize("name", list(DIMS))
def test_paths_and_decoded_images_agree(name: str, pngs: list[Path]):
    images = [decode_image(p.read_bytes()) for p in pngs[:2]]
    np.testing.assert_array_equal(BASELINES[name](images), BASELINES[name](pngs[:2]))


def test_raw_pixels_values(image: Image.Image):
    expected = np.asarray(_resize(image, 32), np.float32).ravel() / 255
    np.testing.assert_allclose(BASELINES["raw_pixels"]([image])[0], expected, rtol=1e-6)


def test_color_histogram_values(image: Image.Image):
    pixels = np.asarray(_resize(image, 128)).reshape(-1, 3)
    expected, _ = np.histogramdd(pixels, bins=(8, 8, 8), range=[(0, 256)] * 3)
    row = BASELINES["color_histogram"]([image])[0]
    np.testing.assert_allclose(row, expected.ravel() / len(pixels), rtol=1e-6)
    assert row.sum() == pytest.approx(1.0, abs=1e-5)


def test_hog_matches_skimage(image: Image.Image):
    expected = skimage_hog(_gray128(image), orientations=9, pixels_per_cell=(8, 8), cells_per_block=(2, 2))
    np.testing.assert_allclose(BASELINES["hog"]([image])[0], expected, rtol=1e-5, atol=1e-7)


def test_lbp_matches_skimage_cell_histograms(image: Image.Image):
    gray = _gray128(image)
    parts = []
    for points, radius in ((8, 1), (16, 2)):
        codes = local_binary_pattern(gray, points, radius, method="uniform")
        for r in range(4):
            for c in range(4):
                cell = codes[r * 32 : (r + 1) * 32, c * 32 : (c + 1) * 32]
                counts, _ = np.histogram(cell, bins=points + 2, range=(0, points + 2))
                parts.append(counts / cell.size)
    np.testing.assert_allclose(BASELINES["lbp"]([image])[0], np.concatenate(parts), rtol=1e-6)


def test_small_images_are_upscaled_consistently():
    tiny = Image.fromarray(np.arange(28 * 28, dtype=np.uint8).reshape(28, 28)).convert("RGB")
    for name, baseline in BASELINES.items():
        assert baseline([tiny]).shape == (1, DIMS[name])


def test_failures_are_listed(pngs: list[Path], tmp_path: Path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    missing = tmp_path / "missing.png"
    with pytest.raises(BaselineError, match="2 of 3 images could not be decoded") as caught:
        extract_baseline("color_histogram", [pngs[0], broken, missing])
    assert [item for item, _ in caught.value.failures] == [str(broken), str(missing)]
    assert "not an image" in str(caught.value) and "unreadable file" in str(caught.value)
    assert isinstance(caught.value, OffshelfError)


def test_unknown_baseline_is_a_usage_error(pngs: list[Path]):
    with pytest.raises(OffshelfError, match="unknown baseline 'sift'"):
        extract_baseline("sift", pngs)
