"""The standard-op function body of edgeattn.Attention (what onnxruntime inlines and TensorRT falls back to).

A body is specialised on what a function attribute reference cannot express: the layout, the kind of
mask, the causal mode, whether heads are grouped, whether the softmax changes precision. For
onnxruntime each combination is one overload of `edgeattn.Attention`; TensorRT looks local functions up
by name only, so its form has one generic body (`Variant.generic`) that reads every choice from the
node's attributes at run time. Scalars (scale, head counts, softmax precision) always come from the
node's attributes by reference, so layers that differ only in them share a body.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from edgeattn.ops.attention.spec import ATTRIBUTES, NAME
from edgeattn.ops.bodies import CASTLIKE_OPSET, Nodes, attention_scale, declared_attributes, merge_heads, split_heads
from edgeattn.ops.spec import DOMAIN, CallFacts, Target

BOOL = int(ir.DataType.BOOL)


@dataclass(frozen=True)
class Variant:
    """The structure of one function body."""

    opset: int
    rank: int  # 3 or 4
    mask: str  # "none", "bool" or "additive"
    mask_cast: bool  # an additive mask of another type than Q is cast to Q's type
    causal: int | None  # 0, 1, 2, or None: read the `causal` attribute at run time
    gqa: str  # "none", "attr" (group = q_num_heads / kv_num_heads) or "shape" (from Q and K shapes)
    scale_from_head: str  # "no" (scale attribute > 0), "yes" (always 1/sqrt(d)), "runtime" (if scale == 0)
    softmax_cast: bool  # cast the scores to the softmax_precision attribute and back
    dtype: int | None  # Q's element type; needed below opset 15 for typed constants

    @property
    def guarded(self) -> bool:
        """Rows can be fully masked (then zeroed) only with a mask or a lower-right causal bias."""
        return self.mask != "none" or self.causal not in (0, 1)

    @property
    def key(self) -> str:
        parts = [
            f"r{self.rank}",
            f"m{self.mask}{'c' if self.mask_cast else ''}",
            f"c{'x' if self.causal is None else self.causal}",
            f"g{self.gqa}",
            f"s{self.scale_from_head}",
        ]
        if self.softmax_cast:
            parts.append("sm")
        if self.dtype is not None:
            parts.append(f"t{self.dtype}")
        return "_".join(parts)

    @staticmethod
    def generic(opset: int, dtype: int | None) -> Variant:
        """The one body of the TensorRT form: 4-D, additive mask of Q's type, every choice at run time."""
        return Variant(opset, 4, "additive", False, None, "shape", "runtime", True, _typed(opset, dtype))


def variant_of(call: CallFacts) -> Variant:
    """The body a node needs, from its resolved attributes and what is known of its inputs."""
    attrs, inputs = call.attributes, call.inputs
    query = inputs[0]
    dtype = _typed(call.opset, query.dtype)
    if len(inputs) > 3 and inputs[3].present:
        mask_dtype = inputs[3].dtype
        if mask_dtype is None:
            raise ValueError("the element type of the mask is unknown")
        mask = "bool" if mask_dtype == BOOL else "additive"
        mask_cast = mask == "additive" and mask_dtype != query.dtype
    else:
        mask, mask_cast = "none", False
    q_heads, kv_heads = int(attrs["q_num_heads"]), int(attrs["kv_num_heads"])
    if q_heads > 0 and kv_heads > 0:
        gqa = "none" if q_heads == kv_heads else "attr"
    else:
        gqa = "none" if query.rank == 3 else "shape"
    precision = int(attrs["softmax_precision"])
    softmax_cast = precision != 0 and precision != query.dtype
    scale_from_head = "no" if float(attrs["scale"]) > 0 else "yes"
    if query.rank not in (3, 4):
        raise ValueError(f"Q has rank {query.rank}; edgeattn.Attention takes 3-D or 4-D inputs")
    if query.rank == 3 and q_heads <= 0:
        raise ValueError("3-D Q needs q_num_heads > 0 to split its heads")
    return Variant(call.opset, query.rank, mask, mask_cast, int(attrs["causal"]), gqa, scale_from_head, softmax_cast, dtype)


def _typed(opset: int, dtype: int | None) -> int | None:
    if opset >= CASTLIKE_OPSET:  # CastLike
        return None
    if dtype is None:
        raise ValueError(f"opset {opset} has no CastLike, and the element type of Q is unknown")
    return dtype


def function_key(call: CallFacts, target: Target) -> str:
    """The overload name of the body a node needs ("" for TensorRT's single generic body)."""
    return "" if target == "trt" else variant_of(call).key


def build_function(call: CallFacts, target: Target, overload: str) -> ir.Function:
    query_dtype = call.inputs[0].dtype
    variant = Variant.generic(call.opset, query_dtype) if target == "trt" else variant_of(call)
    return build_body(variant, overload)


def build_body(variant: Variant, overload: str) -> ir.Function:
    body = AttentionNodes(variant)
    query, key, value = body.input("Q"), body.input("K"), body.input("V")
    mask = body.input("mask") if variant.mask != "none" else None
    if variant.rank == 3:
        query = split_heads(body, query, body.ref_int("q_num_heads"))
        key = split_heads(body, key, body.ref_int("kv_num_heads"))
        value = split_heads(body, value, body.ref_int("kv_num_heads"))
    if variant.gqa != "none":
        group = body.group_size(query, key)
        key, value = body.repeat_heads(key, group), body.repeat_heads(value, group)
    scores = body.op("MatMul", query, body.op("Transpose", key, perm=[0, 1, 3, 2]))
    scores = body.op("Mul", scores, body.like(body.scale(query), scores))
    scores = body.apply_mask(scores, mask)
    scores = body.apply_causal(scores)
    probs = body.softmax(scores, value)
    out = body.op("MatMul", probs, value)
    if variant.rank == 3:
        out = merge_heads(body, out)
    return body.function(DOMAIN, NAME, overload, {"Y": out}, declared_attributes(ATTRIBUTES),
                         f"edgeattn.Attention body {variant.key}")


class AttentionNodes(Nodes):
    """Records one edgeattn.Attention body, for one Variant; builds from opset 13 (below opset 15 the
    Variant carries Q's type, and constants are cast to it)."""

    min_opset = 13
    bodies = "edgeattn.Attention bodies"

    def __init__(self, variant: Variant) -> None:
        super().__init__(variant.opset)
        self.variant = variant

    def like(self, value: ir.Value, reference: ir.Value) -> ir.Value:
        """`value` in the type of `reference` (CastLike; below opset 15 a Cast to Q's type, which is
        the type of every `reference` in this body)."""
        if self.variant.dtype is None:
            return super().like(value, reference)
        return self.cast(value, ir.DataType(self.variant.dtype))

    def group_size(self, query: ir.Value, key: ir.Value) -> ir.Value:
        """Query heads per key/value head (0-D int64), from the head-count attributes or the shapes."""
        if self.variant.gqa == "attr":
            return self.op("Div", self.ref_int("q_num_heads"), self.ref_int("kv_num_heads"))
        return self.op("Div", self.dim(query, 1), self.dim(key, 1))

    def repeat_heads(self, value: ir.Value, group: ir.Value) -> ir.Value:
        """[B, Hkv, S, d] -> [B, Hkv·g, S, d], each head repeated g times in place (h0 h0 h1 h1 ...)."""
        expanded = self.op("Expand", self.unsqueeze(value, 2), self.vec(1, 1, group, 1, 1))
        return self.op("Reshape", expanded, self.op("Concat", self.i64(0, -1), self.dims(value, 2), axis=0))

    def scale(self, query: ir.Value) -> ir.Value:
        """The factor on QKᵀ (float32 0-D): the scale attribute, 1/sqrt(d), or, when only known at run
        time, the attribute if it is > 0 and 1/sqrt(d) otherwise."""
        mode = self.variant.scale_from_head
        if mode == "no":
            return self.ref_float("scale")
        inverse_sqrt = attention_scale(self, 0.0, query)
        if mode == "yes":
            return inverse_sqrt
        given = self.ref_float("scale")
        return self.op("Where", self.op("Greater", given, self.scalar(0.0)), given, inverse_sqrt)

    def apply_mask(self, scores: ir.Value, mask: ir.Value | None) -> ir.Value:
        """A boolean mask sets -inf where it is false; an additive one is added (in the type of scores)."""
        if mask is None:
            return scores
        if self.variant.mask == "bool":
            return self.where_inf(mask, scores)
        if self.variant.mask_cast:
            mask = self.like(mask, scores)
        return self.op("Add", scores, mask)

    def apply_causal(self, scores: ir.Value) -> ir.Value:
        """-inf on the keys the causal mode masks (1: upper-left, 2: lower-right, None: the attribute's)."""
        causal = self.variant.causal
        if causal == 0:
            return scores
        q_len, kv_len = self.dim(scores, -2), self.dim(scores, -1)
        rows, cols = self.unsqueeze(self.arange(q_len), 1), self.arange(kv_len)
        lower_right = self.op("Sub", kv_len, q_len)
        if causal == 1:
            blocked = self.op("Greater", cols, rows)
        elif causal == 2:
            blocked = self.op("Greater", cols, self.op("Add", rows, lower_right))
        else:
            mode, zero = self.ref_int("causal"), self.scalar(0)
            offset = self.op("Where", self.op("Equal", mode, self.scalar(2)), lower_right, zero)
            beyond = self.op("Greater", cols, self.op("Add", rows, offset))
            blocked = self.op("And", beyond, self.op("Greater", mode, zero))
        return self.op("Where", blocked, self.like(self.scalar(-np.inf), scores), scores)

    def softmax(self, scores: ir.Value, value: ir.Value) -> ir.Value:
        """Softmax over the keys (in the softmax_precision type and back to V's when the Variant casts);
        rows left NaN by a fully masked row are zeros when the Variant can mask one."""
        if self.variant.softmax_cast:
            precision = ir.RefAttr("to", "softmax_precision", ir.AttributeType.INT)
            probs = self.like(self.op("Softmax", self.op("Cast", scores, to=precision), axis=-1), value)
        else:
            probs = self.op("Softmax", scores, axis=-1)
        if not self.variant.guarded:
            return probs
        return self.op("Where", self.op("IsNaN", probs), self.like(self.scalar(0.0), probs), probs)
