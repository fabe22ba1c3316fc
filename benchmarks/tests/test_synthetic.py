"""benchmarks.harness.synthetic: realistic (clustered, anisotropic) vectors resampled from real-like features."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.harness.synthetic import CHUNK, PCAMixture, realistic_vectors

DIM, N_PCA, N_COMPONENTS = 96, 16, 8
SMALL = {"n_pca": N_PCA, "n_components": N_COMPONENTS}


@pytest.fixture(scope="module")
def source() -> np.ndarray:
    """A stand-in for real features: 12 clusters in a low-dimensional subspace with a decaying spectrum, plus a
    small full-rank tail, non-negative like GAP features."""
    rng = np.random.default_rng(42)
    basis = np.linalg.qr(rng.standard_normal((DIM, 24)))[0].T * (3.0 / np.arange(1, 25))[:, None]
    centres = rng.standard_normal((12, 24)) * 1.5
    labels = rng.integers(0, 12, 1500)
    x = (centres[labels] + 0.3 * rng.standard_normal((1500, 24))) @ basis + 0.02 * rng.standard_normal((1500, DIM))
    return np.abs(x + 1.0).astype(np.float32)


@pytest.fixture()
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("OFFSHELF_HOME", str(tmp_path))
    return tmp_path


def explained(x: np.ndarray, top: int) -> float:
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    s = np.linalg.svd(x - x.mean(0), compute_uv=False) ** 2
    return float(s[:top].sum() / s.sum())


def test_shape_dtype_and_determinism(source):
    a = realistic_vectors(500, seed=0, source=source, cache=False, **SMALL)
    b = realistic_vectors(500, seed=0, source=source, cache=False, **SMALL)
    c = realistic_vectors(500, seed=1, source=source, cache=False, **SMALL)
    assert a.shape == (500, DIM) and a.dtype == np.float32 and np.isfinite(a).all()
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    # the first n rows do not depend on how many were asked for (also across a chunk boundary)
    longer = realistic_vectors(CHUNK + 10, seed=0, source=source, cache=False, **SMALL)
    np.testing.assert_array_equal(longer[:500], a)


def test_cache_is_reused_and_sliced(source, home):
    big = realistic_vectors(1000, seed=3, source=source, **SMALL)
    assert isinstance(big, np.memmap) and not big.flags.writeable
    files = sorted(p.name for p in (home / "bench" / "synthetic").iterdir())
    assert any(name.startswith("model-") for name in files) and any(name.endswith("-n1000.npy") for name in files)
    small = realistic_vectors(400, seed=3, source=source, **SMALL)  # a slice of the cached 1000, no new file
    assert len(list((home / "bench" / "synthetic").glob("vectors-*.npy"))) == 1
    np.testing.assert_array_equal(small, big[:400])
    np.testing.assert_array_equal(small, realistic_vectors(400, seed=3, source=source, cache=False, **SMALL))


def test_not_isotropic_like_the_source(source):
    x = realistic_vectors(3000, seed=0, source=source, cache=False, **SMALL)
    noise = np.random.default_rng(0).standard_normal(x.shape)
    # the top principal components carry most of the variance, as in the source (and unlike noise)
    assert explained(x, 10) > 0.7
    assert abs(explained(x, 10) - explained(source, 10)) < 0.1
    assert explained(noise, 10) < 0.2


def test_clustered_neighbours(source):
    model = PCAMixture(N_PCA, N_COMPONENTS).fit(source)
    x, labels = model.sample(2000, np.random.default_rng(0), return_labels=True)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    sims = x @ x.T
    np.fill_diagonal(sims, -np.inf)
    nearest = sims.argmax(axis=1)
    same = float(np.mean(labels[nearest] == labels))
    chance = float(np.sum(np.bincount(labels, minlength=N_COMPONENTS) ** 2) / len(labels) ** 2)
    assert same > 0.6 and same > 3 * chance
    # neighbours are much closer than random pairs
    assert np.mean(sims.max(axis=1)) > np.mean(sims[np.isfinite(sims)]) + 0.1


def test_model_round_trip(source):
    model = PCAMixture(N_PCA, N_COMPONENTS).fit(source)
    again = PCAMixture.from_arrays(model.to_arrays())
    np.testing.assert_array_equal(model.sample(50, np.random.default_rng(5)), again.sample(50, np.random.default_rng(5)))


def test_bad_arguments(source):
    with pytest.raises(ValueError, match=r"^n must be >= 0, got -1$"):
        realistic_vectors(-1, source=source, cache=False, **SMALL)
    with pytest.raises(ValueError, match=r"real vectors of dim \d+ are too few for n_pca=200, n_components=48$"):
        PCAMixture(n_pca=200).fit(source)  # more components than the dimension
