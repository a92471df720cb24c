"""Attention written out in standard ops: MatMul -> [scale] -> [mask] -> Softmax -> [guard] -> MatMul.

Covers the eager dialect (scale after the product), the SDPA decomposition (√scale on Q and Kᵀ, an
IsNaN/Where guard), legacy Cast pairs around Softmax, masks added or selected with Where (one or two of
them), inference-mode Dropout, K transposed by any Transpose / a 3-D Reshape-Transpose-Reshape / given
pre-transposed, and grouped-query Unsqueeze/Expand/Reshape of K and V. 4-D [B, H, S, d] operands, or
3-D [B·H, S, d] ones (heads folded into the batch).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import pattern as orp

from edgeattn.graphs.rules.base import AttentionRule, Plan, Refusal, SiteFacts, attention_attributes, int_attribute
from edgeattn.graphs.geometry import ALL_VISIBLE, at_least, causal_mode
from edgeattn.graphs.rules.masks import MAX_FILL, MaskTerm, build_mask, check_fits, mask_kind, where_term
from edgeattn.graphs.rules.operands import KeyReading, Operand, read_key, read_key_value_heads, peel_scales
from edgeattn.graphs.values import dims, rank, static_array, static_scalar
from edgeattn.ops.spec import standard_opset

def _mask_step(op: Any, x: Any, add: Any, condition: Any, fill: Any, tag: str) -> Any:
    return orp.OrValue(
        [op.Add(x, add), op.Add(add, x), op.Where(condition, x, fill), op.Where(condition, fill, x), x],
        tag_var=tag,
        tag_values=["add", "add", "keep", "drop", "none"],
    )


class DecomposedAttention(AttentionRule):
    dialect = "decomposed"

    def pattern(self, op, q_in, kt_in, v_in, qk_scale, add1, cond1, fill1, add2, cond2, fill2, nan_fill):
        product = op.MatMul(q_in, kt_in, _outputs=["scores"])
        scores = orp.OrValue([op.Cast(product, _outputs=["score_cast"]), product])  # mixed precision: to float32
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
        return op.MatMul(dropped, v_in)

    def plan(self, **b: Any) -> Plan:
        softmax = b["probs"].producer()
        scores = b["scores"]
        score_rank = rank(scores)
        _check_softmax_axis(softmax, score_rank)
        _check_guard_and_dropout(b)
        qk_scale = _scale_after_product(b["scale_op"], b["qk_scale"], score_rank)
        terms = _mask_terms(b)
        check_fits(terms, scores)
        causal, terms, causal_from = _causal_terms(terms, scores, softmax)
        out_type = _mixed_value_type(b)
        if out_type is not None:  # P @ V in V's lower precision: computed in Q's type, the output cast back
            b = {**b, "v_in": b["v_in"].producer().inputs[0]}
        query, q_scale, key_reading, value, group, out_perm = self.operands(b)
        key = key_reading.key
        dtypes = (b["q_in"].dtype, b["v_in"].dtype)
        if dtypes[0] is not None and dtypes[1] is not None and dtypes[0] != dtypes[1]:
            raise Refusal(f"the query type {dtypes[0].name} and value type {dtypes[1].name} differ", b["v_in"])
        score_cast = _score_cast(b)  # checked whether or not a Cast before the Softmax follows it
        precision = _softmax_precision(b.get("pre_cast") or score_cast, dtypes[0])
        layout = _layout(score_rank, scores)
        head_size = _operand_dim(query, score_rank - 1)
        q_heads, kv_heads = _operand_dim(query, 1), _operand_dim(key, 1)
        scale = qk_scale * q_scale * key_reading.scale
        # The op takes a scale > 0: a negative one becomes its magnitude on -Q (exact in floating point).
        negate = math.isfinite(scale) and scale < 0
        scale = -scale if negate else scale
        kind = mask_kind(terms)
        facts = SiteFacts(
            anchor=softmax,
            dialect=_dialect(b, q_scale * key_reading.scale != 1.0),
            layout=layout,
            num_heads=q_heads if layout == "bhsd" else None,
            kv_num_heads=kv_heads if layout == "bhsd" else None,
            head_size=head_size,
            mask=kind,
            causal=causal,
            scale=scale,
            details={"key": key_reading.form, "gqa_group": group, "masks": [t.kind for t in terms],
                     **({"causal_from": causal_from} if causal else {})},
        )
        # the IsNaN/Where guard zeroes every NaN probability, not only those of fully masked rows
        attributes = attention_attributes(scale, causal, *(_op_heads(layout, q_heads, kv_heads)), precision,
                                          zero_nan_rows=1 if b.get("guard") else 0)
        score_dtype = scores.dtype or dtypes[0]
        build_inputs, finish = _builders(layout, query, key, value, terms, score_dtype, out_perm, negate, out_type)
        return Plan(facts, attributes, build_inputs, 4, dtypes[0] or score_dtype,
                    finish if layout == "(bh)sd" or out_perm is not None or out_type is not None else None)


    def operands(self, b: dict[str, Any]) -> tuple[Operand, float, KeyReading, Operand, int, tuple[int, ...] | None]:
        """Q (and the constant factor on it), K, V as the op takes them, the grouped-query group, and the
        Transpose that brings the op's output to the site's (None: none)."""
        query, q_scale = peel_scales(b["q_in"])
        key_reading = read_key(b["kt_in"])
        key, value, group = _key_value(key_reading.key, b["v_in"])
        return Operand(query), q_scale, KeyReading(key, key_reading.scale, key_reading.form), Operand(value), group, None


def _causal_terms(terms: list[MaskTerm], scores: ir.Value, softmax: ir.Node) -> tuple[int, list[MaskTerm], str]:
    """A mask term built from shapes alone that equals a causal mask becomes the `causal` attribute
    (GPT-2's sliced lower triangle, Trilu, Less of Ranges, ...): returns the mode, the other terms and
    what the causal term was. With a finite fill (-10000, the float minimum) the term is taken only where
    no query row can be fully masked, so the result is the same: upper-left, or lower-right with
    provably at least as many keys as queries."""
    shape = dims(scores)
    if not terms or shape is None or len(shape) < 2:
        return 0, terms, ""
    graph = softmax.graph
    opset = standard_opset(graph.opset_imports, 13) if isinstance(graph, ir.Graph) else 13
    q_len, kv_len = shape[-2], shape[-1]
    kept: list[MaskTerm] = []
    for index, term in enumerate(terms):
        mode = causal_mode(term.value, term.kind, q_len, kv_len, opset, MAX_FILL)
        if mode == ALL_VISIBLE:  # hides nothing at every probed size: the same as no mask, dropped
            continue
        finite = term.kind == "add" or not math.isinf(term.fill)
        if mode == 2 and finite and not at_least(kv_len, q_len):
            kept.append(term)
            continue
        if mode:
            what = "additive" if term.kind == "add" else f"Where ({term.kind}, fill {term.fill:g})"
            return mode, kept + terms[index + 1:], f"{what} mask '{term.value.name}'"
        kept.append(term)
    return 0, kept, ""


def _check_softmax_axis(softmax: ir.Node, score_rank: int | None) -> None:
    if score_rank is None:
        raise Refusal("the rank of the attention scores is unknown (no shape information)", softmax)
    graph = softmax.graph
    opset = standard_opset(graph.opset_imports, 13) if isinstance(graph, ir.Graph) else 13
    axis = int_attribute(softmax, "axis", -1 if opset >= 13 else 1)  # the default changed in opset 13
    if axis not in (-1, score_rank - 1):
        raise Refusal(f"the Softmax is over axis {axis}, not the last (key) axis of rank-{score_rank} scores", softmax)


def _check_guard_and_dropout(b: dict[str, Any]) -> None:
    if b.get("guard"):
        fill = static_scalar(b["nan_fill"])
        if fill != 0.0:
            raise Refusal("the IsNaN guard after the Softmax does not write zeros", b["nan_fill"])
    dropout = b.get("dropout")
    if dropout is not None:
        node = dropout.producer()
        training = node.inputs[2] if len(node.inputs) > 2 else None
        if training is not None:
            flag = static_array(training)
            if flag is None or bool(flag.reshape(-1)[0]):
                raise Refusal("the Dropout after the Softmax may run in training mode", node)


def _scale_after_product(scale_op: str, qk_scale: ir.Value | None, score_rank: int) -> float:
    if scale_op == "none":
        return 1.0
    number = static_scalar(qk_scale)
    array = static_array(qk_scale)
    if number is None or array is None or array.size != 1 or array.ndim > score_rank:
        raise Refusal("the scale after the Q·Kᵀ product is not a constant scalar", qk_scale)
    return number if scale_op == "mul" else 1.0 / number


def _mask_terms(b: dict[str, Any]) -> list[MaskTerm]:
    terms = []
    for step in ("1", "2"):
        kind = b[f"mask{step}"]
        if kind == "add":
            terms.append(MaskTerm("add", b[f"add{step}"]))
        elif kind in ("keep", "drop"):
            terms.append(where_term(kind, b[f"cond{step}"], b[f"fill{step}"]))
    return terms


def _key_value(key: Operand, value: ir.Value) -> tuple[Operand, ir.Value, int]:
    if key.perm is not None:
        return key, value, 1
    base_key, base_value, group = read_key_value_heads(key.value, value)
    return Operand(base_key), base_value, group


def _score_cast(b: dict[str, Any]) -> ir.Value | None:
    """The Cast right after Q·Kᵀ, when there is one: to float32 only (the scale and mask then apply in
    float32, as softmax_precision = 1 computes them)."""
    cast = b.get("score_cast")
    if cast is None:
        return None
    to = int_attribute(cast.producer(), "to", 0)
    if to != ir.DataType.FLOAT or b["scores"].dtype not in (ir.DataType.FLOAT, ir.DataType.FLOAT16,
                                                           ir.DataType.BFLOAT16) or b.get("pre_cast") is not None:
        raise Refusal(f"the attention scores are cast to type {to} before the softmax (only a cast to float32 "
                      "of float scores is taken)", cast)
    return cast


def _mixed_value_type(b: dict[str, Any]) -> ir.DataType | None:
    """V's type where the site multiplies the probabilities by V cast down from Q's type (a mixed-precision
    export: Q·Kᵀ and the softmax in float32, P @ V in float16): the op then computes P @ V in Q's type and
    the output is cast to V's. None when V is not such a Cast."""
    value, query = b["v_in"], b["q_in"]
    producer = value.producer()
    if producer is None or producer.op_type != "Cast" or producer.domain not in ("", "ai.onnx"):
        return None
    source = producer.inputs[0]
    lower = (ir.DataType.FLOAT16, ir.DataType.BFLOAT16)
    if source is None or source.dtype != query.dtype or query.dtype != ir.DataType.FLOAT or value.dtype not in lower:
        return None
    return value.dtype


def _softmax_precision(pre_cast: ir.Value | None, query_type: ir.DataType | None) -> int:
    """The type a Cast before the Softmax computes it in (0: Q's own type). ONNX Softmax takes floats only."""
    if pre_cast is None:
        return 0
    to = int_attribute(pre_cast.producer(), "to", 0)
    return 0 if query_type is not None and to == int(query_type) else to


def _layout(score_rank: int, scores: ir.Value) -> str:
    if score_rank == 4:
        return "bhsd"
    if score_rank == 3:
        return "(bh)sd"
    raise Refusal(f"the attention scores have rank {score_rank}; only 3-D and 4-D attention is rewritten", scores)


def _operand_dim(operand: Operand, axis: int) -> int | None:
    shape = dims(operand.value)
    if shape is None:
        return None
    index = operand.perm[axis] if operand.perm is not None else axis
    dim = shape[index] if index < len(shape) else None
    return dim if isinstance(dim, int) else None


def _op_heads(layout: str, q_heads: int | None, kv_heads: int | None) -> tuple[int | None, int | None]:
    if layout == "(bh)sd":
        return 1, 1  # heads are folded into the batch; the op sees one head
    return q_heads, kv_heads


def _dialect(b: dict[str, Any], operand_scale: bool) -> str:
    if b.get("guard") or operand_scale:
        return "sdpa-decomposed"
    return "eager"


def _builders(layout: str, query: Operand, key: Operand, value: Operand, terms: list[MaskTerm], dtype: Any,
              out_perm: tuple[int, ...] | None = None, negate_query: bool = False,
              out_type: ir.DataType | None = None):
    ranks = [rank(term.value) for term in terms]
    mask_rank = None if None in ranks else max(ranks, default=0)

    def build_inputs(op: Any) -> list[ir.Value | None]:
        mask = build_mask(op, terms, dtype)
        operands = [query.build(op), key.build(op), value.build(op)]
        if negate_query:
            negated = op.Neg(operands[0])
            negated.dtype, negated.shape = operands[0].dtype, operands[0].shape
            operands[0] = negated
        if layout == "(bh)sd":
            operands = [_unsqueeze(op, x, 1) for x in operands]
            if mask is not None and mask_rank is None:
                mask = _heads_axis_at_run_time(op, mask)
            elif mask is not None and mask_rank >= 3:
                mask = _unsqueeze(op, mask, 1)
        return [*operands, mask]

    def finish(op: Any, out: ir.Value) -> ir.Value:
        if out_perm is not None:
            out = op.Transpose(out, perm=list(out_perm))
        elif layout == "(bh)sd":
            out = op.Squeeze(out, op.Constant(value=ir.tensor(np.array([1], np.int64))))
        return out if out_type is None else op.Cast(out, to=out_type)

    return build_inputs, finish


def _heads_axis_at_run_time(op: Any, mask: ir.Value) -> ir.Value:
    """A mask of unknown rank for [N, S, T] scores, given a 1 before its last two axes ([N, S, T] ->
    [N, 1, S, T], [S, T] -> [1, S, T], [T] -> [1, T]): it then broadcasts to the op's [N, 1, S, T]
    scores as it did to [N, S, T]."""
    shape = op.Shape(mask)
    lead = op.Slice(shape, _ints(op, [0]), _ints(op, [-2]))
    tail = op.Slice(shape, _ints(op, [-2]), _ints(op, [np.iinfo(np.int64).max]))
    return op.Reshape(mask, op.Concat(lead, _ints(op, [1]), tail, axis=0))


def _ints(op: Any, values: list[int]) -> ir.Value:
    return op.Constant(value=ir.tensor(np.array(values, np.int64)))


def _unsqueeze(op: Any, value: ir.Value, axis: int) -> ir.Value:
    return op.Unsqueeze(value, op.Constant(value=ir.tensor(np.array([axis], np.int64))))
