"""What is known about a value before running the graph: constants, small computed constants, dims.

Attention scales are often computed, not stored: the legacy exporter writes
`Sqrt(Cast(1 / Sqrt(Cast(Slice(Shape(q), -1)))))`. `static_array` evaluates such small chains on
static shape information, without touching the graph.
"""

from __future__ import annotations

import contextvars
import functools
from typing import Any, Callable

import numpy as np
import onnx_ir as ir

from edgeattn.ops.dims import Dim, dims, static_dim  # noqa: F401 - re-exported: graph code reads dims here

_MAX_DEPTH = 24
_MAX_ELEMENTS = 64  # only small tensors are evaluated: scales, shapes, axes
# Results of static_array / shape_vector during one outermost call: a value read by several nodes
# (x + x + x ...) is evaluated once, so the work is linear in the graph, not exponential in the depth.
_MEMO: contextvars.ContextVar[dict[Any, Any] | None] = contextvars.ContextVar("edgeattn_values_memo", default=None)


def _memoized(fn: Callable[[Any, int], Any]) -> Callable[[Any, int], Any]:
    @functools.wraps(fn)
    def wrapper(value: Any, depth: int) -> Any:
        memo = _MEMO.get()
        token = _MEMO.set({}) if memo is None else None
        try:
            table = _MEMO.get()
            key = (fn.__name__, value, depth)
            if key not in table:  # type: ignore[operator]
                table[key] = fn(value, depth)  # type: ignore[index]
            return table[key]  # type: ignore[index]
        finally:
            if token is not None:
                _MEMO.reset(token)

    return wrapper


def rank(value: ir.Value | None) -> int | None:
    shape = dims(value)
    return None if shape is None else len(shape)


def same_dim(a: Dim, b: Dim) -> bool:
    """True when two dims are provably equal (same int, or the same named symbol)."""
    return a is not None and a == b


def static_array(value: ir.Value | None, depth: int = _MAX_DEPTH) -> np.ndarray | None:
    """The value's contents when they follow from constants and static dims, else None."""
    return _static_array(value, depth)


@_memoized
def _static_array(value: ir.Value | None, depth: int) -> np.ndarray | None:
    if value is None or depth <= 0:
        return None
    try:
        tensor = ir.convenience.get_const_tensor(value)
    except (TypeError, ValueError):  # a Constant whose `value` is not a tensor (a file may say anything)
        return None
    if tensor is not None:
        if tensor.size > _MAX_ELEMENTS:
            return None
        try:
            return np.asarray(tensor.numpy())
        except Exception:  # external data that cannot be read is simply not static
            return None
    node = value.producer()
    if node is None or node.domain not in ("", "ai.onnx"):
        return None
    evaluate = _EVALUATORS.get(node.op_type)
    if evaluate is None:
        return None
    try:
        result = evaluate(node, depth - 1)
    except (ValueError, IndexError, TypeError, FloatingPointError):
        return None
    if result is None or result.size > _MAX_ELEMENTS:
        return None
    return result


def static_scalar(value: ir.Value | None) -> float | None:
    array = static_array(value)
    if array is None or array.size != 1 or not np.issubdtype(array.dtype, np.number):
        return None
    return float(array.reshape(()))


def static_ints(value: ir.Value | None) -> list[int] | None:
    array = static_array(value)
    if array is None or not np.issubdtype(array.dtype, np.integer):
        return None
    return [int(x) for x in array.reshape(-1)]


def _inputs(node: ir.Node, depth: int) -> list[np.ndarray] | None:
    arrays = [static_array(v, depth) for v in node.inputs]
    return None if any(a is None for a in arrays) else arrays  # type: ignore[return-value]


def _elementwise(fn: Callable[..., np.ndarray]) -> Callable[[ir.Node, int], np.ndarray | None]:
    def evaluate(node: ir.Node, depth: int) -> np.ndarray | None:
        arrays = _inputs(node, depth)
        if arrays is None:
            return None
        with np.errstate(all="raise"):
            result = np.asarray(fn(*arrays))
        return result.astype(arrays[0].dtype) if np.issubdtype(arrays[0].dtype, np.floating) else result

    return evaluate


def _int_attr(node: ir.Node, name: str, default: int) -> int | None:
    """An INT attribute, `default` when absent, None when it is a reference or of another type."""
    attr = node.attributes.get(name)
    if attr is None:
        return default
    return None if attr.is_ref() or attr.type != ir.AttributeType.INT else int(attr.value)


def _shape_slice(node: ir.Node, shape: list[Dim]) -> list[Dim] | None:
    start, end = _int_attr(node, "start", 0), _int_attr(node, "end", len(shape))
    return None if start is None or end is None else shape[slice(start, end)]


def _shape(node: ir.Node, depth: int) -> np.ndarray | None:
    shape = dims(node.inputs[0]) if node.inputs else None
    if shape is None:
        return None
    selected = _shape_slice(node, shape)
    if selected is None:
        return None
    if any(not isinstance(d, int) for d in selected):
        return None  # Gather/Slice of this Shape can still pick its static entries (_shape_entries)
    return np.array(selected, np.int64)


def shape_vector(value: ir.Value | None, depth: int = 8) -> list[Dim] | None:
    """The entries of a 1-D shape tensor, symbolic where they come from symbolic dims (e.g. `['B', 4, -1]`).

    Follows what exporters build shape tensors from: constants, Shape, Slice, Gather, Concat, Cast,
    Unsqueeze/Squeeze/Reshape of such vectors. None when an entry cannot be known, even symbolically."""
    entries = _shape_vector(value, depth)
    return None if entries is None else list(entries)


@_memoized
def _shape_vector(value: ir.Value | None, depth: int) -> list[Dim] | None:
    if value is None or depth <= 0:
        return None
    array = static_array(value)
    if array is not None and np.issubdtype(array.dtype, np.integer) and array.ndim <= 1:
        return [int(x) for x in array.reshape(-1)]
    node = value.producer()
    if node is None or node.domain not in ("", "ai.onnx") or not node.inputs:
        return None
    if node.op_type == "Shape":
        shape = dims(node.inputs[0])
        return None if shape is None else _shape_slice(node, shape)
    if node.op_type in ("Cast", "Unsqueeze", "Squeeze", "Reshape", "Identity"):
        return shape_vector(node.inputs[0], depth - 1)
    if node.op_type == "Concat":
        parts = [shape_vector(v, depth - 1) for v in node.inputs]
        return None if any(p is None for p in parts) else [d for p in parts for d in p]  # type: ignore[union-attr]
    if node.op_type in ("Slice", "Gather"):
        return _pick(node, shape_vector(node.inputs[0], depth - 1))
    return None


def _pick(node: ir.Node, entries: list[Dim] | None) -> list[Dim] | None:
    if entries is None:
        return None
    if node.op_type == "Gather":
        indices = static_ints(node.inputs[1]) if len(node.inputs) > 1 else None
        if indices is None or any(not -len(entries) <= i < len(entries) for i in indices):
            return None
        return [entries[i] for i in indices]
    bounds = [static_ints(v) for v in node.inputs[1:]]
    if len(bounds) < 2 or any(b is None for b in bounds):
        return None
    starts, ends = bounds[0], bounds[1]
    steps = bounds[3] if len(bounds) > 3 else [1]
    if len(starts) != 1 or len(ends) != 1 or len(steps) != 1 or steps[0] == 0:  # type: ignore[arg-type]
        return None
    return entries[slice(starts[0], ends[0], steps[0])]  # type: ignore[index]


def _gather(node: ir.Node, depth: int) -> np.ndarray | None:
    indices = static_array(node.inputs[1], depth)
    data = static_array(node.inputs[0], depth)
    if indices is None:
        return None
    if data is None:
        entries = shape_vector(node.inputs[0], depth)
        picked = None if entries is None else np.take(np.array(entries, dtype=object), indices)
        if picked is None or any(not isinstance(x, int) for x in np.atleast_1d(picked)):
            return None
        return np.asarray(picked, dtype=np.int64)
    return np.take(data, indices, axis=node.attributes.get_int("axis", 0))


def _slice(node: ir.Node, depth: int) -> np.ndarray | None:
    if len(node.inputs) < 3:
        return None
    bounds = [static_array(v, depth) for v in node.inputs[1:]]
    if any(b is None for b in bounds):
        return None
    data = static_array(node.inputs[0], depth)
    if data is None:
        entries = shape_vector(node.inputs[0], depth)
        if entries is None:
            return None
        data = np.array(entries, dtype=object)
    starts, ends = bounds[0], bounds[1]
    axes = bounds[2] if len(bounds) > 2 else np.arange(len(starts))
    steps = bounds[3] if len(bounds) > 3 else np.ones(len(starts), np.int64)
    index = [slice(None)] * data.ndim
    for start, end, axis, step in zip(starts, ends, axes, steps):
        index[int(axis)] = slice(int(start), int(end), int(step))
    result = data[tuple(index)]
    if result.dtype == object:
        if any(not isinstance(x, int) for x in result.reshape(-1)):
            return None
        result = result.astype(np.int64)
    return result


def _cast(node: ir.Node, depth: int) -> np.ndarray | None:
    array = static_array(node.inputs[0], depth)
    to = node.attributes.get_int("to", 0)
    if array is None or to == 0:
        return None
    return array.astype(ir.DataType(to).numpy())


def _constant(node: ir.Node, depth: int) -> np.ndarray | None:
    for name in ("value_float", "value_int"):
        if name in node.attributes:
            attr = node.attributes[name]
            return None if attr.is_ref() else np.array(attr.value, np.float32 if name == "value_float" else np.int64)
    for name in ("value_floats", "value_ints"):
        if name in node.attributes:
            attr = node.attributes[name]
            return None if attr.is_ref() else np.array(list(attr.value), np.float32 if name == "value_floats" else np.int64)
    return None


def _reshape(node: ir.Node, depth: int) -> np.ndarray | None:
    arrays = _inputs(node, depth)
    if arrays is None:
        return None
    data, shape = arrays
    target = [int(d) if d != 0 else data.shape[i] for i, d in enumerate(shape)]
    return data.reshape(target)


def _unsqueeze(node: ir.Node, depth: int) -> np.ndarray | None:
    data = static_array(node.inputs[0], depth)
    axes = static_ints(node.inputs[1]) if len(node.inputs) > 1 else list(node.attributes.get_ints("axes", []))
    if data is None or axes is None:
        return None
    return np.expand_dims(data, tuple(a if a >= 0 else a + data.ndim + len(axes) for a in axes))


def _squeeze(node: ir.Node, depth: int) -> np.ndarray | None:
    data = static_array(node.inputs[0], depth)
    if data is None:
        return None
    axes = static_ints(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1] is not None else None
    return np.squeeze(data, axis=None if axes is None else tuple(axes))


def _concat(node: ir.Node, depth: int) -> np.ndarray | None:
    arrays = _inputs(node, depth)
    return None if arrays is None else np.concatenate(arrays, axis=node.attributes.get_int("axis", 0))


_EVALUATORS: dict[str, Callable[[ir.Node, int], np.ndarray | None]] = {
    "Identity": _elementwise(lambda x: x),
    "Neg": _elementwise(np.negative),
    "Sqrt": _elementwise(np.sqrt),
    "Reciprocal": _elementwise(np.reciprocal),
    "Add": _elementwise(np.add),
    "Sub": _elementwise(np.subtract),
    "Mul": _elementwise(np.multiply),
    "Div": _elementwise(lambda a, b: a // b if np.issubdtype(a.dtype, np.integer) else a / b),
    "Pow": _elementwise(np.power),
    "Shape": _shape,
    "Gather": _gather,
    "Slice": _slice,
    "Cast": _cast,
    "Constant": _constant,
    "Reshape": _reshape,
    "Unsqueeze": _unsqueeze,
    "Squeeze": _squeeze,
    "Concat": _concat,
}
