"""Pooling against explicit per-channel numpy references."""

from __future__ import annotations

import numpy as np
import pytest

from offshelf.pooling import Pooling


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
    for bad in ("avg", "gap:2", "gem:x", "gem:-1", "gem:0", "gem:inf"):
        with pytest.raises(ValueError):
            Pooling.parse(bad)
    with pytest.raises(ValueError, match="N, C, H, W"):
        Pooling.parse("gap")(np.zeros((2, 3), np.float32))
