"""The TensorRT form of edgeattn.Attention: the one signature its plugin takes.

The plugin (and the generic function body TensorRT falls back to) take 4-D Q, K, V and always an
additive mask of Q's type, and a concrete softmax_precision. A node in another form is brought to this
one in place: heads split and merged around it, the mask converted or a zero mask supplied.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

BOOL = ir.DataType.BOOL


def to_trt_form(node: ir.Node) -> None:
    """Rewrite `node` (in its graph) into the TensorRT signature; ValueError when types are unknown."""
    query = node.inputs[0]
    if query is None or query.dtype is None:
        raise ValueError(f"the element type of Q of {node.name} is unknown")
    dtype = query.dtype
    if _rank(query) == 3:
        _to_four_dims(node)
    node.resize_inputs(4)
    mask = _additive_mask(node, node.inputs[3], dtype)
    mask.dtype = dtype
    node.replace_input_with(3, mask)
    precision = node.attributes.get_int("softmax_precision", 0)
    if precision == 0:
        node.attributes["softmax_precision"] = ir.AttrInt64("softmax_precision", int(dtype))


def _rank(value: ir.Value) -> int | None:
    return len(value.shape) if value.shape is not None else None


def _before(node: ir.Node, purpose: str, op_type: str, inputs: list[ir.Value | None], **attrs: object) -> ir.Value:
    """A new node just before `node`, named after it and its purpose (names stay deterministic)."""
    name = f"{node.name}/trt_{purpose}"
    new = ir.node(op_type, inputs, attributes=attrs, name=name)
    new.outputs[0].name = name
    node.prepend(new)
    return new.outputs[0]


def _constant(node: ir.Node, purpose: str, array: np.ndarray) -> ir.Value:
    return _before(node, purpose, "Constant", [], value=ir.tensor(array))


def _to_four_dims(node: ir.Node) -> None:
    q_heads = node.attributes.get_int("q_num_heads", 0)
    kv_heads = node.attributes.get_int("kv_num_heads", 0) or q_heads
    if q_heads <= 0:
        raise ValueError(f"3-D attention {node.name} needs q_num_heads to split its heads")
    for index, heads, letter in ((0, q_heads, "q"), (1, kv_heads, "k"), (2, kv_heads, "v")):
        source = node.inputs[index]
        shape = _constant(node, f"{letter}_shape", np.array([0, 0, heads, -1], np.int64))
        split = _before(node, f"{letter}_split", "Reshape", [source, shape])
        four_dims = _before(node, f"{letter}_bhsd", "Transpose", [split], perm=[0, 2, 1, 3])
        four_dims.dtype, four_dims.shape = source.dtype if source is not None else None, ir.Shape([None] * 4)
        node.replace_input_with(index, four_dims)
    _merge_output_heads(node)


def _merge_output_heads(node: ir.Node) -> None:
    """Y becomes 4-D; a Transpose and a Reshape after the node give its users the 3-D tensor again."""
    out = node.outputs[0]
    uses = list(out.uses())
    graph = node.graph
    output_positions = [i for i, v in enumerate(graph.outputs) if v is out] if graph is not None else []
    moved = ir.node("Transpose", [out], attributes={"perm": [0, 2, 1, 3]}, name=f"{node.name}/trt_merge_t")
    shape = ir.node(
        "Constant", [], attributes={"value": ir.tensor(np.array([0, 0, -1], np.int64))}, name=f"{node.name}/trt_merge_s"
    )
    merged = ir.node("Reshape", [moved.outputs[0], shape.outputs[0]], name=f"{node.name}/trt_merge_r")
    node.append([moved, shape, merged])
    result = merged.outputs[0]
    result.name, out.name = out.name, f"{out.name}_4d"
    result.dtype, result.shape = out.dtype, out.shape
    out.shape = None
    moved.outputs[0].name = f"{result.name}_moved"
    shape.outputs[0].name = f"{result.name}_shape"
    for user, index in uses:
        user.replace_input_with(index, result)
    for position in output_positions:
        graph.outputs[position] = result


def _additive_mask(node: ir.Node, mask: ir.Value | None, dtype: ir.DataType) -> ir.Value:
    numpy_dtype = dtype.numpy()
    if mask is None:
        return _constant(node, "zero_mask", np.zeros((1, 1, 1, 1), numpy_dtype))
    if mask.dtype == BOOL:
        zero = _constant(node, "mask_zero", np.zeros((), numpy_dtype))
        minus_inf = _constant(node, "mask_minus_inf", np.full((), -np.inf, numpy_dtype))
        return _before(node, "additive_mask", "Where", [mask, zero, minus_inf])
    if mask.dtype is None:
        raise ValueError(f"the element type of the mask of {node.name} is unknown")
    if mask.dtype != dtype:
        return _before(node, "mask_cast", "Cast", [mask], to=int(dtype))
    return mask
