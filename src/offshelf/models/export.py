"""Where a model's ONNX graph comes from: exported once from packaged PyTorch weights, or an ONNX file
(packaged or the user's) with the intermediate values its layers name added as graph outputs.

Built graphs are cached in `offshelf_home()/models/<name>/` and checked by sha256 on every load, as is a user's
ONNX file against the sha256 recorded when it was registered. Inference never needs torch; exporting does, once
per model and machine.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import onnx

from offshelf._version import __version__
from offshelf.errors import OffshelfError
from offshelf.models.cache import Build, ensure_cached, offshelf_home, sha256_file
from offshelf.models.errors import ModelError
from offshelf.models.graph import check_layers, load_checked, output_names, with_outputs
from offshelf.models.registry import builtin_spec
from offshelf.models.spec import ModelSpec

CACHE_FORMAT = 1  # bump when the way graphs are built changes, so that old cache entries are rebuilt
EXPORT_OPSET = 17
TORCH_INSTALL = "pip install torch==2.13.0"


def ensure_onnx(spec: ModelSpec) -> Path:
    """Path of an ONNX graph that has every layer of `spec` as a graph output, built and cached if needed."""
    if spec.source == "huggingface":
        from offshelf.models.huggingface import ensure_hf_onnx

        return ensure_hf_onnx(spec)
    source = source_file(spec)
    source_sha256 = sha256_file(source)
    if spec.source == "onnx" and source_sha256 != spec.onnx_sha256:
        raise ModelError(f"{source} has changed since model {spec.name!r} was registered (its sha256 differs); "
                         "register the model again to use the new file")
    if spec.source == "packaged-torch":
        return _cached(spec, source_sha256, {"opset": EXPORT_OPSET}, lambda: _export_torch(spec, source))
    model = load_checked(source, spec)
    missing = [layer.output for layer in spec.layers if layer.output not in output_names(model)]
    if not missing:
        return source
    return _cached(
        spec, source_sha256, {}, lambda: (with_outputs(model, missing).SerializeToString(), {"onnx": onnx.__version__})
    )


def cache_dir(spec: ModelSpec) -> Path:
    """The directory holding `spec`'s built graph and its `meta.json`."""
    return offshelf_home() / "models" / spec.name


def source_file(spec: ModelSpec) -> Path:
    """The file a model is built from: the user's registered ONNX file, or the weights or graph a package ships
    (located through the built-in spec of that name, never through `spec`'s own description)."""
    if spec.source == "onnx":
        if not spec.onnx_sha256:
            raise ModelError(f"model {spec.name!r} records no sha256 of {spec.onnx_path}; register it with "
                             "register_model, which records it")
        path = Path(str(spec.onnx_path)).expanduser()
        if not path.is_file():
            raise ModelError(f"model {spec.name!r}: ONNX file {path} does not exist")
        return path
    module_name, _, attribute = builtin_spec(spec.name).extra["weights"].partition(":")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as error:
        raise OffshelfError(f"model {spec.name!r} needs the package that provides {module_name}: {error}") from error
    for part in attribute.split("."):
        target = getattr(target, part)
    return Path(target() if callable(target) else target)


def _cached(spec: ModelSpec, source_sha256: str, recipe: dict[str, Any], build: Build) -> Path:
    """`ensure_cached` for `spec`, keyed by the source's sha256 and the layer outputs."""
    full_recipe = {
        "format": CACHE_FORMAT,
        "source_sha256": source_sha256,
        "outputs": [layer.output for layer in spec.layers],
        **recipe,
    }

    def build_with_facts() -> tuple[bytes, dict[str, Any]]:
        data, facts = build()
        layer_shapes = check_layers(onnx.load_from_string(data), spec)
        return data, {**facts, "model": spec.name, "offshelf": __version__, "layer_shapes": layer_shapes}

    return ensure_cached(cache_dir(spec), full_recipe, build_with_facts)


def _export_torch(spec: ModelSpec, weights: Path) -> tuple[bytes, dict[str, Any]]:
    """Export a packaged-torch model (torch is imported here and nowhere else)."""
    try:
        from offshelf.models import _efficientnet
    except ModuleNotFoundError as error:
        if error.name != "torch":
            raise
        raise OffshelfError(
            f"model {spec.name!r} must be exported to ONNX once, which needs PyTorch (CPU build): {TORCH_INSTALL}"
        ) from error
    outputs = [layer.output for layer in spec.layers]
    return _efficientnet.export_onnx(spec.extra["arch"], weights, spec.preprocessing.size, outputs, EXPORT_OPSET)
