"""onnxruntime's `com.microsoft.GroupQueryAttention`, as its model builder writes it for every LLM: 3-D Q, K, V
(or Q, K and V packed in one input), a BNSH KV cache whose update happens inside the op, and the lengths
`seqlens_k` (each sequence's total length - 1) and `total_sequence_length`.

onnxruntime's definition (its CPU kernel, measured): sequences are right-padded. A call is the first prompt
when its new length S equals total_sequence_length; then every sequence's new tokens start at 0, otherwise
at past_b = seqlens_k[b] + 1 - S. present (the cache after the call, max(P, total_sequence_length) long, P
the past buffer's length) holds the past's first past_b entries, the S new ones at past_b, and zeros after.
Query i of sequence b sits at past_b + i and sees the keys up to it (and only the last W with
local_window_size W).

The op becomes standard ops that write present exactly so (Concat(past, new) when nothing is padded), and
edgeattn.Attention over its first total_sequence_length keys: without a window, a key mask (key j is a key of
sequence b iff j <= seqlens_k[b]) and the lower-right causal mask, which place query i at past_b + i whenever
the sequence's last new token is its last token; that is every call onnxruntime runs with a batch > 1 (one
new token, or the first prompt), and a chunk after a past (batch 1) is checked at run time (zeros added to
Q whose shape broadcasts only when it holds). With a window, one mask per query row says exactly which keys
it sees. Rows of padding (queries past a sequence's end) are not defined by onnxruntime (its kernel reads
scores it never wrote); here they see the keys of their sequence.

Rotary embedding inside the op (`do_rotary`, with `cos_cache`/`sin_cache` [max positions, R/2]) is written
out with standard ops on Q and K before the attention: new token i of sequence b sits at position past_b + i,
its first R channels of each head rotated in halves (`rotary_interleaved = 0`) or in pairs (1), the rest
passed through.

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
from edgeattn.graphs.values import dims, rank, same_dim, static_dim

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
        _check_lengths(seqlens, total, node)
        used = _phrase(past_key is not None, self.outputs, features)
        if rotary is not None:
            used = ", ".join(filter(None, [used, f"rotary embedding ({rotary.style}, {rotary.pairs * 2} channels)"]))
        window = int_attribute(node, "local_window_size", -1)
        facts = SiteFacts(node, self.dialect, "bs(hd)", q_heads, kv_heads, head_size, "bool", 2, scale,
                          {"packed_qkv": packed, "features": used,
                           "assumes": "right-padded sequences as onnxruntime's kernel reads them; a chunk after a "
                                      "past ends at total_sequence_length (checked at run time)"})
        # With a window, each query row's mask holds the causal limit too.
        attributes = {**attention_attributes(scale, 0 if window > 0 else 2, q_heads, kv_heads),
                      **{k: v for k, v in features.items() if k != "left_window_size"}}
        presents: list[ir.Value] = []

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
            lengths = _Lengths.of(op, k, past_key, seqlens, total)
            if rotary is not None:
                q = rotary.apply(op, q, lengths.positions, q_heads, head_size, sizes[0])
                k = rotary.apply(op, k, lengths.positions, kv_heads, head_size, sizes[1])
            q4, k4, v4 = (_heads_first(op, x, h, head_size, dtype)
                          for x, h in ((q, q_heads), (k, kv_heads), (v, kv_heads)))
            presents[:] = [lengths.present(op, past, new, dtype) for past, new in ((past_key, k4), (past_value, v4))]
            keys, values = (lengths.attended(op, p) for p in presents)
            if window > 0:
                mask = lengths.window_mask(op, window)
            else:
                mask = lengths.key_mask(op)
                q4 = lengths.chunk_guard(op, q4, dtype)
            return [q4, keys, values, mask]

        def finish(op: Any, y: ir.Value) -> ir.Value:
            int64 = op.Constant(value=ir.tensor(np.array([0, 0, sizes[0]], np.int64)))
            out = op.Reshape(op.Transpose(y, perm=[0, 2, 1, 3]), int64)
            out.dtype, out.shape = dtype, ir.Shape([*(dims(query) or [None, None])[:2], sizes[0]])
            return out

        return Plan(facts, attributes, build_inputs, 4, dtype, finish, outputs=self.outputs,
                    others=lambda: list(presents))


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
    """softcap and local_window_size in edgeattn.Attention's terms (only those in use): softcap is an
    attribute of the node; onnxruntime's local_window_size W lets query position p see W keys, p - W + 1 .. p
    (measured with its CPU kernel, as Hugging Face's sliding_window), ONNX's left_window_size W - 1, which
    `inspect` shows and the rewrite writes into the mask of each query row."""
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
        cos = op.Unsqueeze(op.Gather(self.cos, positions, axis=0), int64(2))  # [B, S, 1, R/2]
        sin = op.Unsqueeze(op.Gather(self.sin, positions, axis=0), int64(2))
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


def _int64(op: Any, *values: int) -> ir.Value:
    return op.Constant(value=ir.tensor(np.array(values, np.int64)))


def _range(op: Any, length: ir.Value) -> ir.Value:
    """0 .. length - 1 (int64) for a [1] int64 length."""
    zero, one = (op.Constant(value=ir.tensor(np.array(v, np.int64))) for v in (0, 1))
    return op.Range(zero, op.Squeeze(length, _int64(op, 0)), one)


def _heads_first(op: Any, x: ir.Value, heads: int, head_size: int, dtype: ir.DataType) -> ir.Value:
    """[B, S, heads·d] -> [B, heads, S, d]."""
    out = op.Transpose(op.Reshape(x, _int64(op, 0, 0, heads, head_size)), perm=[0, 2, 1, 3])
    out.dtype, out.shape = dtype, ir.Shape([None, heads, None, head_size])
    return out


@dataclass(frozen=True)
class _Lengths:
    """The call's lengths as onnxruntime's kernel reads them (int64 tensors): S new tokens; P, the past buffer's
    length; total = total_sequence_length; start [B] = past_b (0 at the first prompt, else seqlens_k + 1 - S)."""

    new: ir.Value  # [1]
    past: ir.Value  # [1]
    total: ir.Value  # [1]
    last: ir.Value  # [B]: seqlens_k
    start: ir.Value  # [B]
    positions: ir.Value  # [B, S]: start + i, the positions of the new tokens

    @staticmethod
    def of(op: Any, k: ir.Value, past_key: ir.Value | None, seqlens: ir.Value, total: ir.Value) -> "_Lengths":
        new = op.Shape(k, start=1, end=2)
        past = op.Shape(past_key, start=2, end=3) if past_key is not None else _int64(op, 0)
        total64 = op.Reshape(op.Cast(total, to=ir.DataType.INT64), _int64(op, 1))
        last = op.Reshape(op.Cast(seqlens, to=ir.DataType.INT64), _int64(op, -1))
        first_prompt = op.Equal(new, total64)
        start = op.Where(first_prompt, _int64(op, 0), op.Sub(op.Add(last, _int64(op, 1)), new))
        steps = _range(op, new)
        positions = op.Add(op.Unsqueeze(start, _int64(op, 1)), op.Unsqueeze(steps, _int64(op, 0)))
        return _Lengths(new, past, total64, last, start, positions)

    def present(self, op: Any, past: ir.Value | None, new: ir.Value, dtype: ir.DataType) -> ir.Value:
        """[B, H, max(P, total), d]: the past's first past_b entries, the new ones at past_b, zeros after."""
        length = op.Max(self.past, self.total)
        slots = op.Reshape(_range(op, length), _int64(op, 1, 1, -1, 1))
        offset = op.Sub(slots, op.Reshape(self.start, _int64(op, -1, 1, 1, 1)))  # [B, 1, T, 1]
        is_new = op.And(op.GreaterOrEqual(offset, _int64(op, 0)), op.Less(offset, self.new))
        index = op.Max(op.Min(offset, op.Sub(self.new, _int64(op, 1))), _int64(op, 0))
        full = op.Concat(op.Shape(new, start=0, end=2), length, op.Shape(new, start=3, end=4), axis=0)
        gathered = op.GatherElements(new, op.Expand(index, full), axis=2)
        zero = op.Constant(value=ir.tensor(np.zeros((), dtype.numpy())))
        if past is None:
            rest = zero
        else:
            pads = op.Concat(_int64(op, 0, 0, 0, 0, 0, 0), op.Sub(length, self.past), _int64(op, 0), axis=0)
            kept = op.Less(slots, op.Reshape(self.start, _int64(op, -1, 1, 1, 1)))
            rest = op.Where(kept, op.Pad(past, pads), zero)
        out = op.Where(is_new, gathered, rest)
        batch, heads, _, size = dims(new) or [None] * 4
        out.dtype, out.shape = dtype, ir.Shape([batch, heads, None, size])
        return out

    def attended(self, op: Any, present: ir.Value) -> ir.Value:
        """present's first total_sequence_length positions (the keys the queries may see)."""
        out = op.Slice(present, _int64(op, 0), self.total, _int64(op, 2))
        out.dtype, out.shape = present.dtype, present.shape
        return out

    def key_mask(self, op: Any) -> ir.Value:
        """[B, 1, 1, total] bool: key j belongs to sequence b iff j <= seqlens_k[b]."""
        keys = _range(op, self.total)
        mask = op.LessOrEqual(op.Reshape(keys, _int64(op, 1, 1, 1, -1)), op.Reshape(self.last, _int64(op, -1, 1, 1, 1)))
        mask.dtype = ir.DataType.BOOL
        return mask

    def window_mask(self, op: Any, window: int) -> ir.Value:
        """[B, 1, S, total] bool: query i of sequence b (at p = past_b + i) sees the keys p - W + 1 .. p."""
        keys = op.Reshape(_range(op, self.total), _int64(op, 1, 1, 1, -1))
        rows = op.Unsqueeze(self.positions, _int64(op, 1, 3))  # [B, 1, S, 1]
        mask = op.And(op.LessOrEqual(keys, rows), op.Greater(keys, op.Sub(rows, _int64(op, window))))
        mask.dtype = ir.DataType.BOOL
        return mask

    def chunk_guard(self, op: Any, q: ir.Value, dtype: ir.DataType) -> ir.Value:
        """q plus zeros of shape [1, 1, 1, 1 + mismatch·(d + 1)]: q itself unless a chunk after a past (S > 1,
        not the first prompt) ends before total_sequence_length in some sequence, where the lower-right causal
        mask would misplace its queries; a broadcasting error at run time then. (A Reshape would not do:
        onnxruntime merges it with the next one and the check disappears.)"""
        chunk = op.Cast(op.And(op.Greater(self.new, _int64(op, 1)), op.Not(op.Equal(self.new, self.total))),
                        to=ir.DataType.INT64)
        short = op.ReduceMax(op.Abs(op.Sub(op.Add(self.last, _int64(op, 1)), self.total)), keepdims=1)
        width = op.Add(op.Mul(op.Mul(chunk, short), op.Add(op.Shape(q, start=3, end=4), _int64(op, 1))),
                       _int64(op, 1))
        zero = ir.tensor(np.zeros(1, dtype.numpy()))
        guarded = op.Add(q, op.ConstantOfShape(op.Concat(_int64(op, 1, 1, 1), width, axis=0), value=zero))
        guarded.dtype, guarded.shape = dtype, q.shape
        return guarded


def _check_lengths(seqlens: ir.Value, total: ir.Value, node: ir.Node) -> None:
    if seqlens.dtype not in (None, ir.DataType.INT32) or total.dtype not in (None, ir.DataType.INT32):
        raise Refusal("seqlens_k and total_sequence_length of GroupQueryAttention must be int32", node)


def _phrase(cached: bool, outputs: int, features: dict[str, Any]) -> str | None:
    """What the site uses beyond the basic form, as `inspect` shows it."""
    used = (["past_key", "past_value"] if cached else []) + list(OUTPUT_NAMES[1:outputs])
    used += [f"{name} = {value:g}" if isinstance(value, float) else f"{name} = {value}"
             for name, value in features.items()]
    return ", ".join(used) or None
