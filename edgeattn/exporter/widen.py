"""A bfloat16 graph as the float32 graph it stands for, for onnxruntime's CPU provider, which has no bfloat16
kernels for most ops (in onnxruntime 1.31: not even Mul).

Every bfloat16 value is exactly a float32 value (bfloat16 is float32 with the low 16 mantissa bits dropped),
so the widened copy holds the same weights and computes the same function, only without rounding its
intermediate results to bfloat16. Validating it checks the graph and its weights, not bfloat16 arithmetic;
the export's validation record says so (`ran_as`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx_ir as ir

# Attributes that name an element type (Cast.to, EyeLike/Random*.dtype, Attention.softmax_precision).
_TYPE_ATTRIBUTES = frozenset({"to", "dtype", "softmax_precision"})
_NARROW, _WIDE = ir.DataType.BFLOAT16, ir.DataType.FLOAT


def widen_bfloat16(model: ir.Model) -> int:
    """Turn every bfloat16 value, weight, constant and type attribute of ``model`` into float32 in place;
    returns how many were changed."""
    changed = 0
    graphs: list[ir.Graph | ir.Function] = [model.graph, *model.functions.values()]
    for graph in graphs:
        values = [*graph.inputs, *graph.outputs]
        if isinstance(graph, ir.Graph):
            values += list(graph.initializers.values())
        for node in ir.traversal.RecursiveGraphIterator(graph):
            values += list(node.outputs)
            changed += _widen_attributes(node)
        changed += sum(_widen_value(value) for value in values if value is not None)
    return changed


def widened_copy(path: Path, out: Path) -> Path:
    """Write the float32 widening of the bfloat16 file ``path`` to ``out``."""
    from edgeattn.exporter.files import save_onnx

    model = ir.load(path)
    widen_bfloat16(model)
    save_onnx(model, out)
    return out


def _widen_value(value: ir.Value) -> int:
    changed = 0
    if value.const_value is not None and value.const_value.dtype == _NARROW:
        value.const_value = _wide_tensor(value.const_value)
        changed = 1
    if value.dtype == _NARROW:
        value.dtype = _WIDE
        changed = 1
    return changed


def _widen_attributes(node: ir.Node) -> int:
    changed = 0
    for name, attr in list(node.attributes.items()):
        if attr.type == ir.AttributeType.INT and name in _TYPE_ATTRIBUTES and attr.as_int() == _NARROW.value:
            node.attributes[name] = ir.AttrInt64(name, _WIDE.value)
            changed += 1
        elif attr.type == ir.AttributeType.TENSOR and attr.as_tensor().dtype == _NARROW:
            node.attributes[name] = ir.AttrTensor(name, _wide_tensor(attr.as_tensor()))
            changed += 1
    return changed


def _wide_tensor(tensor: ir.TensorProtocol) -> ir.Tensor:
    return ir.tensor(np.asarray(tensor.numpy()).astype(np.float32), name=tensor.name)
