"""Shape and type information for graphs that lack it (the legacy exporter writes none for intermediates).

onnxruntime's symbolic shape inference runs on a copy of the graph without its large initializers (it
knows the com.microsoft ops and resolves `-1` in Reshape symbolically, so head counts come out); ONNX
shape inference is the fallback. Only values with no shape or type are filled in; what the file
already says is kept.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Iterator

import onnx
import onnx_ir as ir
from edgeattn.ops.spec import DOMAIN

_BIG_TENSOR_BYTES = 1024
_FUSED_OPS = {"Attention", "MultiHeadAttention"}


def needs_shapes(model: ir.Model) -> bool:
    """True when a value the rules read has no shape or type: the inputs of fused attention nodes, and,
    when the graph has a Softmax, the inputs and outputs of its MatMul nodes. A graph already rewritten
    (no Softmax, no fused attention) needs none."""
    for graph in model.graphs():
        nodes = list(graph)
        has_softmax = any(node.op_type == "Softmax" for node in nodes)
        for node in nodes:
            if node.domain == DOMAIN:
                continue
            if node.op_type in _FUSED_OPS:
                values = list(node.inputs)
            elif node.op_type == "MatMul" and has_softmax or node.op_type == "Softmax":
                values = [*node.inputs, *node.outputs]
            else:
                continue
            if any(v is not None and (v.shape is None or v.dtype is None) for v in values):
                return True
    return False


def ensure_shapes(model: ir.Model) -> bool:
    """Infer missing shapes and types in place; returns whether anything was added."""
    if not needs_shapes(model):
        return False
    with _without_big_initializers(model):
        proto = ir.serde.serialize_model(model)
    inferred = _infer(proto)
    if inferred is None:
        return False
    known = _value_types(inferred.graph)
    changed = False
    for graph in model.graphs():
        for value in _graph_values(graph):
            type_proto = known.get(value.name or "")
            if type_proto is not None:
                changed |= _fill(value, type_proto)
    return changed


def _infer(proto: onnx.ModelProto) -> onnx.ModelProto | None:
    try:
        inferred = _symbolic_shapes(proto)
        if inferred is not None:
            return inferred
    except Exception:  # it raises bare Exceptions on ops it does not know; fall back to ONNX's inference
        pass
    try:
        return onnx.shape_inference.infer_shapes(proto, check_type=False, strict_mode=False, data_prop=True)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError):
        return None


def _symbolic_shapes(proto: onnx.ModelProto) -> onnx.ModelProto | None:
    """onnxruntime's `SymbolicShapeInference.infer_shapes` (auto_merge on), without its side effect: when
    inference is incomplete it saves `sym_shape_infer_temp.onnx` into the current directory, then
    raises. Here an incomplete inference is None (ONNX's inference is tried instead) and nothing is
    written."""
    from onnxruntime.tools import symbolic_shape_infer
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference, get_opset

    opset = get_opset(proto)
    if not opset or opset < 7:
        return None
    inference = SymbolicShapeInference(2**31 - 1, True, False, 0)
    complete = False
    log = symbolic_shape_infer.logger  # its warnings ("Cannot determine if ... < 0") are not the user's business
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        inference._preprocess(proto)
        while inference.run_:
            complete = inference._infer_impl()
        inference._update_output_from_vi()
    finally:
        log.setLevel(level)
    return inference.out_mp_ if complete else None


@contextlib.contextmanager
def _without_big_initializers(model: ir.Model) -> Iterator[None]:
    """Large initializers become typed graph inputs for the duration (shape inference needs no data)."""
    graph = model.graph
    moved: list[tuple[ir.Value, ir.TensorProtocol]] = []
    original_inputs = list(graph.inputs)
    for value in list(graph.initializers.values()):
        tensor = value.const_value
        if tensor is None or tensor.nbytes <= _BIG_TENSOR_BYTES:
            continue
        if value.shape is None:
            value.shape = tensor.shape  # type: ignore[assignment]
        if value.dtype is None:
            value.dtype = tensor.dtype
        moved.append((value, tensor))
        graph.initializers.pop(value.name)  # type: ignore[arg-type]
        value.const_value = None
        if value not in original_inputs:
            graph.inputs.append(value)
    try:
        yield
    finally:
        graph.inputs.clear()
        graph.inputs.extend(original_inputs)
        for value, tensor in moved:
            value.const_value = tensor
            graph.register_initializer(value)


def _graph_values(graph: ir.Graph) -> Iterator[ir.Value]:
    yield from graph.inputs
    for node in graph:
        yield from node.outputs


def _value_types(graph: onnx.GraphProto) -> dict[str, onnx.TypeProto]:
    infos = [*graph.input, *graph.value_info, *graph.output]
    return {info.name: info.type for info in infos if info.type.HasField("tensor_type")}


def _fill(value: ir.Value, type_proto: onnx.TypeProto) -> bool:
    tensor_type = type_proto.tensor_type
    changed = False
    if value.dtype is None and tensor_type.elem_type:
        value.dtype = ir.DataType(tensor_type.elem_type)
        changed = True
    if value.shape is None and tensor_type.HasField("shape"):
        value.shape = ir.Shape([_dim(d) for d in tensor_type.shape.dim])
        changed = True
    return changed


def _dim(dim: onnx.TensorShapeProto.Dimension) -> int | str | None:
    if dim.HasField("dim_value"):
        return dim.dim_value
    if dim.HasField("dim_param"):
        return dim.dim_param
    return None
