"""The standard-op function body of edgeattn.Attention (what onnxruntime inlines and TensorRT falls back to).

A body is specialised on what a function attribute reference cannot express: the layout, the kind of
mask, the causal mode, whether heads are grouped, whether the softmax changes precision, and which parts
of the whole contract the node uses (a KV cache, nonpad_kv_seqlen, softcap, windows, the extra
outputs). For onnxruntime each combination is one overload of `edgeattn.Attention`; TensorRT looks local
functions up by name only, so its form has one generic body (`Variant.generic`) that reads every choice
from the node's attributes at run time, and a node using more than its plugin takes keeps a body of its
own (`function_key`). Scalars (scale, head counts, softmax precision, softcap, window sizes) always come
from the node's attributes by reference, so layers that differ only in them share a body.

The scores get one additive bias, built on the mask's and the query/key lengths' shapes (small), not on
the scores: the mask (false -> -inf), causal, window and padding terms (0 or -inf). A row whose bias is
-inf at every key is fully masked, and its probabilities are zeros (as in ONNX Attention).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from edgeattn.ops.attention.spec import ATTRIBUTES, INPUTS, NAME, OUTPUTS, trt_unsupported
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
    past: bool = False  # past_key / past_value inputs: the keys are Concat(past, new)
    nonpad: bool = False  # the nonpad_kv_seqlen input
    softcap: bool = False  # softcap > 0
    window: str = ""  # "l", "r", "lr": which window sizes are >= 0
    outputs: int = 1  # Y, present_key, present_value, qk_matmul_output: how many the node declares
    qk_mode: int = 0  # what qk_matmul_output holds (with outputs == 4)
    zero_nan: bool | None = False  # every NaN probability is 0 (zero_nan_rows); None: the attribute's, at run time

    @property
    def guarded(self) -> bool:
        """Rows can be fully masked (then zeroed) only with a mask, a lower-right causal bias, a window or
        padding; upper-left causal attention always sees its first key."""
        return self.mask != "none" or self.causal not in (0, 1) or bool(self.window) or self.nonpad

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
        extras = [("p", self.past), ("n", self.nonpad), ("cap", self.softcap), (f"w{self.window}", bool(self.window))]
        parts += [name for name, used in extras if used]
        if self.outputs > 1:
            parts.append(f"o{self.outputs}" + (f"q{self.qk_mode}" if self.outputs == 4 else ""))
        if self.zero_nan:
            parts.append("zn")
        return "_".join(parts)

    @staticmethod
    def generic(opset: int, dtype: int | None) -> Variant:
        """The one body of the TensorRT form: 4-D, additive mask of Q's type, every choice at run time."""
        return Variant(opset, 4, "additive", False, None, "shape", "runtime", True, _typed(opset, dtype),
                       zero_nan=None)


def variant_of(call: CallFacts) -> Variant:
    """The body a node needs, from its resolved attributes and what is known of its inputs."""
    attrs, inputs = call.attributes, call.inputs
    query = inputs[0]
    dtype = _typed(call.opset, query.dtype)
    mask, mask_cast = _mask_kind(call)
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
    present = [i < len(inputs) and inputs[i].present for i in range(len(INPUTS))]
    if present[4] != present[5]:
        raise ValueError("past_key and past_value come together (a KV cache is both or neither)")
    if present[6] and present[4]:
        raise ValueError("nonpad_kv_seqlen (an external cache) cannot be combined with past_key/past_value")
    # an op that takes the site's basic form only (and builds on this body) has no feature attributes
    window = "".join(side for side, name in (("l", "left_window_size"), ("r", "right_window_size"))
                     if int(attrs.get(name, -1)) >= 0)
    outputs = min(max(call.outputs, 1), len(OUTPUTS))
    qk_mode = int(attrs.get("qk_matmul_output_mode", 0)) if outputs == len(OUTPUTS) else 0
    return Variant(call.opset, query.rank, mask, mask_cast, int(attrs["causal"]), gqa, scale_from_head, softmax_cast,
                   dtype, present[4], present[6], float(attrs.get("softcap", 0.0)) > 0, window, outputs, qk_mode,
                   int(attrs.get("zero_nan_rows", 0)) == 1)


def _mask_kind(call: CallFacts) -> tuple[str, bool]:
    inputs = call.inputs
    if len(inputs) > 3 and inputs[3].present:
        mask_dtype = inputs[3].dtype
        if mask_dtype is None:
            raise ValueError("the element type of the mask is unknown")
        mask = "bool" if mask_dtype == BOOL else "additive"
        return mask, mask == "additive" and mask_dtype != inputs[0].dtype
    return "none", False


def _typed(opset: int, dtype: int | None) -> int | None:
    if opset >= CASTLIKE_OPSET:  # CastLike
        return None
    if dtype is None:
        raise ValueError(f"opset {opset} has no CastLike, and the element type of Q is unknown")
    return dtype


def needs_own_body(call: CallFacts) -> str | None:
    """Why a node cannot share the generic TensorRT body (it uses more than the plugin form carries), or None."""
    last_input = max((i for i, facts in enumerate(call.inputs) if facts.present), default=-1)
    return trt_unsupported(call.attributes, last_input + 1, call.outputs)


def function_key(call: CallFacts, target: Target) -> str:
    """The overload name of the body a node needs ("" for TensorRT's single generic body)."""
    if target == "trt" and needs_own_body(call) is None:
        return ""
    return variant_of(call).key


def build_function(call: CallFacts, target: Target, overload: str) -> ir.Function:
    query_dtype = call.inputs[0].dtype
    generic = target == "trt" and needs_own_body(call) is None
    variant = Variant.generic(call.opset, query_dtype) if generic else variant_of(call)
    return build_body(variant, overload)


def build_body(variant: Variant, overload: str) -> ir.Function:
    body = AttentionNodes(variant)
    names = [io.name for io in INPUTS]
    last = 6 if variant.nonpad else 5 if variant.past else 3 if variant.mask != "none" else 2
    given = {name: body.input(name) for name in names[: last + 1]}
    query, key, value = given["Q"], given["K"], given["V"]
    if variant.rank == 3:
        query = split_heads(body, query, body.ref_int("q_num_heads"))
        key = split_heads(body, key, body.ref_int("kv_num_heads"))
        value = split_heads(body, value, body.ref_int("kv_num_heads"))
    if variant.past:  # the KV cache inside the op: the keys and values are the past ones and the new ones
        key = body.op("Concat", given["past_key"], key, axis=2)
        value = body.op("Concat", given["past_value"], value, axis=2)
    present_key, present_value = key, value
    if variant.gqa != "none":
        group = body.group_size(query, key)
        key, value = body.repeat_heads(key, group), body.repeat_heads(value, group)
    scores = body.op("MatMul", query, body.op("Transpose", key, perm=[0, 1, 3, 2]))
    scores = body.op("Mul", scores, body.like(body.scale(query), scores))
    stages = [scores]  # what qk_matmul_output holds, by mode: scaled, soft-capped, biased, probabilities
    scores = body.apply_softcap(scores)
    stages.append(scores)
    # inputs before a present one are declared, and read only when the node passes them
    mask = given["mask"] if variant.mask != "none" else None
    bias = body.bias(scores, mask, given["past_key"] if variant.past else None, given.get("nonpad_kv_seqlen"))
    if bias is not None:
        scores = body.op("Add", scores, bias)
    stages.append(scores)
    probs = body.softmax(scores, value, bias)
    stages.append(probs)
    out = body.op("MatMul", probs, value)
    if variant.rank == 3:
        out = merge_heads(body, out)
    results = {"Y": out, "present_key": present_key, "present_value": present_value,
               "qk_matmul_output": body.like(stages[variant.qk_mode], query) if variant.qk_mode == 3 else
               stages[variant.qk_mode]}
    outputs = {io.name: results[io.name] for io in OUTPUTS[: variant.outputs]}
    return body.function(DOMAIN, NAME, overload, outputs, declared_attributes(ATTRIBUTES),
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

    def apply_softcap(self, scores: ir.Value) -> ir.Value:
        """c·tanh(scores / c) with c the softcap attribute, when the Variant caps."""
        if not self.variant.softcap:
            return scores
        cap = self.like(self.ref_float("softcap"), scores)
        return self.op("Mul", self.op("Tanh", self.op("Div", scores, cap)), cap)

    def bias(self, scores: ir.Value, mask: ir.Value | None, past_key: ir.Value | None,
             nonpad: ir.Value | None) -> ir.Value | None:
        """The additive bias of the scores' type, broadcastable to them (None: nothing is masked): the
        mask (false -> -inf) plus -inf where the causal mode, the windows or the padding block a key."""
        parts = []
        if mask is not None:
            if self.variant.mask == "bool":
                parts.append(self.op("Where", mask, self.like(self.scalar(0.0), scores),
                                     self.like(self.scalar(-np.inf), scores)))
            else:
                parts.append(self.like(mask, scores) if self.variant.mask_cast else mask)
        blocked = self.blocked(scores, past_key, nonpad)
        if blocked is not None:
            parts.append(self.op("Where", blocked, self.like(self.scalar(-np.inf), scores),
                                 self.like(self.scalar(0.0), scores)))
        if not parts:
            return None
        return parts[0] if len(parts) == 1 else self.op("Add", parts[0], parts[1])

    def blocked(self, scores: ir.Value, past_key: ir.Value | None, nonpad: ir.Value | None) -> ir.Value | None:
        """Bool, true where the causal mode, the windows or the padding mask a key: [Sq, T], or
        [B, 1, Sq, T] / [B, 1, 1, T] when it depends on nonpad_kv_seqlen; None when none applies."""
        variant = self.variant
        if variant.causal == 0 and not variant.window and not variant.nonpad:
            return None
        q_len, kv_len = self.dim(scores, -2), self.dim(scores, -1)
        rows, cols = self.unsqueeze(self.arange(q_len), 1), self.arange(kv_len)
        position = rows  # query i sits at offset + i: offset = the cache length, or nonpad - Sq per entry
        if past_key is not None:
            position = self.op("Add", rows, self.dim(past_key, 2))
        elif nonpad is not None:
            position = self.op("Add", rows, self.unsqueeze(self.op("Sub", nonpad, q_len), 1, 2, 3))
        terms = [self.causal_blocked(rows, cols, position, q_len, kv_len)]
        if "l" in variant.window:
            terms.append(self.op("Less", cols, self.op("Sub", position, self.ref_int("left_window_size"))))
        if "r" in variant.window:
            terms.append(self.op("Greater", cols, self.op("Add", position, self.ref_int("right_window_size"))))
        if nonpad is not None:
            padding = self.op("GreaterOrEqual", cols, self.unsqueeze(nonpad, 1))  # [B, T]
            terms.append(self.unsqueeze(padding, 1, 2))
        present = [term for term in terms if term is not None]
        total = present[0]
        for term in present[1:]:
            total = self.op("Or", total, term)
        return total

    def causal_blocked(self, rows: ir.Value, cols: ir.Value, position: ir.Value, q_len: ir.Value,
                       kv_len: ir.Value) -> ir.Value | None:
        """Keys the causal mode masks (1: j > offset + i, 2: j > i + T - Sq, None: the attribute's)."""
        causal = self.variant.causal
        if causal == 0:
            return None
        lower_right = self.op("Add", rows, self.op("Sub", kv_len, q_len))
        if causal == 1:
            return self.op("Greater", cols, position)
        if causal == 2:
            return self.op("Greater", cols, lower_right)
        mode, zero = self.ref_int("causal"), self.scalar(0)  # the generic body: no cache, offset 0
        limit = self.op("Where", self.op("Equal", mode, self.scalar(2)), lower_right, rows)
        return self.op("And", self.op("Greater", cols, limit), self.op("Greater", mode, zero))

    def softmax(self, scores: ir.Value, value: ir.Value, bias: ir.Value | None) -> ir.Value:
        """Softmax over the keys (in the softmax_precision type and back to V's when the Variant casts);
        rows whose bias is -inf at every key are zeros when the Variant can mask one, and with
        zero_nan_rows every NaN probability is (which covers those rows too)."""
        if self.variant.softmax_cast:
            precision = ir.RefAttr("to", "softmax_precision", ir.AttributeType.INT)
            probs = self.like(self.op("Softmax", self.op("Cast", scores, to=precision), axis=-1), value)
        else:
            probs = self.op("Softmax", scores, axis=-1)
        zero = self.like(self.scalar(0.0), probs)
        if self.variant.zero_nan:
            return self.op("Where", self.op("IsNaN", probs), zero, probs)
        if self.variant.guarded and bias is not None:
            row_max = self.reduce("Max", bias, [-1], keepdims=True)
            fully_masked = self.op("Equal", row_max, self.like(self.scalar(-np.inf), bias))
            probs = self.op("Where", fully_masked, zero, probs)
        if self.variant.zero_nan is None:  # the generic body: the attribute decides at run time
            wanted = self.op("Equal", self.ref_int("zero_nan_rows"), self.scalar(1))
            probs = self.op("Where", self.op("And", self.op("IsNaN", probs), wanted), zero, probs)
        return probs
