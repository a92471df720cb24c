"""Attention already fused into one node: the `com.microsoft` `Attention` / `MultiHeadAttention` that
onnxruntime's transformers optimizer writes (ONNX `Attention` is `rules.standard`), and what fused rules
share (`_default_scale`, `_heads`, `_input`)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import onnx_ir as ir

from edgeattn.graphs.rules.base import (
    AttentionRule,
    FusedOutputsRule,
    Plan,
    Refusal,
    SiteFacts,
    attention_attributes,
    float_attribute,
    int_attribute,
    ints_attribute,
)
from edgeattn.graphs.rules.masks import lengths_to_keep, padding_mask
from edgeattn.graphs.rules.operands import read_key_value_heads
from edgeattn.graphs.values import dims, rank, same_dim, static_dim

MS = "com.microsoft"
ORT_MASK_FILTER = -10000.0


def _input(node: ir.Node, index: int) -> ir.Value | None:
    return node.inputs[index] if index < len(node.inputs) else None


def _default_scale(node: ir.Node, head_size: int | None, zero_is_default: bool) -> float | None:
    """The scale a fused op uses: its attribute, else 1/sqrt(head size) (None when that is unknown).
    onnxruntime's com.microsoft ops read a scale of 0 as "not given"; ONNX Attention multiplies by it."""
    scale = float_attribute(node, "scale", None)
    if scale is not None and not (math.isfinite(scale) and (scale > 0 or (scale == 0 and zero_is_default))):
        raise Refusal(f"the scale attribute {scale:g} is not a positive finite number", node)
    if scale:
        return scale
    return 1.0 / math.sqrt(head_size) if head_size else None


def _heads(node: ir.Node, name: str, hidden: int | None) -> int:
    """A head-count attribute: positive, and dividing the hidden size when that is known."""
    heads = int_attribute(node, name, 0)
    if heads <= 0:
        raise Refusal(f"{name} {heads} of {node.op_type} is not a positive head count", node)
    if hidden is not None and hidden % heads:
        raise Refusal(f"{name} {heads} does not divide the hidden size {hidden}", node)
    return heads


class MsAttention(AttentionRule):
    """`com.microsoft.Attention`: packed Q/K/V projection, then attention (onnxruntime's BERT fusion)."""

    dialect = "ms-attention"
    root = (MS, "Attention")

    def pattern(self, op, x, weights):
        return op.Attention(x, weights, _domain=MS, _allow_other_inputs=True, _outputs=["y"])

    def plan(self, **b: Any) -> Plan:
        node = b["y"].producer()
        if _input(node, 4) is not None or _input(node, 6) is not None:
            raise Refusal("the past state input (KV cache) of com.microsoft.Attention is not supported", node)
        if int_attribute(node, "do_rotary", 0):
            raise Refusal("do_rotary (rotary embedding inside the op) is not supported", node)
        sizes = _qkv_sizes(node, b["weights"])
        heads = _heads(node, "num_heads", sizes[0])
        for size in sizes[1:]:
            _heads(node, "num_heads", size)
        x = b["x"]
        dtype = x.dtype or b["weights"].dtype
        if dtype is None:
            raise Refusal("the element type of the input is unknown", x)
        head_size = sizes[0] // heads
        scale = _default_scale(node, head_size, zero_is_default=True)
        causal = 2 if int_attribute(node, "unidirectional", 0) else 0
        filler = float_attribute(node, "mask_filter_value", ORT_MASK_FILTER)
        mask_index, bias_input = _input(node, 3), _input(node, 5)
        mask_builder = _padding_mask_builder(mask_index, x, dtype, filler, "mask_index", _is_embed_mask(mask_index))
        facts = SiteFacts(node, self.dialect, "bs(hd)", heads, heads, head_size,
                          "none" if mask_index is None and bias_input is None else "additive", causal, scale,
                          {"mask_index_rank": rank(mask_index), "attention_bias": bias_input is not None})
        attributes = attention_attributes(scale, causal, heads, heads, 0)
        bias = _input(node, 2)

        def build_inputs(op: Any) -> list[ir.Value | None]:
            qkv = op.MatMul(x, b["weights"])
            if bias is not None:
                qkv = op.Add(qkv, bias)
            split = op.Constant(value=ir.tensor(np.array(sizes, np.int64)))
            query, key, value = op.Split(qkv, split, axis=-1, _outputs=3)
            mask = _combine(op, mask_builder(op, lambda: _seq_len(op, x)), bias_input)
            return [query, key, value, mask]

        return Plan(facts, attributes, build_inputs, 3, dtype)


def _qkv_sizes(node: ir.Node, weights: ir.Value) -> list[int]:
    sizes = ints_attribute(node, "qkv_hidden_sizes", None)
    if sizes:
        if len(sizes) != 3 or any(s <= 0 for s in sizes):
            raise Refusal(f"qkv_hidden_sizes {sizes} are not three positive sizes", node)
        return [int(s) for s in sizes]
    width = static_dim(weights, 1)
    if width is None or width % 3:
        raise Refusal("the width of the packed Q/K/V weights is unknown", weights)
    return [width // 3] * 3


def _is_embed_mask(mask: ir.Value | None) -> bool:
    """EmbedLayerNormalization's mask_index output is [B] by definition."""
    node = mask.producer() if mask is not None else None
    return node is not None and node.domain == MS and node.op_type == "EmbedLayerNormalization"


def _seq_len(op: Any, value: ir.Value) -> ir.Value:
    shape = op.Shape(value)
    return op.Gather(shape, op.Constant(value=ir.tensor(np.array(1, np.int64))), axis=0)


def _padding_mask_builder(mask: ir.Value | None, batch_of: ir.Value, dtype: ir.DataType, fill: float,
                          what: str, is_batch_lengths: bool):
    """How to turn an onnxruntime mask_index / key_padding_mask into an additive [B, 1, 1|S, T] mask."""
    mask_rank = rank(mask)
    if mask is None:
        return lambda op, total: None
    if mask_rank == 1:
        if not is_batch_lengths and not same_dim((dims(mask) or [None])[0], (dims(batch_of) or [None])[0]):
            raise Refusal(f"the 1-D {what} is not provably of batch length (end and start positions are not supported)", mask)
        return lambda op, total: padding_mask(op, lengths_to_keep(op, mask, total()), fill, dtype, [1, 2])
    if mask_rank == 2:
        return lambda op, total: padding_mask(op, mask, fill, dtype, [1, 2])
    if mask_rank == 3:
        return lambda op, total: padding_mask(op, mask, fill, dtype, [1])
    raise Refusal(f"a {what} of rank {mask_rank} is not supported", mask)


def _combine(op: Any, mask: ir.Value | None, bias: ir.Value | None) -> ir.Value | None:
    if mask is None or bias is None:
        return mask if bias is None else bias
    return op.Add(mask, bias)


MHA_OUTPUTS = ("y", "present_key", "present_value", "qk")


class MsMultiHeadAttention(FusedOutputsRule):
    """`com.microsoft.MultiHeadAttention` with separate 3-D Q, K, V (onnxruntime's MHA fusion) and `outputs`
    declared outputs. A BNSH past (past_key, past_value) with present_key/present_value outputs becomes the
    KV cache of edgeattn.Attention (present = Concat(past, new keys)); `unidirectional` is causal from the end
    of the keys (lower-right), as onnxruntime's kernel computes it (measured with a past)."""

    dialect = "ms-multihead-attention"
    root = (MS, "MultiHeadAttention")
    output_names = MHA_OUTPUTS

    def plan(self, **b: Any) -> Plan:
        node = b["y"].producer()
        query, key, value = b["query"], _input(node, 1), _input(node, 2)
        past_key, past_value = _input(node, 6), _input(node, 7)
        if self.outputs == len(MHA_OUTPUTS):
            raise Refusal("the qk output of MultiHeadAttention is not supported", node)
        if self.outputs == 2:
            raise Refusal("present_key without present_value in MultiHeadAttention is not supported", node)
        if any(_input(node, i) is not None for i in (8, 9)):
            raise Refusal("past_sequence_length/cache_indirection inputs of MultiHeadAttention (a shared buffer or "
                          "beam search) are not supported", node)
        if (past_key is None) != (past_value is None):
            raise Refusal("past_key and past_value of MultiHeadAttention must be given together", node)
        if past_key is not None and self.outputs < 3:
            raise Refusal("a MultiHeadAttention past without present_key/present_value outputs is not supported "
                          "(onnxruntime's CPU kernel then gives another result)", node)
        if past_key is None and self.outputs == 3:
            raise Refusal("present_key/present_value outputs of MultiHeadAttention without a past are not "
                          "supported", node)
        if key is not None and value is not None and None in (rank(query), rank(key), rank(value)):
            raise Refusal("the rank of MultiHeadAttention's query, key or value is unknown (no shape information)",
                          node)
        if key is None or value is None or rank(query) != 3 or rank(key) != 3 or rank(value) != 3:
            raise Refusal("packed QKV/KV or 4-D (BNSH) key/value of MultiHeadAttention are not supported", node)
        hidden, v_hidden = static_dim(query, 2), static_dim(value, 2)
        dtype = query.dtype
        if hidden is None or v_hidden is None or dtype is None:
            raise Refusal("the hidden sizes or element type of MultiHeadAttention are unknown", node)
        heads = _heads(node, "num_heads", hidden)
        _heads(node, "num_heads", v_hidden)
        head_size = hidden // heads
        for cache, size in ((past_key, head_size), (past_value, v_hidden // heads)):
            if cache is not None and (rank(cache) != 4 or static_dim(cache, 1) != heads or
                                      static_dim(cache, 3) != size):
                raise Refusal(f"the cache '{cache.name}' is not BNSH [B, {heads}, P, {size}]", cache)
        scale = _default_scale(node, head_size, zero_is_default=True)
        causal = 2 if int_attribute(node, "unidirectional", 0) else 0
        filler = float_attribute(node, "mask_filter_value", ORT_MASK_FILTER)
        bias, padding, bias_input = _input(node, 3), _input(node, 4), _input(node, 5)
        mask_builder = _padding_mask_builder(padding, query, dtype, filler, "key_padding_mask", False)
        details: dict[str, Any] = {"bias": bias is not None, "attention_bias": bias_input is not None}
        if past_key is not None:
            details["features"] = "past_key, past_value, present_key, present_value"
        facts = SiteFacts(node, self.dialect, "bs(hd)", heads, heads, head_size,
                          "none" if padding is None and bias_input is None else "additive", causal, scale, details)
        attributes = attention_attributes(scale, causal, heads, heads, 0)

        def total(op: Any) -> ir.Value:
            length = _seq_len(op, key)
            if past_key is None:
                return length
            return op.Add(length, op.Gather(op.Shape(past_key), op.Constant(value=ir.tensor(np.array(2, np.int64))),
                                            axis=0))

        def build_inputs(op: Any) -> list[ir.Value | None]:
            q, k, v = query, key, value
            if bias is not None:
                split = op.Constant(value=ir.tensor(np.array([hidden, hidden, v_hidden], np.int64)))
                q_bias, k_bias, v_bias = op.Split(bias, split, axis=0, _outputs=3)
                q, k, v = op.Add(q, q_bias), op.Add(k, k_bias), op.Add(v, v_bias)
            mask = _combine(op, mask_builder(op, lambda: total(op)), bias_input)
            if past_key is None:
                return [q, k, v, mask]
            return [q, k, v, mask, past_key, past_value]

        return Plan(facts, attributes, build_inputs, 3, dtype, outputs=self.outputs)


def mha_rules() -> tuple[FusedOutputsRule, ...]:
    """One instance per output count, most outputs first."""
    return MsMultiHeadAttention.instances()
