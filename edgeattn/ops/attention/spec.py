"""edgeattn.Attention: dense scaled dot-product attention, the op every rewritten site becomes.

    Y = softmax(scale · Q Kᵀ + mask + causal_bias) V

Layouts: 4-D Q [B, Hq, Sq, d], K [B, Hkv, Skv, d], V [B, Hkv, Skv, dv] -> Y [B, Hq, Sq, dv];
or 3-D Q [B, Sq, Hq·d], K [B, Skv, Hkv·d], V [B, Skv, Hkv·dv] -> Y [B, Sq, Hq·dv] (then the head
counts are required). Query head h reads key/value head h // (Hq / Hkv) (grouped-query attention).
The mask broadcasts to [B, Hq, Sq, Skv]: boolean (true = attend) or additive (same float type).
causal = 1 masks keys j > i (upper-left aligned, as torch SDPA and ONNX Attention without a cache);
causal = 2 masks keys j > i + Skv - Sq (lower-right aligned, a query block at the end of the keys).
A query row whose every key is masked with -inf outputs zeros.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from edgeattn.ops.spec import AttrSpec, IOSpec, Shape

NAME = "Attention"

DOC = (
    "Dense scaled dot-product attention: softmax(scale·QKᵀ + mask + causal) V, 3-D or 4-D layouts, "
    "grouped-query heads, boolean or additive mask."
)

INPUTS = (
    IOSpec("Q", "query, [B, Hq, Sq, d] or [B, Sq, Hq·d]"),
    IOSpec("K", "key, [B, Hkv, Skv, d] or [B, Skv, Hkv·d]"),
    IOSpec("V", "value, [B, Hkv, Skv, dv] or [B, Skv, Hkv·dv]"),
    IOSpec(
        "mask",
        "boolean (true = attend) or additive mask broadcastable to [B, Hq, Sq, Skv]",
        optional=True,
        types=("tensor(bool)", "tensor(float)", "tensor(float16)", "tensor(bfloat16)", "tensor(double)"),
    ),
)

OUTPUTS = (IOSpec("Y", "output, [B, Hq, Sq, dv] or [B, Sq, Hq·dv]"),)

ATTRIBUTES = (
    AttrSpec("scale", "float", 0.0, "factor on QKᵀ; 0 means 1/sqrt(d)", from_site=True),
    AttrSpec(
        "causal",
        "int",
        0,
        "0: none; 1: key j > query i masked (upper-left); 2: j > i + Skv - Sq masked (lower-right)",
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


def infer_shapes(shapes: Sequence[Shape | None], attributes: Mapping[str, Any]) -> list[Shape | None]:
    """Y's shape from the shapes of Q, K, V (a dim is int, str for a symbol, or None)."""
    query, value = shapes[0], shapes[2]
    if query is None or value is None or len(query) != len(value):
        return [None]
    if len(query) == 4:
        return [[query[0], query[1], query[2], value[3]]]
    if len(query) == 3:
        return [[query[0], query[1], _hidden_of_output(value[2], attributes)]]
    return [None]


def _hidden_of_output(value_hidden: int | str | None, attributes: Mapping[str, Any]) -> int | None:
    q_heads = int(attributes.get("q_num_heads", 0))
    kv_heads = int(attributes.get("kv_num_heads", 0)) or q_heads
    if not isinstance(value_hidden, int) or q_heads <= 0:
        return None
    return value_hidden // kv_heads * q_heads


# Parts of the standard Attention contract the TensorRT form cannot carry (attribute -> its "off" value).
_TRT_OFF = {"softcap": 0.0, "left_window_size": -1, "right_window_size": -1, "qk_matmul_output_mode": 0}
_TRT_INPUTS = ("Q", "K", "V", "mask")
_TRT_EXTRA_INPUTS = ("past_key", "past_value", "nonpad_kv_seqlen")
_TRT_EXTRA_OUTPUTS = ("present_key", "present_value", "qk_matmul_output")


def trt_unsupported(attributes: Mapping[str, Any], n_inputs: int, n_outputs: int) -> str | None:
    """Why an Attention node cannot take the TensorRT form (its plugin takes Q, K, V and a mask, and
    gives Y), or None when the form carries everything it uses. `n_inputs` / `n_outputs` count the
    node's inputs and outputs up to the last present one."""
    if n_inputs > len(_TRT_INPUTS):
        used = ", ".join(_TRT_EXTRA_INPUTS[: n_inputs - len(_TRT_INPUTS)])
        return f"the TensorRT form of {NAME} takes Q, K, V and a mask only, not {used} (a KV cache inside the op)"
    if n_outputs > len(OUTPUTS):
        used = ", ".join(_TRT_EXTRA_OUTPUTS[: n_outputs - len(OUTPUTS)])
        return f"the TensorRT form of {NAME} gives Y only, not {used}"
    for name, off in _TRT_OFF.items():
        value = attributes.get(name, off)
        if value is not None and value != off:
            return f"the TensorRT form of {NAME} does not carry {name} = {value} (use --target ort)"
    return None
