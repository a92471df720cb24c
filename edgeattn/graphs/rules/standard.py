"""ONNX `Attention` (opsets 23, 24 and 25), as the dynamo exporter writes SDPA and as hand-written graphs use
the whole contract: every input and output and attribute maps onto edgeattn.Attention, which has the same
definition (`edgeattn.ops.attention.spec`).

One rule instance per output count (1 to 4), since a pattern binds a fixed number of outputs: outputs a
node declares but nothing reads are dropped from the edgeattn node. Refused, with the reason, only what
the specification itself leaves undefined or forbids: a negative or non-finite softcap (its formula and
its reference implementation disagree), past_key without past_value, nonpad_kv_seqlen with a cache inside
the op, inputs and attributes the node's opset does not have, and operands of unknown rank.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import onnx_ir as ir

from edgeattn.graphs.features import is_read
from edgeattn.graphs.rules.base import (AttentionRule, Plan, Refusal, SiteFacts, attention_attributes, float_attribute,
                                        int_attribute)
from edgeattn.graphs.rules.fused import _default_scale, _heads, _input
from edgeattn.graphs.rules.operands import read_key_value_heads
from edgeattn.graphs.values import dims, rank, static_dim
from edgeattn.ops.attention.spec import beyond_basic_form
from edgeattn.ops.dims import canonical_dim
from edgeattn.ops.spec import standard_opset

OUTPUT_NAMES = ("y", "present_key", "present_value", "qk_matmul_output")
NONPAD_OPSET = 24  # nonpad_kv_seqlen, and masks shorter than the keys padded with -inf
WINDOW_OPSET = 25  # left_window_size / right_window_size


class OnnxAttention(AttentionRule):
    """ONNX `Attention` with `outputs` declared outputs (the instance for 4 also takes malformed longer ones)."""

    dialect = "onnx-attention"
    root = ("", "Attention")

    def __init__(self, outputs: int = 1) -> None:
        super().__init__()
        self.outputs = outputs

    def may_match(self, node: ir.Node) -> bool:
        count = len(node.outputs)
        fits = count == self.outputs or (self.outputs == 1 and count == 0) or (self.outputs == len(OUTPUT_NAMES)
                                                                              and count > self.outputs)
        return fits and super().may_match(node)

    def pattern(self, op, query, key, value):
        return op.Attention(query, key, value, _allow_other_inputs=True, _outputs=list(OUTPUT_NAMES[: self.outputs]))

    def plan(self, **b: Any) -> Plan:
        node = b["y"].producer()
        opset = _opset(node)
        used = [is_read(node.outputs[i]) if i < len(node.outputs) else False for i in range(len(OUTPUT_NAMES))]
        used[0] = True
        past_key, past_value, nonpad = _input(node, 4), _input(node, 5), _input(node, 6)
        _check_cache(node, past_key, past_value, nonpad, used, opset)
        query, key, value, mask = b["query"], b["key"], b["value"], _input(node, 3)
        layout = "bhsd" if rank(query) == 4 else "bs(hd)" if rank(query) == 3 else None
        if layout is None:
            raise Refusal("the rank of Q is unknown or not 3/4", query)
        cached = past_key is not None or used[1] or used[2]
        key, value, group, (q_heads, kv_heads, head_size) = _heads_of(node, query, key, value, layout, cached)
        total = _total_length(key, past_key, layout)
        pad = _mask_padding(mask, total, opset)
        if past_key is None and nonpad is None and not pad:
            mask = _unless_all_visible(node, mask, query, key, layout)
        causal = 1 if int_attribute(node, "is_causal", 0) else 0
        scale = _default_scale(node, head_size, zero_is_default=False)
        precision = int_attribute(node, "softmax_precision", 0)
        if query.dtype is not None and precision == int(query.dtype):
            precision = 0
        features = _feature_attributes(node, opset, used[3])
        last_input = 7 if nonpad is not None else 6 if past_key is not None else 4
        mask_kind = "none" if mask is None else "bool" if mask.dtype == ir.DataType.BOOL else "additive"
        details: dict[str, Any] = {"gqa_group": group}
        beyond = beyond_basic_form(features, last_input, max(i + 1 for i, read in enumerate(used) if read))
        if beyond is not None:
            details["features"] = beyond
        facts = SiteFacts(node, self.dialect, layout, q_heads, kv_heads, head_size, mask_kind, causal, scale, details)
        attributes = {**attention_attributes(scale, causal, q_heads, kv_heads, precision), **features}
        site_mask = mask

        def build_inputs(op: Any) -> list[ir.Value | None]:
            padded = _pad_mask(op, site_mask, key, past_key, layout) if pad else site_mask
            return [query, key, value, padded, past_key, past_value, nonpad]

        return Plan(facts, attributes, build_inputs, 4 if layout == "bhsd" else 3, query.dtype, outputs=self.outputs)


def _heads_of(node: ir.Node, query: ir.Value, key: ir.Value, value: ir.Value, layout: str,
              cached: bool) -> tuple[ir.Value, ir.Value, int, tuple[int | None, int | None, int | None]]:
    """K and V as the op takes them (a grouped-query repetition in front of a 4-D site is undone, unless a
    cache holds the heads as given), the group, and (Hq, Hkv, head size) where known."""
    if layout == "bhsd":
        group = 1
        if not cached:
            key, value, group = read_key_value_heads(key, value)
        return key, value, group, (static_dim(query, 1), static_dim(key, 1), static_dim(query, -1))
    hidden = static_dim(query, -1)
    q_heads, kv_heads = _heads(node, "q_num_heads", hidden), _heads(node, "kv_num_heads", static_dim(key, -1))
    return key, value, 1, (q_heads, kv_heads, hidden // q_heads if hidden else None)


def onnx_attention_rules() -> tuple[OnnxAttention, ...]:
    """One instance per output count, most outputs first."""
    return tuple(OnnxAttention(n) for n in range(len(OUTPUT_NAMES), 0, -1))


def _opset(node: ir.Node) -> int:
    graph = node.graph
    return standard_opset(graph.opset_imports, 23) if isinstance(graph, ir.Graph) else 23  # type: ignore[return-value]


def _check_cache(node: ir.Node, past_key: ir.Value | None, past_value: ir.Value | None, nonpad: ir.Value | None,
                 used: list[bool], opset: int) -> None:
    """The cache inputs the specification allows, with the ranks and types it gives them."""
    if (past_key is None) != (past_value is None):
        raise Refusal("past_key and past_value must be given together (the ONNX specification)", node)
    for cache in (past_key, past_value):
        if cache is not None and rank(cache) != 4:
            raise Refusal(f"the KV cache input '{cache.name}' is not 4-D [B, Hkv, P, d] (rank {rank(cache)})", cache)
    if nonpad is None:
        return
    if opset < NONPAD_OPSET:
        raise Refusal(f"Attention-{opset} has no nonpad_kv_seqlen input (opset 24 added it)", node)
    if past_key is not None or used[1] or used[2]:
        raise Refusal("nonpad_kv_seqlen (an external cache) with past/present key and value (a cache inside the op) "
                      "is forbidden by the ONNX specification", node)
    if nonpad.dtype is not None and nonpad.dtype != ir.DataType.INT64:
        raise Refusal(f"nonpad_kv_seqlen is {nonpad.dtype.name}, not INT64", nonpad)


def _feature_attributes(node: ir.Node, opset: int, qk_read: bool) -> dict[str, Any]:
    """softcap, window sizes and the qk output mode, as edgeattn.Attention attributes (only those in use)."""
    out: dict[str, Any] = {}
    softcap = float_attribute(node, "softcap", 0.0)
    if not math.isfinite(softcap) or softcap < 0:
        raise Refusal(f"softcap {softcap:g} is not a finite number >= 0 (for a negative softcap the specification's "
                      "formula and its reference implementation disagree)", node)
    if softcap > 0:
        out["softcap"] = float(softcap)
    for name in ("left_window_size", "right_window_size"):
        size = int_attribute(node, name, -1)
        if size != -1 and opset < WINDOW_OPSET:
            raise Refusal(f"Attention-{opset} has no attribute {name} (opset 25 added sliding windows)", node)
        if size < -1:
            raise Refusal(f"{name} {size} is neither -1 (unbounded) nor a window size >= 0", node)
        if size >= 0:
            out[name] = int(size)
    if qk_read:
        mode = int_attribute(node, "qk_matmul_output_mode", 0)
        if mode not in (0, 1, 2, 3):
            raise Refusal(f"qk_matmul_output_mode {mode} is not 0, 1, 2 or 3", node)
        if mode:
            out["qk_matmul_output_mode"] = int(mode)
    return out


def _total_length(key: ir.Value, past_key: ir.Value | None, layout: str) -> object:
    """The number of keys attended, T = P + Skv, as a dim (int, canonical expression) or None."""
    new = (dims(key) or [None, None, None])[2 if layout == "bhsd" else 1]
    if past_key is None:
        return canonical_dim(new)
    past = (dims(past_key) or [None] * 4)[2]
    if new is None or past is None:
        return None
    if isinstance(new, int) and isinstance(past, int):
        return new + past
    return canonical_dim(f"({past}) + ({new})")


def _mask_padding(mask: ir.Value | None, total: object, opset: int) -> bool:
    """Whether the mask needs padding to T keys: from opset 24 a mask shorter than the keys is padded with
    -inf (false); an opset-23 mask must broadcast. Padding is emitted unless the lengths are provably equal."""
    if mask is None:
        return False
    shape = dims(mask)
    mask_len = canonical_dim(shape[-1]) if shape else None
    if opset < NONPAD_OPSET:
        if isinstance(mask_len, int) and isinstance(total, int) and mask_len not in (1, total):
            raise Refusal(f"the mask covers {mask_len} keys of {total} (an opset-23 mask must broadcast to the keys)",
                          mask)
        return False
    if shape == [] or (mask_len is not None and mask_len == total):
        return False  # a scalar mask has no key axis to pad
    if isinstance(mask_len, int) and isinstance(total, int) and mask_len > total:
        raise Refusal(f"the mask covers {mask_len} keys, more than the {total} keys attended", mask)
    if mask.dtype is None:
        raise Refusal("the element type of the mask is unknown (an opset-24 mask is padded with -inf or false)", mask)
    return True


def _pad_mask(op: Any, mask: ir.Value, key: ir.Value, past_key: ir.Value | None, layout: str) -> ir.Value:
    """The mask padded on its last axis with -inf (false) up to T = P + Skv keys (opset 24)."""
    shape = dims(mask)

    def length(value: ir.Value, axis: int) -> ir.Value:
        return op.Shape(value, start=axis, end=axis + 1) if axis != -1 else op.Shape(value, start=-1)

    def int64(*values: int) -> ir.Value:
        return op.Constant(value=ir.tensor(np.array(values, np.int64)))

    total = length(key, 2 if layout == "bhsd" else 1)
    if past_key is not None:
        total = op.Add(total, length(past_key, 2))
    missing = op.Max(op.Sub(total, length(mask, -1)), int64(0))
    if shape is not None:
        zeros = op.Constant(value=ir.tensor(np.zeros(2 * len(shape) - 1, np.int64)))
    else:  # a rank known only at run time: 2·rank - 1 zeros
        count = op.Sub(op.Mul(op.Shape(op.Shape(mask)), int64(2)), int64(1))
        zeros = op.ConstantOfShape(count, value=ir.tensor(np.array([0], np.int64)))
    pads = op.Concat(zeros, missing, axis=0)  # [0 ... 0 (begins), 0 ... 0, missing (ends)]
    kind = mask.dtype
    fill = np.array(False) if kind == ir.DataType.BOOL else np.array(-np.inf, kind.numpy())  # type: ignore[union-attr]
    padded = op.Pad(mask, pads, op.Constant(value=ir.tensor(fill)))
    padded.dtype = mask.dtype  # the mask's type (a float16 mask stays float16)
    padded.shape = ir.Shape([None] * len(shape)) if shape is not None else None
    return padded


def _unless_all_visible(node: ir.Node, mask: ir.Value | None, query: ir.Value, key: ir.Value,
                        layout: str) -> ir.Value | None:  # fmt: skip
    """None for a mask built from constants and shapes alone that hides no key at any probed size (dynamo's
    exports of SDPA without a mask carry an expanded all-true one): the same as no mask, which lets the
    kernels that take no mask compute the site. Any other mask is kept."""
    from edgeattn.graphs.geometry import ALL_VISIBLE, causal_mode
    from edgeattn.graphs.rules.masks import MAX_FILL

    if mask is None or mask.shape is None or len(mask.shape) < 2:
        return mask
    axis = 2 if layout == "bhsd" else 1
    q_shape, k_shape = query.shape, key.shape
    if q_shape is None or k_shape is None or len(q_shape) <= axis or len(k_shape) <= axis:
        return mask
    form = "keep" if mask.dtype == ir.DataType.BOOL else "add"
    mode = causal_mode(mask, form, q_shape[axis], k_shape[axis], _opset(node), MAX_FILL)
    return None if mode == ALL_VISIBLE else mask
