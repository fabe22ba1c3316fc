"""Pooling against explicit per-channel numpy references."""

from __future__ import annotations

import numpy as np
import pytest

from offshelf.extract.pooling import Pooling


@pytest.fixture
def maps() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.gamma(2.0, 1.0, size=(3, 5, 4, 6)).astype(np.float32)  # non-negative, like ReLU maps


def reference(maps: np.ndarray, fn) -> np.ndarray:
    n, c = maps.shape[:2]
    return np.array([[fn(maps[i, j].ravel().astype(np.float64)) for j in range(c)] for i in range(n)])


def test_gap_gmp_gem_match_reference(maps: np.ndarray) -> None:
    np.testing.assert_allclose(Pooling.parse("gap")(maps), reference(maps, np.mean), rtol=1e-6)
    np.testing.assert_array_equal(Pooling.parse("gmp")(maps), reference(maps, np.max).astype(np.float32))
    for p in (3.0, 4.5):
        expected = reference(maps, lambda v: np.mean(v**p) ** (1 / p))
        np.testing.assert_allclose(Pooling.parse(f"gem:{p}")(maps), expected, rtol=1e-5)


def test_gem_interpolates_between_average_and_max(maps: np.ndarray) -> None:
    np.testing.assert_allclose(Pooling.parse("gem:1")(maps), Pooling.parse("gap")(maps), rtol=1e-5)
    np.testing.assert_allclose(Pooling.parse("gem:200")(maps), Pooling.parse("gmp")(maps), rtol=0.02)
    gem = Pooling.parse("gem")(maps)
    assert np.all(gem >= Pooling.parse("gap")(maps) - 1e-5) and np.all(gem <= Pooling.parse("gmp")(maps) + 1e-5)


def test_gem_clamps_negative_activations() -> None:
    maps = np.full((1, 1, 2, 2), -1.0, np.float32)
    assert np.all(np.isfinite(Pooling.parse("gem")(maps)))


def test_names_and_parse_errors() -> None:
    assert Pooling.parse("GEM").name == "gem:3"
    assert Pooling.parse("gem:2.5").name == "gem:2.5"
    assert Pooling.parse("gap").name == "gap"
    for bad, message in (("avg", r"^unknown pooling 'avg'; choose from gap, gmp, gem, gem:P, rmac, rmac:L$"),
                         ("gap:2", r"^pooling 'gap' takes no parameter \(got 'gap:2'\)$"),
                         ("gmp:1", r"^pooling 'gmp' takes no parameter \(got 'gmp:1'\)$"),
                         ("gem:x", r"^GeM exponent must be a number, got 'x'$"),
                         ("gem:-1", r"^GeM exponent must be finite and > 0, got -1\.0$"),
                         ("gem:0", r"^GeM exponent must be finite and > 0, got 0\.0$"),
                         ("gem:inf", r"^GeM exponent must be finite and > 0, got inf$")):
        with pytest.raises(ValueError, match=message):
            Pooling.parse(bad)
    with pytest.raises(ValueError, match="N, C, H, W"):
        Pooling.parse("gap")(np.zeros((2, 3), np.float32))


def test_rmac_regions_follow_the_published_layout() -> None:
    from offshelf.extract.pooling import rmac_regions

    square = rmac_regions(7, 7, 3)
    assert len(square) == 1 + 4 + 9  # l x l regions per level on a square map
    assert square[0] == (0, 0, 7, 7)
    for top, left, h, w in rmac_regions(9, 14, 3):  # every region inside the map, square
        assert h == w and 0 <= top and top + h <= 9 and 0 <= left and left + w <= 14
    covered = np.zeros((9, 14), bool)
    for top, left, h, w in rmac_regions(9, 14, 3):
        covered[top : top + h, left : left + w] = True
    assert covered.all()


def test_rmac_against_manual_computation(maps: np.ndarray) -> None:
    from offshelf.extract.pooling import rmac_regions

    square = np.random.default_rng(3).gamma(2.0, 1.0, (2, 6, 7, 7)).astype(np.float32)
    gmp = square.max(axis=(2, 3))
    np.testing.assert_allclose(Pooling.parse("rmac:1")(square), gmp / np.linalg.norm(gmp, axis=1, keepdims=True),
                               rtol=1e-5)
    expected = np.zeros((2, 6))
    for top, left, h, w in rmac_regions(7, 7, 3):
        for n in range(2):
            region = np.array([square[n, c, top : top + h, left : left + w].max() for c in range(6)], np.float64)
            expected[n] += region / np.linalg.norm(region)
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(Pooling.parse("rmac")(square), expected, rtol=1e-5)
    assert Pooling.parse("rmac").name == "rmac:3" and Pooling.parse("rmac:2").name == "rmac:2"
    for bad in ("rmac:0", "rmac:x", "rmac:9"):
        with pytest.raises(ValueError, match=rf"^R-MAC levels must be a whole number from 1 to 6, got '{bad[5:]}'$"):
            Pooling.parse(bad)
