"""Fitted post-processing: signed power, the retrieval pipeline, and saving without pickle."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.decomposition import PCA
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import Normalizer, StandardScaler

from offshelf.errors import OffshelfError
from offshelf.io import load_bundle, save_bundle
from offshelf.transforms import SignedPower, pipeline_from_bundle, pipeline_to_bundle, retrieval_pipeline


@pytest.fixture
def features() -> np.ndarray:
    rng = np.random.default_rng(0)
    return (rng.gamma(1.5, 1.0, (200, 32)) @ rng.normal(size=(32, 32))).astype(np.float32)


def test_signed_power_matches_formula_and_follows_sklearn_conventions(features: np.ndarray) -> None:
    power = SignedPower(alpha=0.3)
    np.testing.assert_allclose(power.fit_transform(features), np.sign(features) * np.abs(features) ** 0.3, rtol=1e-6)
    assert clone(power).get_params() == {"alpha": 0.3}
    with pytest.raises(ValueError, match=r"^alpha must be > 0, got 0$"):
        SignedPower(alpha=0).fit(features)


def test_retrieval_pipeline_steps_against_manual_computation(features: np.ndarray) -> None:
    pipe = retrieval_pipeline(8).fit(features)
    out = pipe.transform(features)
    x = features / np.linalg.norm(features, axis=1, keepdims=True)
    pca = PCA(8, whiten=True, random_state=0).fit(x)
    x = pca.transform(x)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    x = np.sign(x) * np.sqrt(np.abs(x))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    np.testing.assert_allclose(out, x, atol=5e-4)  # float32 SVD round-off
    assert out.shape == (200, 8)


def test_pipeline_saved_as_arrays_and_json_round_trips(features: np.ndarray, tmp_path: Path) -> None:
    pipe = Pipeline([("scale", StandardScaler()), *retrieval_pipeline(6).steps]).fit(features)
    steps, arrays = pipeline_to_bundle(pipe)
    save_bundle(tmp_path / "t", {"kind": "transform", "steps": steps}, arrays)
    meta, loaded = load_bundle(tmp_path / "t", kind="transform")
    restored = pipeline_from_bundle(meta["steps"], loaded)
    np.testing.assert_allclose(restored.transform(features), pipe.transform(features), rtol=1e-6, atol=1e-6)
    with pytest.raises(OffshelfError, match="not a 'probe'"):
        load_bundle(tmp_path / "t", kind="probe")
    with pytest.raises(OffshelfError, match="nothing saved"):
        load_bundle(tmp_path / "missing")
    with pytest.raises(OffshelfError, match="cannot save"):
        pipeline_to_bundle(Pipeline([("odd", Normalizer()), ("x", _Unknown())]))


def test_pickled_arrays_are_refused(tmp_path: Path) -> None:
    """Even with its checksum recorded (as a hostile bundle would have), an object array is never unpickled."""
    save_bundle(tmp_path / "b", {"kind": "x"}, {"ok": np.arange(3)})
    np.savez(tmp_path / "b" / "arrays.npz", evil=np.array([object()], dtype=object))
    meta = json.loads((tmp_path / "b" / "meta.json").read_text())
    meta["arrays_sha256"] = hashlib.sha256((tmp_path / "b" / "arrays.npz").read_bytes()).hexdigest()
    (tmp_path / "b" / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(OffshelfError, match="cannot load .*arrays.npz: ValueError: member 'evil.npy' holds Python objects"):
        load_bundle(tmp_path / "b")


class _Unknown:
    pass
