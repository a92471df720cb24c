"""The standard-op function body of edgeattn.TokenScore.

A body is specialised on its structure: the source, the operands (Q/K 4-D or 3-D, or probabilities),
the head reduction, and which optional inputs are present. Every number (scale, head counts, the
[CLS] position, the skip count, FlashVLM's temperatures) comes from the node's attributes by reference,
so nodes that differ only in numbers share a body. Everything is computed in float32.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from edgeattn.ops.bodies import FLOAT, INT64, declared_attributes
from edgeattn.ops.spec import DOMAIN, CallFacts, Target
from edgeattn.ops.token_nodes import TokenNodes
from edgeattn.ops.token_score.spec import ATTENTION_SOURCES, ATTRIBUTES, NAME


@dataclass(frozen=True)
class Variant:
    opset: int
    source: str
    operands: str  # "probs", "qk4", "qk3" (attention sources) or "tensors"
    head_reduce: str
    prior: bool
    weights: bool
    valid: bool

    @property
    def key(self) -> str:
        flags = "".join(f for f, on in (("p", self.prior), ("w", self.weights), ("v", self.valid)) if on)
        return f"{self.source}_{self.operands}_{self.head_reduce}" + (f"_{flags}" if flags else "")


def variant_of(call: CallFacts) -> Variant:
    attrs, inputs = call.attributes, call.inputs
    source = str(attrs["source"])
    present = [i < len(inputs) and inputs[i].present for i in range(5)]
    if source in ATTENTION_SOURCES:
        rank = inputs[0].rank
        if present[1]:
            if rank not in (3, 4):
                raise ValueError(f"Q has rank {rank}; TokenScore takes 3-D or 4-D Q and K")
            operands = f"qk{rank}"
        else:
            if rank not in (4, None):
                raise ValueError(f"attention probabilities have rank {rank}, not 4 ([B, H, S, S])")
            operands = "probs"
    else:
        if not present[1]:
            raise ValueError(f"source {source} needs its second input Y")
        operands = "tensors"
    if present[2] and source != "text":
        raise ValueError("the prior input is only used by source text")
    return Variant(call.opset, source, operands, str(attrs["head_reduce"]), present[2], present[3], present[4])


def function_key(call: CallFacts, target: Target) -> str:
    return variant_of(call).key


def build_function(call: CallFacts, target: Target, overload: str) -> ir.Function:
    return build_body(variant_of(call), overload)


def build_body(variant: Variant, overload: str) -> ir.Function:
    body = TokenNodes(variant.opset)
    # Every formal input is declared (a node may omit optional ones); only the present ones are read.
    formal = {name: body.input(name) for name in ("X", "Y", "prior", "weights", "valid")}
    x = body.to_float(formal["X"])
    y = body.to_float(formal["Y"]) if variant.operands != "probs" else None
    prior = body.to_float(formal["prior"]) if variant.prior else None
    weights = body.to_float(formal["weights"]) if variant.weights else None
    valid = formal["valid"] if variant.valid else None
    if variant.source in ATTENTION_SOURCES:
        scores = _attention_score(body, variant, x, y)
    elif variant.source == "text":
        scores = _text_score(body, x, y, prior)
    else:
        scores = _sensitivity(body, x, y)
    if weights is not None:
        scores = body.op("Mul", scores, weights)
    if valid is not None:
        keep = body.op("Not", body.op("Equal", body.to_float(valid), body.const(np.float32(0))))
        scores = body.op("Mul", scores, body.cast(keep, FLOAT))
    return body.function(DOMAIN, NAME, overload, {"scores": scores}, declared_attributes(ATTRIBUTES),
                         f"edgeattn.TokenScore body {variant.key}")


# -- attention sources ---------------------------------------------------------------------------
def _attention_score(body: TokenNodes, variant: Variant, x: ir.Value, y: ir.Value | None) -> ir.Value:
    if variant.operands == "probs":
        rows = _rows_from_probs(body, variant.source, x)
    else:
        q, k = x, y
        if variant.operands == "qk3":
            q, k = _split_heads(body, q, "q_num_heads"), _split_heads(body, k, "kv_num_heads")
        rows = _rows_from_qk(body, variant.source, q, k)
    skip = body.vec(body.ref_int("skip"))
    rows = body.op("Slice", rows, skip, body.i64(1 << 62), body.i64(-1))  # [B, H, N]
    return body.reduce("Mean" if variant.head_reduce == "mean" else "Max", rows, [1])


def _rows_from_probs(body: TokenNodes, source: str, probs: ir.Value) -> ir.Value:
    if source == "cls":
        return body.op("Gather", probs, body.ref_int("query"), axis=2)
    return body.reduce("Mean", probs, [2])


def _split_heads(body: TokenNodes, value: ir.Value, heads_attr: str) -> ir.Value:
    """[B, S, H·d] -> [B, H, S, d] (H from the node's attribute)."""
    heads = body.ref_int(heads_attr)
    return body.op("Transpose", body.reshape(value, 0, 0, heads, -1), perm=[0, 2, 1, 3])


def _rows_from_qk(body: TokenNodes, source: str, q: ir.Value, k: ir.Value) -> ir.Value:
    """Per-head [CLS] rows or column means [B, Hq, S] from Q [B, Hq, Sq, d], K [B, Hkv, S, d].

    Query heads are grouped onto their key head (h // (Hq/Hkv)) by a reshape, so K is never repeated."""
    if source == "cls":
        query = body.vec(body.ref_int("query"))
        q = body.op("Slice", q, query, body.op("Add", query, body.i64(1)), body.i64(2))  # [B, Hq, 1, d]
    batch, q_heads, q_len = body.dim(q, 0), body.dim(q, 1), body.dim(q, 2)
    kv_heads = body.dim(k, 1)
    head_size = body.dim(q, -1)
    grouped = body.reshape(q, batch, kv_heads, -1, head_size)  # [B, Hkv, g·Sq, d]
    logits = body.op("MatMul", grouped, body.op("Transpose", k, perm=[0, 1, 3, 2]))
    logits = body.op("Mul", logits, _scale(body, head_size))
    probs = body.op("Softmax", logits, axis=-1)  # [B, Hkv, g·Sq, S]
    probs = body.reshape(probs, batch, q_heads, q_len, body.dim(k, 2))  # [B, Hq, Sq, S]
    return body.reduce("Mean", probs, [2])


def _scale(body: TokenNodes, head_size: ir.Value) -> ir.Value:
    given = body.ref_float("scale")
    inverse_sqrt = body.op("Reciprocal", body.op("Sqrt", body.to_float(head_size)))
    return body.op("Where", body.op("Greater", given, body.const(np.float32(0))), given, inverse_sqrt)


# -- text relevance (FlashVLM) -------------------------------------------------------------------
def _text_score(body: TokenNodes, z: ir.Value, e: ir.Value, prior: ir.Value | None) -> ir.Value:
    sim = body.cosine(z, e)  # [B, N, T]
    weights = body.op("Softmax", body.op("Div", sim, body.ref_float("text_temperature")), axis=-1)
    relevance = body.reduce("Sum", body.op("Mul", weights, sim), [-1])  # [B, N]
    sharp = body.op("Softmax", body.op("Div", relevance, body.ref_float("relevance_temperature")), axis=-1)
    t = body.minmax(body.op("Pow", sharp, body.ref_float("power")))
    threshold = _quantile(body, t)
    damped = body.op("Mul", t, body.ref_float("damping"))
    t = body.minmax(body.op("Where", body.op("Less", t, threshold), damped, t))
    if prior is None:
        return t
    eta = body.ref_float("eta")
    attention = body.op("Pow", body.minmax(prior), body.op("Sub", body.const(np.float32(1)), eta))
    return body.minmax(body.op("Mul", attention, body.op("Pow", t, eta)))


def _quantile(body: TokenNodes, values: ir.Value) -> ir.Value:
    """The `quantile` quantile of each row of values [B, N] with linear interpolation (torch.quantile), [B, 1]."""
    count = body.dim(values, -1)
    ordered, _ = body.stable_order(values, count, largest=0)
    last = body.to_float(body.op("Sub", count, body.const(np.int64(1))))
    position = body.op("Mul", body.ref_float("quantile"), last)
    low = body.op("Floor", position)
    fraction = body.op("Sub", position, low)
    low_index = body.cast(low, INT64)
    high_index = body.op("Min", body.op("Add", low_index, body.const(np.int64(1))), body.op("Sub", count, body.const(np.int64(1))))
    low_value = body.op("Gather", ordered, body.vec(low_index), axis=1)
    high_value = body.op("Gather", ordered, body.vec(high_index), axis=1)
    return body.op("Add", low_value, body.op("Mul", fraction, body.op("Sub", high_value, low_value)))


# -- projector sensitivity (ZOO-Prune) -----------------------------------------------------------
def _sensitivity(body: TokenNodes, plus: ir.Value, minus: ir.Value) -> ir.Value:
    diff = body.op("Sub", plus, minus)
    norms = body.op("Sqrt", body.reduce("Sum", body.op("Mul", diff, diff), [-1]))  # [B, N, m]
    mean = body.reduce("Mean", norms, [-1])
    return body.op("Div", mean, body.op("Mul", body.const(np.float32(2)), body.ref_float("step")))
