"""Running a backbone: an ONNX Runtime CPU session behind a `ModelSpec`.

Thread-safety: ONNX Runtime's `InferenceSession.run` is thread-safe, so one `Backbone` can be shared by
several threads (`forward` keeps no state between calls). Share it rather than loading one per thread:
each session owns its own intra-op thread pool, and several pools on the same cores only compete.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from offshelf.models.errors import ModelError
from offshelf.models.export import ensure_onnx
from offshelf.models.quantize import check_precision, ensure_int8_onnx
from offshelf.models.registry import get_model_spec
from offshelf.models.spec import Layer, ModelSpec

THREADS_ENV = "OFFSHELF_ORT_THREADS"


class Backbone:
    """A model's ONNX Runtime session: images in, the requested layers' features out."""

    def __init__(self, spec: ModelSpec, session: ort.InferenceSession, threads: int, precision: str = "fp32") -> None:
        self.spec = spec
        self.session = session
        self.threads = threads
        self.precision = precision
        self._input_name = session.get_inputs()[0].name

    def __repr__(self) -> str:
        return f"Backbone({self.spec.name!r}, threads={self.threads}, precision={self.precision!r})"

    def forward(self, images: np.ndarray, layers: Sequence[str]) -> dict[str, np.ndarray]:
        """Features of a uint8 RGB batch `(N, size, size, 3)` for each layer name in `layers`.

        Map layers come back as float32 `(N, C, H, W)` whatever the graph's layout, vector layers as `(N, C)`.
        """
        return self.forward_preprocessed(self.spec.preprocessing.apply(images), layers)

    def forward_preprocessed(self, x: np.ndarray, layers: Sequence[str]) -> dict[str, np.ndarray]:
        """As `forward`, from the float32 tensor that `spec.preprocessing.apply` makes."""
        chosen = [self.spec.layer(name) for name in dict.fromkeys(layers)]
        if not chosen:
            raise ModelError(f"no layers requested; choose from {self.spec.layer_names}")
        values = self.session.run([layer.output for layer in chosen], {self._input_name: np.asarray(x, np.float32)})
        return {layer.name: _as_nchw(layer, value) for layer, value in zip(chosen, values)}


def load_backbone(model: str | ModelSpec, *, threads: int | None = None, precision: str = "fp32",
                  calibration: str | None = None, calibrate_on: str | Path | None = None) -> Backbone:
    """Open `model` (a registered name or a spec) on CPU, exporting and caching its ONNX graph if needed.

    `threads` is ONNX Runtime's intra-op thread count; by default `$OFFSHELF_ORT_THREADS`, else the number of
    cores this process may run on. `precision="int8"` runs the int8 graph (`offshelf.models.quantize`), calibrated
    on the set whose sha256 is `calibration`, on the images under `calibrate_on`, or on the shipped photos.
    """
    spec = model if isinstance(model, ModelSpec) else get_model_spec(model)
    count = resolve_threads(threads)
    if check_precision(precision) == "int8":
        path = ensure_int8_onnx(spec, calibration, calibrate_on=calibrate_on, progress=True)
    else:
        path = ensure_onnx(spec)
    session = ort.InferenceSession(str(path), session_options(count), providers=["CPUExecutionProvider"])
    return Backbone(spec, session, count, precision)


def available_cores() -> int:
    """CPU cores this process may run on."""
    return len(os.sched_getaffinity(0))


def resolve_threads(threads: int | None) -> int:
    """`threads`, else `$OFFSHELF_ORT_THREADS`, else the cores available to this process."""
    if threads is None:
        configured = os.environ.get(THREADS_ENV)
        threads = int(configured) if configured else available_cores()
    if threads < 1:
        raise ModelError(f"ONNX Runtime needs at least one thread, got {threads}")
    return threads


def session_options(threads: int) -> ort.SessionOptions:
    """Full graph optimization, sequential execution, `threads` intra-op threads and one inter-op thread.

    Spinning is off: idle ORT workers that spin steal the cores from image decoding. Measured on 2 cores
    (EfficientNet-Lite0, batch 32): spinning costs ~25-35% more CPU per image; with decode threads or other
    processes competing, throughput is 1.3-1.6x higher without it, and no worse when the machine is idle.
    """
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def _as_nchw(layer: Layer, value: np.ndarray) -> np.ndarray:
    """A layer's output as float32, with NHWC maps transposed to NCHW."""
    if layer.kind == "map" and layer.layout == "NHWC":
        value = np.ascontiguousarray(value.transpose(0, 3, 1, 2))
    return value.astype(np.float32, copy=False)
