"""Model specs: preprocessing against a plain numpy reference, and the JSON round trip."""

from __future__ import annotations

import numpy as np
import pytest

from offshelf.models import Layer, ModelSpec, Preprocessing
from offshelf.models.errors import ModelError


@pytest.mark.parametrize("order", ["RGB", "BGR"])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_preprocessing_matches_reference(order: str, layout: str) -> None:
    pre = Preprocessing(size=16, mean=(10.0, 20.0, 30.0), std=(2.0, 1.0, 4.0), channel_order=order, layout=layout)
    images = np.random.default_rng(0).integers(0, 256, (5, 16, 16, 3), dtype=np.uint8)
    x = images[..., ::-1] if order == "BGR" else images
    expected = (x.astype(np.float64) - np.array(pre.mean)) / np.array(pre.std)
    if layout == "NCHW":
        expected = expected.transpose(0, 3, 1, 2)
    out = pre.apply(images)
    assert out.dtype == np.float32 and out.flags.c_contiguous
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    with pytest.raises(ValueError, match="expected"):
        pre.apply(images[:, :8])


def test_spec_round_trip_and_validation() -> None:
    spec = ModelSpec(
        name="toy", source="onnx", onnx_path="/x.onnx", default_layer="b",
        preprocessing=Preprocessing(size=8, mean=(1.0, 2.0, 3.0)),
        layers=(Layer("a", "out_a", 4), Layer("b", "out_b", 6, kind="vector")),
    )
    assert ModelSpec.from_dict(spec.to_dict()) == spec and spec.dim == 6
    with pytest.raises(ModelError, match="no layer 'c'"):
        spec.layer("c")
    with pytest.raises(ModelError, match="default layer"):
        ModelSpec(name="t", source="onnx", onnx_path="/x", default_layer="z", preprocessing=spec.preprocessing,
                  layers=spec.layers)
    with pytest.raises(ModelError, match="duplicate"):
        ModelSpec(name="t", source="onnx", onnx_path="/x", default_layer="a", preprocessing=spec.preprocessing,
                  layers=(Layer("a", "o", 1), Layer("a", "p", 1)))
