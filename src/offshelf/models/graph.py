"""Checks and edits of ONNX graphs: does a graph fit a `ModelSpec`, and exposing intermediate values."""

from __future__ import annotations

from pathlib import Path

import onnx

from offshelf.models.errors import ModelError
from offshelf.models.spec import Layer, ModelSpec

Shape = tuple[int | None, ...]


def load_checked(path: Path, spec: ModelSpec) -> onnx.ModelProto:
    """Load the ONNX file at `path` and check it against `spec`'s preprocessing and layers."""
    if not path.is_file():
        raise ModelError(f"model {spec.name!r}: ONNX file {path} does not exist")
    try:
        model = onnx.load(str(path))
    except Exception as error:  # onnx raises protobuf's DecodeError and others
        raise ModelError(f"model {spec.name!r}: cannot read {path} as ONNX: {error}") from error
    check_input(model, spec)
    check_layers(model, spec)
    return model


def output_names(model: onnx.ModelProto) -> list[str]:
    """Names of the graph outputs."""
    return [value.name for value in model.graph.output]


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """The graph inputs that are fed at run time (not initializers listed as inputs)."""
    initializers = {tensor.name for tensor in model.graph.initializer}
    return [value for value in model.graph.input if value.name not in initializers]


def check_input(model: onnx.ModelProto, spec: ModelSpec) -> None:
    """The graph must take one float32 image batch shaped as `spec.preprocessing` produces it."""
    inputs = graph_inputs(model)
    if len(inputs) != 1:
        raise ModelError(f"model {spec.name!r}: expected one graph input, found {[v.name for v in inputs]}")
    pre = spec.preprocessing
    expected = (None, 3, pre.size, pre.size) if pre.layout == "NCHW" else (None, pre.size, pre.size, 3)
    tensor = inputs[0].type.tensor_type
    shape = _shape(inputs[0])
    fits = shape is not None and len(shape) == 4 and all(d in (None, e) for d, e in zip(shape[1:], expected[1:]))
    if tensor.elem_type != onnx.TensorProto.FLOAT or not fits:
        raise ModelError(
            f"model {spec.name!r}: graph input {inputs[0].name!r} is "
            f"{onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type)} {shape}, but the preprocessing "
            f"gives float32 {pre.layout} (N, {', '.join(map(str, expected[1:]))})"
        )


def check_layers(model: onnx.ModelProto, spec: ModelSpec) -> dict[str, Shape | None]:
    """Check that every layer's `output` is a value of the graph, of the layer's rank and channel count.

    Returns each layer's shape as far as ONNX shape inference can tell (None for a symbolic dim).
    """
    produced = {name for node in model.graph.node for name in node.output}
    unknown = [layer.output for layer in spec.layers if layer.output not in produced]
    if unknown:
        raise ModelError(
            f"model {spec.name!r}: no value named {unknown} in the graph; "
            f"its outputs are {output_names(model)}"
        )
    shapes = value_shapes(model)
    layer_shapes = {layer.name: shapes.get(layer.output) for layer in spec.layers}
    for layer in spec.layers:
        problem = _layer_shape_problem(layer, layer_shapes[layer.name])
        if problem:
            raise ModelError(f"model {spec.name!r}: layer {layer.name!r} ({layer.output!r}) {problem}")
    return layer_shapes


def value_shapes(model: onnx.ModelProto) -> dict[str, Shape]:
    """Shapes (None for a symbolic dim) of the values that ONNX shape inference can tell."""
    inferred = onnx.shape_inference.infer_shapes(model)
    values = [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]
    return {value.name: shape for value in values if (shape := _shape(value)) is not None}


def with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy of `model` that also returns the intermediate values `names`, after its own outputs."""
    inferred = onnx.shape_inference.infer_shapes(model)
    typed = {value.name: value for value in inferred.graph.value_info}
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    copy.graph.output.extend(typed.get(name, onnx.helper.make_empty_tensor_value_info(name)) for name in names)
    onnx.checker.check_model(copy)
    return copy


def _layer_shape_problem(layer: Layer, shape: Shape | None) -> str | None:
    """Why a value of `shape` cannot be `layer` (None when it can or the shape is unknown)."""
    if shape is None:
        return None
    rank = 4 if layer.kind == "map" else 2
    if len(shape) != rank:
        return f"is a {layer.kind} layer, so rank {rank}, but the value has shape {shape}"
    channels = shape[3] if layer.kind == "map" and layer.layout == "NHWC" else shape[1]
    if channels not in (None, layer.channels):
        return f"declares {layer.channels} channels, but the value has shape {shape}"
    return None


def _shape(value: onnx.ValueInfoProto) -> Shape | None:
    """A value's tensor shape, None where unknown."""
    tensor = value.type.tensor_type
    if not tensor.HasField("shape"):
        return None
    return tuple(dim.dim_value if dim.HasField("dim_value") else None for dim in tensor.shape.dim)
