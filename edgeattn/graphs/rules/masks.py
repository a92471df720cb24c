"""Masks as attention sites write them, and the one mask edgeattn.Attention takes instead.

A decomposed site may add a bias (`Add`), or select a fill value (`Where`): `Where(c, scores, fill)`
keeps where c holds, `Where(c, fill, scores)` masks where it holds. A single -inf selection becomes a
boolean mask; anything else becomes one additive mask (fills as `Where(c, 0, fill)`), summed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import onnx_ir as ir

from edgeattn.graphs.rules.base import Refusal
from edgeattn.graphs.values import dims, static_scalar

# A fill value this negative (or -inf) makes a masked score vanish in float32 and float16 softmax.
MAX_FILL = -1.0e4


@dataclass(frozen=True)
class MaskTerm:
    kind: str  # "add": value is added; "keep": where value holds, the score stays; "drop": where it holds, fill
    value: ir.Value
    fill: float = 0.0


def where_term(kind: str, condition: ir.Value, fill_value: ir.Value | None) -> MaskTerm:
    fill = static_scalar(fill_value)
    if fill is None:
        raise Refusal("the Where mask's fill value is not a constant scalar", fill_value)
    if not (math.isinf(fill) and fill < 0) and fill > MAX_FILL:
        raise Refusal(f"the Where mask's fill value {fill:g} is not -inf or at most {MAX_FILL:g}", fill_value)
    return MaskTerm(kind, condition, fill)


def mask_kind(terms: Sequence[MaskTerm]) -> str:
    if not terms:
        return "none"
    if len(terms) == 1 and terms[0].kind != "add" and math.isinf(terms[0].fill):
        return "bool"
    return "additive"


def check_fits(terms: Sequence[MaskTerm], scores: ir.Value | None) -> None:
    """Refuse a mask that would broadcast the scores to a larger shape (the op keeps the scores' shape)."""
    target = dims(scores)
    for term in terms:
        mask = dims(term.value)
        if mask is None or target is None:
            continue
        if len(mask) > len(target):
            raise Refusal(f"the mask of shape {mask} has more axes than the scores {target}", term.value)
        for mask_dim, score_dim in zip(reversed(mask), reversed(target)):
            if mask_dim != 1 and score_dim == 1:
                raise Refusal(f"the mask of shape {mask} does not broadcast to the scores {target}", term.value)


def build_mask(op: Any, terms: Sequence[MaskTerm], dtype: ir.DataType | None) -> ir.Value | None:
    """Emit the op's mask: boolean (true = attend) for a single -inf selection, else additive of `dtype`."""
    if not terms:
        return None
    if mask_kind(terms) == "bool":
        term = terms[0]
        return term.value if term.kind == "keep" else op.Not(term.value)
    parts = [term.value if term.kind == "add" else _selected_fill(op, term, dtype) for term in terms]
    total = parts[0]
    for part in parts[1:]:
        total = op.Add(total, part)
    return total


def _selected_fill(op: Any, term: MaskTerm, dtype: ir.DataType | None) -> ir.Value:
    if dtype is None:
        raise Refusal("the element type of the scores is unknown", term.value)
    numpy_dtype = dtype.numpy()
    zero = op.Constant(value=ir.tensor(np.zeros((), numpy_dtype)))
    fill = op.Constant(value=ir.tensor(np.full((), term.fill, numpy_dtype)))
    if term.kind == "keep":
        return op.Where(term.value, zero, fill)
    return op.Where(term.value, fill, zero)


def padding_mask(op: Any, keep: ir.Value, fill: float, dtype: ir.DataType, axes: list[int]) -> ir.Value:
    """Additive mask from a 0/1 (or boolean) keep tensor, with `fill` where it is 0, unsqueezed at `axes`."""
    numpy_dtype = dtype.numpy()
    condition = keep if keep.dtype == ir.DataType.BOOL else op.Cast(keep, to=int(ir.DataType.BOOL))
    zero = op.Constant(value=ir.tensor(np.zeros((), numpy_dtype)))
    filled = op.Constant(value=ir.tensor(np.full((), fill, numpy_dtype)))
    additive = op.Where(condition, zero, filled)
    if not axes:
        return additive
    return op.Unsqueeze(additive, op.Constant(value=ir.tensor(np.array(axes, np.int64))))


def lengths_to_keep(op: Any, lengths: ir.Value, total: ir.Value) -> ir.Value:
    """[B] key lengths and a scalar total length -> [B, T] booleans (key j < length)."""
    as_int = op.Cast(lengths, to=int(ir.DataType.INT64))
    positions = op.Range(
        op.Constant(value=ir.tensor(np.array(0, np.int64))), total, op.Constant(value=ir.tensor(np.array(1, np.int64)))
    )
    column = op.Unsqueeze(as_int, op.Constant(value=ir.tensor(np.array([1], np.int64))))
    return op.Less(positions, column)
