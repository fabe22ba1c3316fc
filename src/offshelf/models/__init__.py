"""Backbones: a registry of model specs, their ONNX graphs (exported once, cached, checksummed) and a runtime.

    backbone = load_backbone("efficientnet-lite0")
    maps = backbone.forward(images_uint8_nhwc, ["head"])["head"]  # (N, 1280, 7, 7) float32
"""

from offshelf.models.cache import offshelf_home
from offshelf.models.errors import ModelError
from offshelf.models.export import ensure_onnx
from offshelf.models.quantize import (
    PRECISIONS,
    TARGET_COSINE,
    calibration_images,
    calibration_sha256,
    check_precision,
    ensure_int8_onnx,
    int8_report,
)
from offshelf.models.registry import DEFAULT_MODEL, get_model_spec, list_models, register_model, resolve_spec
from offshelf.models.runtime import Backbone, load_backbone
from offshelf.models.spec import Layer, ModelSpec, Preprocessing

__all__ = [
    "DEFAULT_MODEL",
    "PRECISIONS",
    "TARGET_COSINE",
    "Backbone",
    "Layer",
    "ModelError",
    "ModelSpec",
    "Preprocessing",
    "calibration_images",
    "calibration_sha256",
    "check_precision",
    "ensure_int8_onnx",
    "ensure_onnx",
    "get_model_spec",
    "int8_report",
    "list_models",
    "load_backbone",
    "offshelf_home",
    "register_model",
    "resolve_spec",
]
