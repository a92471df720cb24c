"""edgeattn.Attention: dense scaled dot-product attention, the op every rewritten site becomes.

    Y = softmax(softcap(scale · Q Kᵀ) + bias) V,   bias = mask + causal + window + padding (0 or -inf)

The whole contract of the standard ONNX `Attention` op (opsets 23-25), with its names:

- Layouts: 4-D Q [B, Hq, Sq, d], K [B, Hkv, Skv, d], V [B, Hkv, Skv, dv] -> Y [B, Hq, Sq, dv]; or 3-D
  Q [B, Sq, Hq·d], K [B, Skv, Hkv·d], V [B, Skv, Hkv·dv] -> Y [B, Sq, Hq·dv] (then the head counts are
  required). Query head h reads key/value head h // (Hq / Hkv) (grouped-query attention).
- A KV cache inside the op: past_key [B, Hkv, P, d] and past_value [B, Hkv, P, dv] (both or neither);
  the keys are present_key = Concat(past_key, K) on the sequence axis (likewise V), T = P + Skv of them,
  and present_key / present_value are outputs 1 and 2 (4-D whatever the layout). Without a cache T = Skv.
- A query's position is `offset + i`: offset = P with a cache, nonpad_kv_seqlen[b] - Sq with
  `nonpad_kv_seqlen` (an external cache), else 0 (ONNX's offset).
- The mask broadcasts to [B, Hq, Sq, T]: boolean (true = attend, false adds -inf) or additive (an
  opset-24 mask shorter than the keys is padded with -inf by the rule that writes the node).
- causal = 1 masks keys j > offset + i (ONNX's is_causal: upper-left without a cache); causal = 2
  masks keys j > i + T - Sq (lower-right aligned, whatever the offset).
- left_window_size L >= 0 masks keys j < offset + i - L; right_window_size R >= 0 masks keys
  j > offset + i + R (-1: that side unbounded; ONNX opset 25).
- nonpad_kv_seqlen [B] (int64) masks keys j >= nonpad_kv_seqlen[b].
- softcap c > 0 replaces the scaled scores s by c·tanh(s / c), before any mask (0: none).
- Every part of the bias is 0 or -inf, added to the scores (a NaN or +inf score at a masked key stays
  NaN, as in ONNX); a query row whose bias is -inf at every key (fully masked) outputs zeros. With
  zero_nan_rows = 1 (what the IsNaN/Where guard of an SDPA decomposition computes) every probability
  that comes out NaN is zero instead.
- qk_matmul_output (output 3, [B, Hq, Sq, T] in Q's type) holds, by qk_matmul_output_mode: 0 the scaled
  scores, 1 the soft-capped scores, 2 the scores with the bias added, 3 the probabilities (fully masked
  rows zero).
- softmax_precision: the ONNX element type the softmax is computed in (0: Q's type).

The sparse ops take the site's basic form only (`SITE_INPUTS`, `SITE_ATTRIBUTES`); `beyond_basic_form`
names what a node uses beyond it, so that what cannot honour a feature (an op, a lowering, the TensorRT
plugin) refuses the site or leaves it to this op's function body.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

from edgeattn.ops.spec import AttrSpec, IOSpec, Shape

NAME = "Attention"

DOC = (
    "Dense scaled dot-product attention, the whole ONNX Attention contract: softmax(softcap(scale·QKᵀ) + mask "
    "+ causal + window + padding) V, 3-D or 4-D layouts, grouped-query heads, boolean or additive mask, a KV "
    "cache inside the op (past/present), nonpad_kv_seqlen, the optional qk_matmul_output."
)

_FLOATS = ("tensor(float)", "tensor(float16)", "tensor(bfloat16)", "tensor(double)")

# The inputs every attention op takes first (the sparse ops take these and their own).
SITE_INPUTS = (
    IOSpec("Q", "query, [B, Hq, Sq, d] or [B, Sq, Hq·d]"),
    IOSpec("K", "key, [B, Hkv, Skv, d] or [B, Skv, Hkv·d]"),
    IOSpec("V", "value, [B, Hkv, Skv, dv] or [B, Skv, Hkv·dv]"),
    IOSpec(
        "mask",
        "boolean (true = attend) or additive mask broadcastable to [B, Hq, Sq, T]",
        optional=True,
        types=("tensor(bool)", *_FLOATS),
    ),
)

INPUTS = (
    *SITE_INPUTS,
    IOSpec("past_key", "key cache [B, Hkv, P, d]; the keys are Concat(past_key, K) (with past_value)", optional=True),
    IOSpec("past_value", "value cache [B, Hkv, P, dv] (with past_key)", optional=True),
    IOSpec("nonpad_kv_seqlen", "valid keys per batch entry [B] (int64): keys j >= it are masked", optional=True,
           types=("tensor(int64)",)),
)

OUTPUTS = (
    IOSpec("Y", "output, [B, Hq, Sq, dv] or [B, Sq, Hq·dv]"),
    IOSpec("present_key", "Concat(past_key, K) on the sequence axis, [B, Hkv, T, d]", optional=True),
    IOSpec("present_value", "Concat(past_value, V) on the sequence axis, [B, Hkv, T, dv]", optional=True),
    IOSpec("qk_matmul_output", "[B, Hq, Sq, T]: the scores at the stage qk_matmul_output_mode names",
           optional=True),
)

SITE_ATTRIBUTES = (
    AttrSpec("scale", "float", 0.0, "factor on QKᵀ; 0 means 1/sqrt(d)", from_site=True),
    AttrSpec(
        "causal",
        "int",
        0,
        "0: none; 1: key j > offset + i masked (ONNX is_causal; upper-left without a cache); 2: j > i + T - Sq "
        "masked (lower-right)",
        from_site=True,
        choices=(0, 1, 2),
    ),
    AttrSpec("q_num_heads", "int", 0, "query heads Hq; 0 reads it from a 4-D Q", from_site=True),
    AttrSpec("kv_num_heads", "int", 0, "key/value heads Hkv; 0 reads it from a 4-D K", from_site=True),
    AttrSpec(
        "softmax_precision",
        "int",
        0,
        "ONNX element type the softmax is computed in (1 = float); 0 means the type of Q",
        from_site=True,
    ),
)

# Attributes beyond the site's basic form, with the value that means "not used".
FEATURE_ATTRIBUTES = (
    AttrSpec("softcap", "float", 0.0, "c > 0: scores become c·tanh(scores / c) before any mask; 0: none",
             from_site=True, optional=True),
    AttrSpec("left_window_size", "int", -1, "L >= 0: keys j < offset + i - L masked; -1: unbounded",
             from_site=True, optional=True),
    AttrSpec("right_window_size", "int", -1, "R >= 0: keys j > offset + i + R masked; -1: unbounded",
             from_site=True, optional=True),
    AttrSpec("qk_matmul_output_mode", "int", 0, "what output 3 holds: 0 scaled scores, 1 after softcap, "
             "2 with the bias, 3 probabilities", from_site=True, choices=(0, 1, 2, 3), optional=True),
)

# How NaN probabilities end: an SDPA decomposition's IsNaN/Where guard zeroes every one (whatever made it:
# a fully masked row, or NaN and infinite inputs); ONNX Attention zeroes fully masked rows only. Not a
# feature a sparse op must honour (their bodies zero every NaN probability). Both agree on finite inputs.
NAN_ATTRIBUTE = AttrSpec(
    "zero_nan_rows",
    "int",
    0,
    "1: every probability that comes out NaN is 0 (the IsNaN/Where guard of SDPA decompositions); 0: as ONNX "
    "Attention, a fully masked row is 0 and NaN from the inputs propagates",
    from_site=True,
    choices=(0, 1),
    optional=True,
)

ATTRIBUTES = (*SITE_ATTRIBUTES, NAN_ATTRIBUTE, *FEATURE_ATTRIBUTES)
FEATURE_INPUTS = INPUTS[len(SITE_INPUTS):]
FEATURE_OUTPUTS = OUTPUTS[1:]

_FEATURE_OFF = {a.name: a.default for a in FEATURE_ATTRIBUTES}


def check_attributes(attrs: Mapping[str, Any]) -> None:
    """ValueError sentences for attribute values outside the contract."""
    softcap = float(attrs.get("softcap", 0.0))
    if not (math.isfinite(softcap) and softcap >= 0):
        raise ValueError(f"softcap must be a finite number >= 0 (0: none), got {softcap}")
    for name in ("left_window_size", "right_window_size"):
        if int(attrs.get(name, -1)) < -1:
            raise ValueError(f"{name} must be -1 (unbounded) or >= 0, got {attrs[name]}")


def site_shapes(shapes: Sequence[Shape | None], attributes: Mapping[str, Any]) -> list[Shape | None]:
    """[Y's shape] from the shapes of Q, K, V (what every attention op's first output is)."""
    query, value = shapes[0], shapes[2]
    if query is None or value is None or len(query) != len(value):
        return [None]
    if len(query) == 4:
        return [[query[0], query[1], query[2], value[3]]]
    if len(query) == 3:
        return [[query[0], query[1], _hidden_of_output(value[2], attributes)]]
    return [None]


def infer_shapes(shapes: Sequence[Shape | None], attributes: Mapping[str, Any]) -> list[Shape | None]:
    """Y, present_key, present_value and qk_matmul_output from the input shapes (a dim is int, str for a
    symbol, or None; `shapes` may stop after V)."""
    given = list(shapes) + [None] * (len(INPUTS) - len(shapes))
    query, key, value, past_key, past_value = given[0], given[1], given[2], given[4], given[5]
    present_key = _present(key, past_key, attributes)
    present_value = _present(value, past_value, attributes)
    qk = None
    if query is not None and present_key is not None and len(query) in (3, 4):
        heads = query[1] if len(query) == 4 else (int(attributes.get("q_num_heads", 0)) or None)
        q_len = query[2] if len(query) == 4 else query[1]
        qk = [query[0], heads, q_len, present_key[2]]
    return [*site_shapes(given, attributes), present_key, present_value, qk]


def _present(new: Shape | None, past: Shape | None, attributes: Mapping[str, Any]) -> Shape | None:
    """[B, Hkv, P + S, d] from the new keys (3-D or 4-D) and the cache (None when absent: P = 0)."""
    if new is None or len(new) not in (3, 4):
        return None
    if len(new) == 4:
        batch, heads, length, size = new
    else:
        heads = int(attributes.get("kv_num_heads", 0)) or int(attributes.get("q_num_heads", 0)) or None
        batch, length = new[0], new[1]
        size = new[2] // heads if isinstance(new[2], int) and heads else None
    if past is not None and len(past) == 4:
        length = length + past[2] if isinstance(length, int) and isinstance(past[2], int) else None
    elif past is not None:
        length = None
    return [batch, heads, length, size]


def _hidden_of_output(value_hidden: int | str | None, attributes: Mapping[str, Any]) -> int | None:
    q_heads = int(attributes.get("q_num_heads", 0))
    kv_heads = int(attributes.get("kv_num_heads", 0)) or q_heads
    if not isinstance(value_hidden, int) or q_heads <= 0:
        return None
    return value_hidden // kv_heads * q_heads


def beyond_basic_form(attributes: Mapping[str, Any], n_inputs: int, n_outputs: int) -> str | None:
    """What a node uses beyond the basic form (Q, K, V and a mask -> Y), as a phrase ("past_key, past_value,
    softcap = 30"), or None. `n_inputs` / `n_outputs` count the node's inputs and outputs up to the last
    present one."""
    used = [io.name for io in INPUTS[len(SITE_INPUTS):n_inputs]] + [io.name for io in OUTPUTS[1:n_outputs]]
    for name, off in _FEATURE_OFF.items():
        value = attributes.get(name, off)
        if value is not None and value != off and (name != "qk_matmul_output_mode" or n_outputs == len(OUTPUTS)):
            used.append(f"{name} = {value:g}" if isinstance(value, float) else f"{name} = {value}")
    return ", ".join(used) or None


def trt_unsupported(attributes: Mapping[str, Any], n_inputs: int, n_outputs: int) -> str | None:
    """Why an Attention node cannot take the plugin form (its plugin and flash kernels take Q, K, V and a
    mask, and give Y), or None when the form carries everything it uses. Such a node keeps a function
    body of its own in the TensorRT form (TensorRT inlines it)."""
    used = beyond_basic_form(attributes, n_inputs, n_outputs)
    if used is None:
        return None
    return f"the {NAME} plugin takes Q, K, V and a mask and gives Y; this node also uses {used}"
