"""int8 backbones: ONNX Runtime static post-training quantization, with the layers that hurt the descriptor most
kept in fp32, chosen by measured sensitivity.

The recipe (mixed-precision post-training quantization): QDQ format, int8 weights per output channel (7-bit
range) and uint8 activations, the layout ONNX Runtime's fast x86 kernels take, with ranges calibrated ONCE
(MinMax) on a fixed set of real photos. Then each weighted node
(Conv, Gemm, MatMul upstream of the model's default layer) is quantized alone and its damage to the descriptor
the store keeps (default layer, global average pooling: 1 - mean cosine to fp32 on the calibration photos) is
measured; greedily, the most damaging nodes stay in fp32 until the whole graph reaches `SEARCH_TARGET` on the
calibration photos, a margin above the fidelity goal `TARGET_COSINE`, since the photos the ranges were fitted
on flatter the graph (measured on EfficientNet-Lite0: stopping at 0.98 there gave 0.976 on held-out photos). The
ranges are reused for every candidate graph, never re-calibrated.

The graph is cached in `offshelf_home()/models/<name>/int8-<calibration sha256[:16]>/` with a `meta.json` that
records the fp32 graph it came from, the calibration set's identity (sha256 over its files' sha256), the nodes
kept in fp32, every node's measured sensitivity and the fidelity reached (and naive whole-graph quantization's,
for comparison). Every load checks the file's sha256; a tampered file is refused, never run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from offshelf._version import __version__
from offshelf.images import ImageDecodeError, decode_image, find_images, make_views, read_file, real_photos
from offshelf.io import atomic_write_bytes, atomic_write_json, remove_stale_tmp_files
from offshelf.models.cache import META_FILE, MODEL_FILE, blocking_lock, cache_problem, sha256_file
from offshelf.models.errors import ModelError
from offshelf.models.export import cache_dir, ensure_onnx
from offshelf.models.spec import ModelSpec

PRECISIONS = ("fp32", "int8")
#: The fidelity goal: mean cosine of int8 descriptors to fp32's on photos the graph was not calibrated on.
TARGET_COSINE = 0.98
#: Mean cosine to fp32 that the search must reach on the calibration photos themselves.
SEARCH_TARGET = 0.99
#: The weighted operators whose precision the sensitivity search chooses.
WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
#: At most this many sensitivity measurements: a larger graph's weighted nodes are measured in consecutive runs.
MAX_UNITS = 64
#: Sensitivity is measured on this many of the calibration photos (evenly spaced); the greedy choice on all of them.
SENSITIVITY_PHOTOS = 8
MIN_CALIBRATION_IMAGES = 4
INT8_FORMAT = 3  # bump when the recipe changes, so that cached int8 graphs are rebuilt
# uint8 activations with int8 weights run on ONNX Runtime's fast u8s8 x86 kernels (int8 activations measured 0.83x
# fp32 here, uint8 1.6-1.8x); the weights' 7-bit range (reduce_range) keeps those kernels' 16-bit sums from
# saturating (measured: mean cosine 0.87 without it, 0.94 with it, whole graph quantized).
_SETTINGS = {"quant_format": "QDQ", "weights": "int8 per-channel, 7-bit range", "activations": "uint8",
             "calibration": "MinMax"}

logger = logging.getLogger("offshelf.models")


def check_precision(precision: str) -> str:
    """`precision` if it is one offshelf runs; ModelError names the choices."""
    if precision not in PRECISIONS:
        raise ModelError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    return precision


def calibration_images(directory: str | Path | None = None) -> list[Path]:
    """The calibration photos: the real photos shipped in wheels (colour and grayscale), or the images under
    `directory`."""
    if directory is None:
        return real_photos(grayscale=True)
    try:
        paths = find_images([directory])
    except FileNotFoundError:
        raise ModelError(f"--calibrate-on {directory}: no image files there") from None
    if len(paths) < MIN_CALIBRATION_IMAGES:
        raise ModelError(f"--calibrate-on {directory}: {len(paths)} images; calibration needs at least "
                         f"{MIN_CALIBRATION_IMAGES}")
    return paths


def calibration_sha256(paths: Sequence[Path]) -> str:
    """The identity of a calibration set: sha256 over its files' sorted sha256 (names and order do not matter)."""
    return hashlib.sha256("\n".join(sorted(sha256_file(Path(p)) for p in paths)).encode()).hexdigest()


def int8_dir(spec: ModelSpec, calibration: str) -> Path:
    """Where `spec`'s int8 graph calibrated on the set with sha256 `calibration` is cached."""
    return cache_dir(spec) / f"int8-{calibration[:16]}"


def ensure_int8_onnx(spec: ModelSpec, calibration: str | None = None, *,
                     calibrate_on: str | Path | None = None, progress: bool = False) -> Path:
    """Path of `spec`'s int8 graph, built (sensitivity search, about a minute for EfficientNet-Lite0 on two cores)
    and cached if needed.

    `calibration` is a recorded calibration set's sha256 (a store's), `calibrate_on` a folder of images to
    calibrate on; with neither, the shipped photos. A graph calibrated on a set that is not at hand can only come
    from the cache. A cached file whose sha256 differs from its `meta.json` is refused (ModelError).
    """
    paths = calibration_images(calibrate_on) if calibrate_on is not None or calibration is None else None
    wanted = calibration_sha256(paths) if paths is not None else str(calibration)
    if calibration is not None and wanted != calibration:
        raise ModelError(f"the images under {calibrate_on} are not the calibration set {calibration[:16]} recorded "
                         "for these features")
    if paths is None:  # a recorded set: the shipped photos, or whatever built the cached graph
        shipped = calibration_images()
        paths = shipped if calibration_sha256(shipped) == wanted else None
    fp32 = ensure_onnx(spec)
    recipe = {"format": INT8_FORMAT, "fp32_sha256": sha256_file(fp32), "calibration_sha256": wanted,
              "target_cosine": SEARCH_TARGET, **_SETTINGS}
    directory = int8_dir(spec, wanted)
    with blocking_lock(directory / ".lock"):
        problem = cache_problem(directory, recipe)
        if problem is None:
            _warn_if_short(directory)
            return directory / MODEL_FILE
        if problem != "missing" and not problem.startswith("stale"):
            raise ModelError(f"{directory / MODEL_FILE}: {problem}; refusing to run it (delete {directory} to "
                             "rebuild it)")
        if paths is None:
            raise ModelError(f"model {spec.name!r}: the int8 graph calibrated on image set {wanted[:16]} is not in "
                             f"{directory.parent} ({problem}); embed again with --calibrate-on on those images")
        logger.info("building the int8 graph of %s in %s (%s)", spec.name, directory, problem)
        remove_stale_tmp_files(directory)
        data, facts = quantize_model(spec, fp32, paths, progress=progress)
        atomic_write_bytes(directory / MODEL_FILE, data)
        atomic_write_json(directory / META_FILE, {**recipe, **facts, "onnx_sha256": hashlib.sha256(data).hexdigest()})
        _warn_if_short(directory)
        return directory / MODEL_FILE


def fidelity_shortfall(facts: dict[str, Any]) -> str | None:
    """Why an int8 graph (its `meta.json` facts) is a poor choice, if its search fell short of its target: None
    when it reached it."""
    reached, target = facts["fidelity"]["mean_cosine"], facts["target_cosine"]
    if reached >= target:
        return None
    kept = len(facts["fp32_nodes"])
    message = (f"the int8 graph of {facts['model']} reaches a mean cosine of {reached:.4f} to fp32 on its calibration "
               f"photos, short of the {target} its search aims for, with {kept} of {kept + facts['quantized_nodes']} "
               "weighted nodes kept in fp32")
    if not facts["quantized_nodes"]:
        message += ": no convolution runs in int8, so it is no faster either; use fp32 for this model"
    return message


_warned: set[Path] = set()


def _warn_if_short(directory: Path) -> None:
    """Log `fidelity_shortfall` of the graph in `directory` once per process."""
    if directory not in _warned:
        _warned.add(directory)
        problem = fidelity_shortfall(json.loads((directory / META_FILE).read_text()))
        if problem:
            logger.warning("%s (docs/int8.md)", problem)


def int8_report(spec: ModelSpec, calibration: str | None = None) -> dict[str, Any]:
    """The `meta.json` of `spec`'s cached int8 graph (fp32 nodes, sensitivity, fidelity), building it if needed."""
    return json.loads((ensure_int8_onnx(spec, calibration).parent / META_FILE).read_text())


def quantize_model(spec: ModelSpec, fp32: Path, photos: Sequence[Path], *, target: float = SEARCH_TARGET,
                   progress: bool = False) -> tuple[bytes, dict[str, Any]]:
    """The sensitivity search: `spec`'s fp32 graph at `fp32` quantized to int8 with the most damaging nodes in
    fp32 until the descriptor's mean cosine to fp32 on `photos` is at least `target`; the bytes and the facts."""
    from onnxruntime.quantization import CalibrationMethod, create_calibrator
    from onnxruntime.quantization.calibrate import save_tensors_data
    from onnxruntime.quantization.shape_inference import quant_pre_process

    started = time.perf_counter()
    calibration, evaluation = _calibration_inputs(spec, photos)
    with tempfile.TemporaryDirectory(prefix="offshelf-int8-") as tmp:
        work = Path(tmp)
        pre = work / "pre.onnx"
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
        calibrator = create_calibrator(pre, [], augmented_model_path=str(work / "augmented.onnx"),
                                       calibrate_method=CalibrationMethod.MinMax)
        calibrator.collect_data(_Batches(_input_name(pre), calibration))
        save_tensors_data(calibrator.compute_data(), work / "ranges.json")
        del calibrator
        search = _Search(spec, pre, work, evaluation)
        units = _units(onnx.load(str(pre)), spec.layer(None).output)
        everything = np.arange(len(evaluation))
        naive = search.fidelity(everything, exclude=[])
        sensitivity = {}
        subset = np.linspace(0, len(evaluation) - 1, min(SENSITIVITY_PHOTOS, len(evaluation))).round().astype(int)
        for unit in _progress(units, progress, "int8 sensitivity"):
            sensitivity[unit[0]] = 1.0 - float(search.fidelity(subset, only=unit).mean())
        ranked = sorted(units, key=lambda unit: -sensitivity[unit[0]])
        kept: list[str] = []
        cosines = naive
        for unit in ranked:
            if cosines.mean() >= target:
                break
            kept += unit
            cosines = search.fidelity(everything, exclude=kept)
        data = search.quantize(exclude=kept).read_bytes()
    return data, {
        "model": spec.name,
        "offshelf": __version__,
        "onnxruntime": ort.__version__,
        "fp32_nodes": kept,
        "quantized_nodes": sum(len(unit) for unit in units) - len(kept),
        "fidelity": _summary(cosines),
        "naive_fidelity": _summary(naive),
        "sensitivity": {name: round(value, 6) for name, value in sensitivity.items()},
        "calibration_images": [Path(p).name for p in photos],
        "descriptor": f"{spec.default_layer} + gap",
        "search_seconds": round(time.perf_counter() - started, 1),
    }


class _Search:
    """Quantizes the pre-processed graph with the calibrated ranges and measures descriptor fidelity."""

    def __init__(self, spec: ModelSpec, pre: Path, work: Path, evaluation: np.ndarray) -> None:
        self.spec, self.pre, self.work, self.x = spec, pre, work, evaluation
        self.layer = spec.layer(None)
        self.reference = self.descriptors(pre)

    def quantize(self, *, exclude: Sequence[str] = (), only: Sequence[str] = ()) -> Path:
        """The int8 graph with the `exclude` nodes in fp32 (or with only the `only` nodes quantized)."""
        from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

        out = self.work / "candidate.onnx"
        root = logging.getLogger()
        level = root.level
        root.setLevel(max(level, logging.ERROR))  # ORT advises pre-processing on every call: it was done
        try:
            quantize_static(str(self.pre), str(out), None, quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, reduce_range=True,
                            nodes_to_quantize=list(only), nodes_to_exclude=list(exclude),
                            calibration_cache_path=self.work / "ranges.json")
        finally:
            root.setLevel(level)
        return out

    def fidelity(self, photos: np.ndarray, **nodes: Sequence[str]) -> np.ndarray:
        """Cosine of the candidate's descriptor to fp32's for each of the evaluation `photos` (indices)."""
        return np.sum(self.descriptors(self.quantize(**nodes), photos) * self.reference[photos], axis=1)

    def descriptors(self, path: Path, photos: np.ndarray | None = None) -> np.ndarray:
        """L2-normalized descriptors (default layer, global average pooling) of the evaluation photos."""
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        x = self.x if photos is None else self.x[photos]
        value = session.run([self.layer.output], {session.get_inputs()[0].name: x})[0]
        if self.layer.kind == "map":
            value = value.mean(axis=(1, 2) if self.layer.layout == "NHWC" else (2, 3))
        return value / np.maximum(np.linalg.norm(value, axis=1, keepdims=True), 1e-12)


class _Batches:
    """An ONNX Runtime `CalibrationDataReader` over an input tensor, in batches."""

    def __init__(self, name: str, x: np.ndarray, batch: int = 8) -> None:
        self._feeds = iter([{name: x[i:i + batch]} for i in range(0, len(x), batch)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def _calibration_inputs(spec: ModelSpec, photos: Sequence[Path]) -> tuple[np.ndarray, np.ndarray]:
    """Model inputs for calibration (each photo and its mirror image) and for fidelity (each photo once)."""
    pre = spec.preprocessing
    views = []
    for path in photos:
        try:
            image = decode_image(read_file(path).data)
        except ImageDecodeError as exc:
            raise ModelError(f"calibration image {path}: {exc.reason}") from None
        views.append(make_views(image, pre.size, "flip", resize=pre.resize, resample=pre.resample))
    calibration = pre.apply(np.concatenate(views))
    return calibration, calibration[::2].copy()


def _units(model: onnx.ModelProto, output: str) -> list[list[str]]:
    """The weighted nodes that `output` depends on, in graph order, as at most `MAX_UNITS` consecutive runs."""
    producer = {value: node for node in model.graph.node for value in node.output}
    needed, stack = set(), [output]
    while stack:
        node = producer.get(stack.pop())
        if node is not None and node.name not in needed:
            needed.add(node.name)
            stack.extend(node.input)
    nodes = [node.name for node in model.graph.node if node.name in needed and node.op_type in WEIGHTED_OPS]
    if not nodes:
        raise ModelError(f"no {'/'.join(WEIGHTED_OPS)} node computes {output!r}: nothing to quantize")
    size = -(-len(nodes) // MAX_UNITS)
    return [nodes[i:i + size] for i in range(0, len(nodes), size)]


def _input_name(path: Path) -> str:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_inputs()[0].name


def _summary(cosines: np.ndarray) -> dict[str, float]:
    return {"mean_cosine": round(float(cosines.mean()), 5), "min_cosine": round(float(cosines.min()), 5)}


def _progress(units: list[list[str]], enabled: bool, desc: str) -> Any:
    from tqdm import tqdm

    return tqdm(units, desc=desc, unit="node", disable=not enabled, dynamic_ncols=True)
