"""Reading attention operands through the ops exporters put in front of them.

Each function looks at the producers of a value (never changing the graph) and returns what the
edgeattn op should take instead: Q without its √scale factor, K in [B, H, S, d] without the transposes,
K and V before grouped-query head repetition. The nodes read through are left in place; the ones no
longer used are removed after the rewrite, the ones still used elsewhere stay.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx_ir as ir

from edgeattn.graphs.rules.base import Refusal, ints_attribute
from edgeattn.graphs.values import dims, rank, same_dim, shape_vector, static_dim, static_ints, static_scalar

SWAP_LAST_TWO_4D = (0, 1, 3, 2)


@dataclass(frozen=True)
class Operand:
    """A value, and the Transpose to apply to it (None: use as is)."""

    value: ir.Value
    perm: tuple[int, ...] | None = None

    def build(self, op: object) -> ir.Value:
        if self.perm is None:
            return self.value
        moved: ir.Value = op.Transpose(self.value, perm=list(self.perm))  # type: ignore[attr-defined]
        shape = self.value.shape
        if shape is not None and len(shape) == len(self.perm):  # what later passes read (plugins: head sizes)
            moved.shape, moved.dtype = ir.Shape([shape[axis] for axis in self.perm]), self.value.dtype
        return moved


def _producer(value: ir.Value | None, *op_types: str) -> ir.Node | None:
    node = value.producer() if value is not None else None
    if node is None or node.domain not in ("", "ai.onnx") or node.op_type not in op_types:
        return None
    return node


def peel_scale(value: ir.Value) -> tuple[ir.Value, float]:
    """`x` and `s` when `value` is x·s or x/s with a constant scalar s; else (value, 1.0)."""
    node = _producer(value, "Mul", "Div")
    if node is None or len(node.inputs) != 2:
        return value, 1.0
    orders = [(0, 1), (1, 0)] if node.op_type == "Mul" else [(0, 1)]
    for base_index, factor_index in orders:
        base, factor = node.inputs[base_index], node.inputs[factor_index]
        number = static_scalar(factor)
        factor_rank = rank(factor)
        if base is None or number is None or number == 0 or factor_rank is None:
            continue
        base_rank = rank(base)
        if base_rank is None or factor_rank > base_rank:
            continue
        return base, number if node.op_type == "Mul" else 1.0 / number
    return value, 1.0


def peel_scales(value: ir.Value) -> tuple[ir.Value, float]:
    """All constant scalar factors in a chain (x·a/b...)."""
    total = 1.0
    for _ in range(4):
        base, factor = peel_scale(value)
        if base is value:
            break
        value, total = base, total * factor
    return value, total


def compose(first: tuple[int, ...], then: tuple[int, ...]) -> tuple[int, ...] | None:
    """The permutation equal to Transpose(first) followed by Transpose(then); None when identity."""
    composed = tuple(first[axis] for axis in then)
    return None if composed == tuple(range(len(composed))) else composed


@dataclass(frozen=True)
class KeyReading:
    key: Operand  # K as [B, H, S, d] (or [N, S, d])
    scale: float  # constant factors found on the key side
    form: str  # "transpose", "reshape-transpose" or "pre-transposed"


def read_key(key_t: ir.Value) -> KeyReading:
    """K from the second operand of Q·Kᵀ, reading through scales and the transpose of its last two axes."""
    value, scale = peel_scales(key_t)
    key_rank = rank(value)
    swap = tuple(range(key_rank - 2)) + (key_rank - 1, key_rank - 2) if key_rank else SWAP_LAST_TWO_4D
    node = _producer(value, "Transpose")
    if node is not None and key_rank is not None:
        perm = ints_attribute(node, "perm", None)
        perm = tuple(perm) if perm is not None else tuple(reversed(range(key_rank)))
        if sorted(perm) != list(range(key_rank)):
            raise Refusal(f"the Transpose of K has perm {list(perm)}, not a permutation of its {key_rank} axes", node)
        base, inner_scale = peel_scales(node.inputs[0])
        return KeyReading(Operand(base, compose(perm, swap)), scale * inner_scale, "transpose")
    unflattened = _reshape_transpose_reshape(value)
    if unflattened is not None:
        base, inner_scale = peel_scales(unflattened)
        return KeyReading(Operand(base), scale * inner_scale, "reshape-transpose")
    return KeyReading(Operand(value, swap), scale, "pre-transposed")


def _reshape_transpose_reshape(value: ir.Value) -> ir.Value | None:
    """K when `value` is Reshape(Transpose(Reshape(K, [N, S, d]), [0, 2, 1]), [B, H, d, S]), as the
    dynamo exporter writes a 4-D transpose; proven from dims, else None."""
    outer = _producer(value, "Reshape")
    middle = _producer(outer.inputs[0], "Transpose") if outer is not None else None
    inner = _producer(middle.inputs[0], "Reshape") if middle is not None else None
    if inner is None or middle is None or tuple(ints_attribute(middle, "perm", ())) != (0, 2, 1):
        return None
    key = inner.inputs[0]
    flat = _known(dims(inner.outputs[0])) or shape_vector(inner.inputs[1])
    out = _known(dims(value)) or shape_vector(outer.inputs[1])
    key_dims = dims(key)
    if key_dims is None or flat is None or out is None or len(key_dims) != 4 or len(flat) != 3 or len(out) != 4:
        return None
    same = [same_dim(key_dims[i], out[i]) for i in (0, 1)] + [
        same_dim(key_dims[2], flat[1]),
        same_dim(key_dims[3], flat[2]),
        same_dim(out[2], key_dims[3]),
        same_dim(out[3], key_dims[2]),
    ]
    return key if all(same) else None


@dataclass(frozen=True)
class HeadRepeat:
    """K or V before `Reshape(Expand(Unsqueeze(x, 2), [B, Hkv, g, S, d]), [B, Hkv·g, S, d])`."""

    base: ir.Value
    group: int


def read_head_repeat(value: ir.Value) -> HeadRepeat | None:
    """The grouped-query repetition of heads in front of `value`, when it provably is one."""
    reshape = _producer(value, "Reshape")
    expand = _producer(reshape.inputs[0], "Expand") if reshape is not None else None
    unsqueeze = _producer(expand.inputs[0], "Unsqueeze") if expand is not None else None
    if unsqueeze is None or expand is None or reshape is None:
        return None
    axes = static_ints(unsqueeze.inputs[1]) if len(unsqueeze.inputs) > 1 else ints_attribute(unsqueeze, "axes", [])
    base = unsqueeze.inputs[0]
    base_dims, expanded = dims(base), _expanded_dims(expand)
    merged = _known(dims(value)) or shape_vector(reshape.inputs[1])
    if axes not in ([2], [-3]) or base_dims is None or expanded is None or merged is None:
        return None
    if len(base_dims) != 4 or len(expanded) != 5 or len(merged) != 4:
        return None
    group = expanded[2]
    kept = [same_dim(base_dims[i], expanded[j]) for i, j in ((0, 0), (1, 1), (2, 3), (3, 4))]
    merged_ok = [same_dim(merged[i], base_dims[i]) for i in (2, 3)]
    heads = base_dims[1]
    if not isinstance(group, int) or not isinstance(heads, int) or not all(kept + merged_ok):
        return None
    if merged[1] != heads * group:
        return None
    return HeadRepeat(base, group)


def _known(shape: list[int | str | None] | None) -> list[int | str | None] | None:
    """`shape` when every dim is known (static or a named symbol), else None."""
    return shape if shape is not None and all(d is not None for d in shape) else None


def _expanded_dims(expand: ir.Node) -> list[int | str | None] | None:
    """The dims Expand produces: from its output's shape, else from its target shape vector."""
    out = _known(dims(expand.outputs[0]))
    if out is not None:
        return out
    target, source = shape_vector(expand.inputs[1]), dims(expand.inputs[0])
    if target is None or source is None or len(target) != len(source):
        return dims(expand.outputs[0])
    return [s if t == 1 else t for s, t in zip(source, target)]


def read_key_value_heads(key: ir.Value, value: ir.Value) -> tuple[ir.Value, ir.Value, int]:
    """K and V before a shared grouped-query repetition, and the group size (1 when there is none)."""
    key_repeat, value_repeat = read_head_repeat(key), read_head_repeat(value)
    if key_repeat is None or value_repeat is None or key_repeat.group != value_repeat.group:
        return key, value, 1
    return key_repeat.base, value_repeat.base, key_repeat.group


def head_counts(query: ir.Value, key: ir.Value) -> tuple[int | None, int | None]:
    return static_dim(query, 1), static_dim(key, 1)
