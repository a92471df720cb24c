"""Attention written with Einsum (tf2onnx's BERT): `Einsum(q, k) -> [scale, mask] -> Softmax -> Einsum(p, v)`.

The two products must be exactly attention's: the first contracts one letter d of Q [b, h, s, d] and
K [b, h, t, d] (any order of axes in each operand, and either operand first) into scores [b, h, s, t]; the second contracts t
of those scores with V [b, h, t, e] into an output of b, h, s, e in any order. The operands are
transposed to [B, H, S, d] for the op and its output back to the site's order. Anything else (an
ellipsis, a repeated letter, a product over more axes) is refused with the equation.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import onnx_ir as ir
from onnxscript.rewriter import pattern as orp

from edgeattn.graphs.rules.base import Refusal, attribute
from edgeattn.graphs.rules.decomposed import DecomposedAttention, _mask_step
from edgeattn.graphs.rules.operands import KeyReading, Operand, peel_scales

_IDENTITY = (0, 1, 2, 3)


class EinsumAttention(DecomposedAttention):
    dialect = "einsum"
    root = ("", "Einsum")

    def pattern(self, op, q_in, k_in, v_in, qk_scale, add1, cond1, fill1, add2, cond2, fill2, nan_fill):
        scores = op.Einsum(q_in, k_in, _outputs=["scores"])
        scaled = orp.OrValue(
            [op.Mul(scores, qk_scale), op.Mul(qk_scale, scores), op.Div(scores, qk_scale), scores],
            tag_var="scale_op",
            tag_values=["mul", "mul", "div", "none"],
        )
        masked = _mask_step(op, scaled, add1, cond1, fill1, "mask1")
        masked = _mask_step(op, masked, add2, cond2, fill2, "mask2")
        logits = orp.OrValue([op.Cast(masked, _outputs=["pre_cast"]), masked])
        probs = op.Softmax(logits, _outputs=["probs"])
        probs_cast = orp.OrValue([op.Cast(op.Cast(probs)), op.Cast(probs), probs])
        guarded = orp.OrValue(
            [op.Where(op.IsNaN(probs_cast), nan_fill, probs_cast), probs_cast], tag_var="guard", tag_values=[True, False]
        )
        dropped = orp.OrValue([op.Dropout(guarded, _allow_other_inputs=True, _outputs=["dropout"]), guarded])
        return op.Einsum(dropped, v_in, _outputs=["out"])

    def plan(self, **b: Any) -> Any:
        plan = super().plan(**{**b, "kt_in": b["k_in"]})
        return dataclasses.replace(plan, facts=dataclasses.replace(plan.facts, dialect=self.dialect))

    def operands(self, b: dict[str, Any]) -> tuple[Operand, float, KeyReading, Operand, int, tuple[int, ...] | None]:
        scores_node, out_node = b["scores"].producer(), b["out"].producer()
        q_perm, k_perm, swapped = _scores_equation(scores_node)
        v_perm, out_perm = _output_equation(out_node)
        query, q_scale = peel_scales(b["k_in"] if swapped else b["q_in"])
        key, k_scale = peel_scales(b["q_in"] if swapped else b["k_in"])
        key_operand = Operand(key, None if k_perm == _IDENTITY else k_perm)
        return (Operand(query, None if q_perm == _IDENTITY else q_perm), q_scale,
                KeyReading(key_operand, k_scale, "einsum"), Operand(b["v_in"], None if v_perm == _IDENTITY else v_perm),
                1, None if out_perm == _IDENTITY else out_perm)


def _equation(node: ir.Node) -> tuple[str, str, str]:
    text = attribute(node, "equation", ir.AttributeType.STRING, "")
    compact = text.replace(" ", "")
    lhs, arrow, rhs = compact.partition("->")
    operands = lhs.split(",")
    terms = [*operands, rhs]
    if not arrow or len(operands) != 2 or any(len(t) != 4 or len(set(t)) != 4 or not t.isalpha() for t in terms):
        raise Refusal(f"the Einsum equation '{text}' is not a product of two 4-D operands into a 4-D result", node)
    return operands[0], operands[1], rhs


def _scores_equation(node: ir.Node) -> tuple[tuple[int, ...], tuple[int, ...], bool]:
    """Q and K permutations to [b, h, s, d] and [b, h, t, d] from `X,Y->bhst`, and whether the operands
    come as K, Q (the first one carries the key axis t: tf2onnx's BERT writes `aecd,abcd->acbe`)."""
    x, y, z = _equation(node)
    contracted = (set(x) & set(y)) - set(z)
    b, h, s, t = z
    if len(contracted) == 1:
        (d,) = contracted
        if set(x) == {b, h, s, d} and set(y) == {b, h, t, d}:
            return tuple(x.index(c) for c in (b, h, s, d)), tuple(y.index(c) for c in (b, h, t, d)), False
        if set(y) == {b, h, s, d} and set(x) == {b, h, t, d}:
            return tuple(y.index(c) for c in (b, h, s, d)), tuple(x.index(c) for c in (b, h, t, d)), True
    raise Refusal(f"the Einsum '{x},{y}->{z}' is not scores = Q·Kᵀ per batch and head: its result '{z}' needs "
                  "one operand with the batch, head and query axes, the other with the batch, head and key axes, "
                  "and one axis contracted between them", node)


def _output_equation(node: ir.Node) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """V's permutation to [b, h, t, e], and the permutation from the op's [b, h, s, e] to the output."""
    p, w, o = _equation(node)
    b, h, s, t = p
    extra = set(w) - set(p)
    if len(extra) != 1 or set(w) != {b, h, t, *extra} or set(o) != {b, h, s, *extra}:
        raise Refusal(f"the Einsum '{p},{w}->{o}' is not the weights times V per batch and head", node)
    (e,) = extra
    order = (b, h, s, e)
    return tuple(w.index(c) for c in (b, h, t, e)), tuple(order.index(c) for c in o)


__all__ = ["EinsumAttention"]
