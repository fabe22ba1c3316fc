"""Backbones: a registry of model specs, their ONNX graphs (exported once, cached, checksummed) and a runtime.

    backbone = load_backbone("efficientnet-lite0")
    maps = backbone.forward(images_uint8_nhwc, ["head"])["head"]  # (N, 1280, 7, 7) float32
"""

from .cache import offshelf_home
from .errors import ModelError
from .export import ensure_onnx
from .registry import DEFAULT_MODEL, get_model_spec, list_models, register_model
from .runtime import Backbone, load_backbone
from .spec import Layer, ModelSpec, Preprocessing

__all__ = [
    "DEFAULT_MODEL",
    "Backbone",
    "Layer",
    "ModelError",
    "ModelSpec",
    "Preprocessing",
    "ensure_onnx",
    "get_model_spec",
    "list_models",
    "load_backbone",
    "offshelf_home",
    "register_model",
]
