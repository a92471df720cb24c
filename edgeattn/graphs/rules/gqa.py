"""onnxruntime's `com.microsoft.GroupQueryAttention`, as its model builder writes it for every LLM: 3-D Q, K, V
(or Q, K and V packed in one input), a BNSH KV cache whose concatenation happens inside the op, and the
lengths `seqlens_k` (total length - 1 per batch entry) and `total_sequence_length`.

The op becomes edgeattn.Attention with past_key/past_value and present_key/present_value (present =
Concat(past, new) on the sequence axis) and a lower-right causal mask. That is onnxruntime's definition when
every batch entry holds all its tokens: seqlens_k[b] + 1 = total_sequence_length = P + S (past length plus
new length), which is what the model builder feeds for batch 1 and for batches of sequences of equal length,
at the prompt (P = 0) and at each decode step. Where these lengths are constants the rule checks them; where
they are inputs, the rewritten graph checks them at run time: zeros added to Q whose shape broadcasts only
when they hold, so a padded batch or a shared past/present buffer fails with a broadcasting error instead
of being computed silently wrong.

Rotary embedding inside the op (`do_rotary`, with `cos_cache`/`sin_cache` [max positions, R/2]) is written
out with standard ops on Q and K before the attention: token i of the call sits at position P + i (P the past
length, which the length guard above makes every batch entry's), its first R channels of each head rotated
in halves (`rotary_interleaved = 0`) or in pairs (1), the rest passed through.

Refused, with the reason: position_ids, the windowed cache, quantized caches, Q/K normalization, attention
bias, head sinks, smooth softmax, the QK output, bidirectional GQA, and any attribute or input this rule does
not know.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx_ir as ir

from edgeattn.graphs.rules.base import (FusedOutputsRule, Plan, Refusal, SiteFacts, attention_attributes,
                                        float_attribute, int_attribute)
from edgeattn.graphs.rules.fused import MS, _default_scale, _heads, _input
from edgeattn.graphs.values import dims, rank, same_dim, static_array, static_dim

OUTPUT_NAMES = ("y", "present_key", "present_value")  # the outputs handled
PATTERN_OUTPUTS = (*OUTPUT_NAMES, "output_qk")
FLOAT_TYPES = (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16)
# Inputs 0-6 are handled; these, when given, are refused with their name.
UNSUPPORTED_INPUTS = {9: "position_ids", 10: "attention_bias", 11: "head_sink",
                      12: "k_scale", 13: "v_scale", 14: "q_norm_weight", 15: "k_norm_weight"}
# Attributes this rule reads; any other attribute is refused unless it has its "off" value here.
HANDLED_ATTRIBUTES = {"num_heads", "kv_num_heads", "scale", "softcap", "local_window_size", "causal", "do_rotary",
                      "rotary_interleaved"}
OFF_ATTRIBUTES: dict[str, Any] = {
    "qk_output": 0, "smooth_softmax": 0, "sliding_window_cache": 0,
    "k_quant_type": "NONE", "v_quant_type": "NONE",
    "qk_norm_epsilon": None,  # read only with q_norm_weight / k_norm_weight (refused)
}
FEATURE_NAMES = {"qk_output": "qk_output (the QK output)",
                 "smooth_softmax": "smooth_softmax", "sliding_window_cache": "sliding_window_cache (a windowed cache)",
                 "k_quant_type": "a quantized key cache", "v_quant_type": "a quantized value cache"}


class MsGroupQueryAttention(FusedOutputsRule):
    """`com.microsoft.GroupQueryAttention` with `outputs` declared outputs (1 to 3; the instance for 4, which
    also takes malformed longer nodes, refuses the output_qk output)."""

    dialect = "ms-group-query-attention"
    root = (MS, "GroupQueryAttention")
    output_names = PATTERN_OUTPUTS

    def plan(self, **b: Any) -> Plan:
        node = b["y"].producer()
        if self.outputs > len(OUTPUT_NAMES):
            raise Refusal("the output_qk output (qk_output) of GroupQueryAttention is not supported", node)
        _check_supported(node)
        query, past_key, past_value = b["query"], _input(node, 3), _input(node, 4)
        seqlens, total = _input(node, 5), _input(node, 6)
        _check_operands(node, query, past_key, past_value, seqlens, total, self.outputs)
        assert seqlens is not None and total is not None and query.dtype is not None  # checked just above
        dtype = query.dtype
        q_heads, kv_heads = int_attribute(node, "num_heads", 0), int_attribute(node, "kv_num_heads", 0)
        packed, sizes = _layout(node, query, q_heads, kv_heads)
        head_size = sizes[0] // q_heads
        scale = _default_scale(node, head_size, zero_is_default=True)
        features = _features(node)
        rotary = _rotary(node, query, head_size)
        _check_lengths(node, query, seqlens, total, past_key)
        used = _phrase(past_key is not None, self.outputs, features)
        if rotary is not None:
            used = ", ".join(filter(None, [used, f"rotary embedding ({rotary.style}, {rotary.pairs * 2} channels)"]))
        facts = SiteFacts(node, self.dialect, "bs(hd)", q_heads, kv_heads, head_size, "none", 2, scale,
                          {"packed_qkv": packed, "features": used,
                           "assumes": "seqlens_k + 1 = total_sequence_length = past + new for every batch entry "
                                      "(checked at run time)"})
        attributes = {**attention_attributes(scale, 2, q_heads, kv_heads), **features}

        def build_inputs(op: Any) -> list[ir.Value | None]:
            if packed:
                split = op.Constant(value=ir.tensor(np.array(sizes, np.int64)))
                q, k, v = op.Split(query, split, axis=-1, _outputs=3)
            else:
                q, k, v = query, _input(node, 1), _input(node, 2)
            for value, size in ((k, sizes[1]), (v, sizes[2])):
                if value.shape is None:
                    value.shape = ir.Shape([*(dims(query) or [None, None])[:2], size])
                value.dtype = value.dtype or dtype
            if rotary is not None:
                positions = _positions(op, k, past_key)
                q = rotary.apply(op, q, positions, q_heads, head_size, sizes[0])
                k = rotary.apply(op, k, positions, kv_heads, head_size, sizes[1])
            q = _length_guard(op, q, k, past_key, seqlens, total, dtype)
            return [q, k, v, None, past_key, past_value]

        return Plan(facts, attributes, build_inputs, 3, dtype, outputs=self.outputs)


def gqa_rules() -> tuple[FusedOutputsRule, ...]:
    """One instance per output count, most outputs first."""
    return MsGroupQueryAttention.instances()


def _check_supported(node: ir.Node) -> None:
    """Refuse the inputs, outputs and attributes that have no edgeattn.Attention counterpart here."""
    for index, name in UNSUPPORTED_INPUTS.items():
        if _input(node, index) is not None:
            raise Refusal(f"the {name} input of GroupQueryAttention is not supported", node)
    for name, attr in node.attributes.items():
        if name in HANDLED_ATTRIBUTES:
            continue
        if name not in OFF_ATTRIBUTES:
            raise Refusal(f"the attribute {name} of GroupQueryAttention is not supported", node)
        off = OFF_ATTRIBUTES[name]
        if off is not None and (attr.is_ref() or attr.value != off):
            raise Refusal(f"{FEATURE_NAMES[name]} of GroupQueryAttention is not supported", node)
    if int_attribute(node, "causal", 1) != 1:
        raise Refusal("bidirectional GroupQueryAttention (causal = 0) is not supported", node)


def _check_operands(node: ir.Node, query: ir.Value, past_key: ir.Value | None, past_value: ir.Value | None,
                    seqlens: ir.Value | None, total: ir.Value | None, outputs: int) -> None:
    """The inputs the op needs, with the ranks and types this rule takes."""
    if seqlens is None or total is None:
        raise Refusal("GroupQueryAttention needs its seqlens_k and total_sequence_length inputs", node)
    if (past_key is None) != (past_value is None):
        raise Refusal("past_key and past_value of GroupQueryAttention must be given together", node)
    if past_key is not None and outputs < len(OUTPUT_NAMES):
        raise Refusal("a GroupQueryAttention past without present_key/present_value outputs is not supported "
                      "(onnxruntime's CPU kernel then ignores the past)", node)
    for cache in (past_key, past_value):
        if cache is not None and rank(cache) != 4:
            raise Refusal(f"the KV cache input '{cache.name}' is not 4-D BNSH [B, Hkv, P, d] (rank {rank(cache)})",
                          cache)
    if rank(query) != 3:
        raise Refusal(f"the query of GroupQueryAttention is not 3-D [B, S, hidden] (rank {rank(query)})", query)
    if query.dtype not in FLOAT_TYPES:
        name = query.dtype.name if query.dtype is not None else "unknown"
        raise Refusal(f"the element type of the query is {name}, not float, float16 or bfloat16", query)


def _layout(node: ir.Node, query: ir.Value, q_heads: int, kv_heads: int) -> tuple[bool, tuple[int, int, int]]:
    """(packed, [Q, K, V hidden sizes]): separate 3-D Q, K, V, or Q, K and V packed in the query."""
    key, value = _input(node, 1), _input(node, 2)
    hidden = static_dim(query, 2)
    if key is None and value is None:
        if q_heads <= 0 or kv_heads <= 0 or q_heads % kv_heads:
            raise Refusal(f"num_heads {q_heads} / kv_num_heads {kv_heads} of GroupQueryAttention are not positive "
                          "head counts, the first a multiple of the second", node)
        width = q_heads + 2 * kv_heads
        if hidden is None or hidden % width:
            raise Refusal(f"the packed QKV width {hidden} is unknown or not a multiple of num_heads + "
                          f"2·kv_num_heads = {width}", query)
        head_size = hidden // width
        return True, (q_heads * head_size, kv_heads * head_size, kv_heads * head_size)
    if key is None or value is None:
        raise Refusal("GroupQueryAttention with a key but no value (or a value but no key) is not supported", node)
    if rank(key) != 3 or rank(value) != 3:
        raise Refusal("the key and value of GroupQueryAttention are not 3-D [B, S, kv_hidden]", node)
    if not same_dim((dims(query) or [None] * 2)[1], (dims(key) or [None] * 2)[1]):
        raise Refusal("the key's sequence length is not provably the query's (GroupQueryAttention positions the "
                      "queries from seqlens_k)", key)
    kv_hidden, v_hidden = static_dim(key, 2), static_dim(value, 2)
    if hidden is None or kv_hidden is None or v_hidden is None:
        raise Refusal("the hidden sizes of the query, key or value of GroupQueryAttention are unknown", node)
    q_heads = _heads(node, "num_heads", hidden)
    kv_heads = _heads(node, "kv_num_heads", kv_hidden)
    if q_heads % kv_heads or hidden // q_heads != kv_hidden // kv_heads or v_hidden != kv_hidden:
        raise Refusal(f"the head sizes of GroupQueryAttention's query ({hidden}/{q_heads}), key ({kv_hidden}/"
                      f"{kv_heads}) and value ({v_hidden}) do not agree", node)
    return False, (hidden, kv_hidden, v_hidden)


def _features(node: ir.Node) -> dict[str, Any]:
    """softcap and local_window_size as edgeattn.Attention attributes (only those in use). onnxruntime's
    local_window_size W lets query position p see W keys, p - W + 1 .. p (measured with its CPU kernel, as
    Hugging Face's sliding_window): ONNX's left_window_size W - 1."""
    out: dict[str, Any] = {}
    softcap = float_attribute(node, "softcap", 0.0)
    if not np.isfinite(softcap) or softcap < 0:
        raise Refusal(f"softcap {softcap:g} of GroupQueryAttention is not a finite number >= 0", node)
    if softcap > 0:
        out["softcap"] = float(softcap)
    window = int_attribute(node, "local_window_size", -1)
    if window == 0 or window < -1:
        raise Refusal(f"local_window_size {window} is neither -1 (unbounded) nor a window size >= 1", node)
    if window > 0:
        out["left_window_size"] = int(window) - 1
    return out


@dataclass(frozen=True)
class Rotary:
    """GroupQueryAttention's rotary embedding: the caches, how many channel pairs of a head turn, and how."""

    cos: ir.Value
    sin: ir.Value
    pairs: int  # R / 2: the caches' width
    interleaved: bool

    @property
    def style(self) -> str:
        return "interleaved pairs" if self.interleaved else "halves"

    def apply(self, op: Any, x: ir.Value, positions: ir.Value, heads: int, head_size: int, hidden: int) -> ir.Value:
        """x [B, S, heads·d] with the first 2·pairs channels of each head rotated by the angle of its position."""
        def int64(*values: int) -> ir.Value:
            return op.Constant(value=ir.tensor(np.array(values, np.int64)))

        split = op.Reshape(x, int64(0, 0, heads, head_size))  # [B, S, H, d]
        cos = op.Unsqueeze(op.Gather(self.cos, positions, axis=0), int64(0, 2))  # [1, S, 1, R/2]
        sin = op.Unsqueeze(op.Gather(self.sin, positions, axis=0), int64(0, 2))
        turned, rest = (split, None) if 2 * self.pairs == head_size else \
            op.Split(split, int64(2 * self.pairs, head_size - 2 * self.pairs), axis=-1, _outputs=2)
        if self.interleaved:  # channel pairs (2j, 2j + 1)
            pairs = op.Reshape(turned, int64(0, 0, 0, self.pairs, 2))
            first, second = op.Split(pairs, int64(1, 1), axis=-1, _outputs=2)
            first, second = op.Squeeze(first, int64(-1)), op.Squeeze(second, int64(-1))
            out_first = op.Sub(op.Mul(first, cos), op.Mul(second, sin))
            out_second = op.Add(op.Mul(second, cos), op.Mul(first, sin))
            stacked = op.Concat(op.Unsqueeze(out_first, int64(-1)), op.Unsqueeze(out_second, int64(-1)), axis=-1)
            turned = op.Reshape(stacked, int64(0, 0, 0, 2 * self.pairs))
        else:  # halves (j, j + R/2)
            first, second = op.Split(turned, int64(self.pairs, self.pairs), axis=-1, _outputs=2)
            turned = op.Concat(op.Sub(op.Mul(first, cos), op.Mul(second, sin)),
                               op.Add(op.Mul(second, cos), op.Mul(first, sin)), axis=-1)
        whole = turned if rest is None else op.Concat(turned, rest, axis=-1)
        out = op.Reshape(whole, int64(0, 0, heads * head_size))
        out.dtype, out.shape = self.cos.dtype, ir.Shape([*(dims(x) or [None, None])[:2], hidden])  # Q's type
        return out


def _rotary(node: ir.Node, query: ir.Value, head_size: int) -> Rotary | None:
    """The rotary embedding of the node (do_rotary = 1), checked; None without one."""
    if int_attribute(node, "do_rotary", 0) == 0:
        for index, name in ((7, "cos_cache"), (8, "sin_cache")):
            if _input(node, index) is not None:
                raise Refusal(f"a {name} input without do_rotary = 1 in GroupQueryAttention", node)
        return None
    if int_attribute(node, "do_rotary", 0) != 1:
        raise Refusal(f"do_rotary {int_attribute(node, 'do_rotary', 0)} of GroupQueryAttention is not 0 or 1", node)
    cos, sin = _input(node, 7), _input(node, 8)
    if cos is None or sin is None:
        raise Refusal("do_rotary = 1 without the cos_cache and sin_cache inputs in GroupQueryAttention", node)
    interleaved = int_attribute(node, "rotary_interleaved", 0)
    if interleaved not in (0, 1):
        raise Refusal(f"rotary_interleaved {interleaved} of GroupQueryAttention is not 0 or 1", node)
    pairs = static_dim(cos, 1)
    if rank(cos) != 2 or rank(sin) != 2 or pairs is None or static_dim(sin, 1) != pairs:
        raise Refusal("the cos_cache and sin_cache of GroupQueryAttention are not 2-D [positions, R/2] with one "
                      "static width", node)
    if not 0 < 2 * pairs <= head_size:
        raise Refusal(f"the rotary width 2·{pairs} of GroupQueryAttention is not within the head size {head_size}",
                      node)
    if cos.dtype != query.dtype or sin.dtype != query.dtype:
        raise Refusal("the cos_cache and sin_cache of GroupQueryAttention are not of the query's type", node)
    return Rotary(cos, sin, pairs, bool(interleaved))


def _positions(op: Any, k: ir.Value, past_key: ir.Value | None) -> ir.Value:
    """[S] int64: the positions P .. P + S - 1 of the call's tokens (P = the past length, 0 without a past)."""
    def int64(*values: int) -> ir.Value:
        return op.Constant(value=ir.tensor(np.array(values, np.int64)))

    new = op.Squeeze(op.Shape(k, start=1, end=2), int64(0))
    start = op.Squeeze(op.Shape(past_key, start=2, end=3), int64(0)) if past_key is not None else \
        op.Constant(value=ir.tensor(np.array(0, np.int64)))
    return op.Range(start, op.Add(start, new), op.Constant(value=ir.tensor(np.array(1, np.int64))))


def _check_lengths(node: ir.Node, query: ir.Value, seqlens: ir.Value, total: ir.Value,
                   past_key: ir.Value | None) -> None:
    """The length inputs' types, and their values where they are constants: every batch entry holds past +
    new tokens (no padding, no shared buffer)."""
    if seqlens.dtype not in (None, ir.DataType.INT32) or total.dtype not in (None, ir.DataType.INT32):
        raise Refusal("seqlens_k and total_sequence_length of GroupQueryAttention must be int32", node)
    new = static_dim(query, 1)
    past = 0 if past_key is None else static_dim(past_key, 2)
    expected = new + past if new is not None and past is not None else None
    lengths = static_array(seqlens)
    if lengths is not None and lengths.size and (lengths != lengths.flat[0]).any():
        raise Refusal(f"seqlens_k {lengths.tolist()} varies across the batch (padding) in GroupQueryAttention; "
                      "only sequences of equal length are supported", seqlens)
    if lengths is not None and lengths.size and expected is not None and int(lengths.flat[0]) + 1 != expected:
        raise Refusal(f"seqlens_k + 1 = {int(lengths.flat[0]) + 1} is not past + new = {expected} (a shared "
                      "past/present buffer or padding) in GroupQueryAttention", seqlens)
    stated = static_array(total)
    if stated is not None and stated.size == 1 and expected is not None and int(stated.reshape(())) != expected:
        raise Refusal(f"total_sequence_length {int(stated.reshape(()))} is not past + new = {expected} (a shared "
                      "past/present buffer) in GroupQueryAttention", total)


def _length_guard(op: Any, q: ir.Value, k: ir.Value, past_key: ir.Value | None, seqlens: ir.Value,
                  total: ir.Value, dtype: ir.DataType) -> ir.Value:
    """Q plus zeros of shape [1, 1, 1 + mismatch · (hidden + 1)]: Q itself when seqlens_k + 1 =
    total_sequence_length = past + new for every batch entry (mismatch 0), a broadcasting error at run time
    otherwise. (A Reshape would not do: onnxruntime merges it with the next one and the check disappears.)"""
    def int64(*values: int) -> ir.Value:
        return op.Constant(value=ir.tensor(np.array(values, np.int64)))

    length = op.Shape(k, start=1, end=2)
    if past_key is not None:
        length = op.Add(length, op.Shape(past_key, start=2, end=3))
    lengths = op.Add(op.Cast(seqlens, to=ir.DataType.INT64), int64(1))
    longest = op.ReduceMax(lengths, keepdims=1)
    spread = op.Sub(longest, op.ReduceMin(lengths, keepdims=1))
    off_total = op.Abs(op.Sub(op.Reshape(op.Cast(total, to=ir.DataType.INT64), int64(1)), length))
    mismatch = op.Add(op.Add(spread, off_total), op.Abs(op.Sub(longest, length)))
    width = op.Add(op.Mul(mismatch, op.Add(op.Shape(q, start=2, end=3), int64(1))), int64(1))
    zero = ir.tensor(np.zeros(1, dtype.numpy()))
    guarded = op.Add(q, op.ConstantOfShape(op.Concat(int64(1, 1), width, axis=0), value=zero))
    guarded.dtype = dtype
    return guarded


def _phrase(cached: bool, outputs: int, features: dict[str, Any]) -> str | None:
    """What the site uses beyond the basic form, as `inspect` shows it."""
    used = (["past_key", "past_value"] if cached else []) + list(OUTPUT_NAMES[1:outputs])
    used += [f"{name} = {value:g}" if isinstance(value, float) else f"{name} = {value}"
             for name, value in features.items()]
    return ", ".join(used) or None
