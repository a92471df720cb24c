"""The TensorRT form of edgeattn.TokenScore: the node as it is, every attribute written out.

TokenScore has no run-time tunable: all its numbers are already plugin fields (floats, ints, strings),
and its output shape [B, N] follows from the input shapes, so the plugin takes the inputs the node has
(`present_inputs` says which, when one is skipped). The body computes in float32 whatever the inputs'
type, so nothing about them needs to be known here (a plugin reads the types from the network).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import onnx_ir as ir

from edgeattn.ops.trt_plugin import Const, Dim, In, KernelChoice, NodeView, PluginDef, Sub, power_of_two_in


def to_trt_form(node: ir.Node) -> None:
    if not node.inputs or node.inputs[0] is None:
        raise ValueError(f"{node.name} has no first input")


# -- the plugin ---------------------------------------------------------------------------------------------

_FLOATS = ("fp16", "bf16", "fp32")


def _from_probs(present: tuple[int, ...]) -> bool:
    return 1 not in present  # no Y: X holds the softmax probabilities


def _choose(view: NodeView) -> KernelChoice | str:
    attrs = view.attributes
    if attrs.get("source") not in ("cls", "mean_received"):
        return f"source {attrs.get('source')!r} (kernels exist for the attention sources cls and mean_received)"
    x = view.input(0)
    if x is None or x.shape is None or len(x.shape) != 4:
        return "X is not 4-D (the kernels read [B, H, S, d] Q/K or [B, H, S, S] probabilities)"
    if x.dtype not in _FLOATS:
        return f"X of type {x.dtype}"
    if view.input(2) is not None:
        return "a prior input (used by the text source only)"
    for position, name in ((3, "weights"), (4, "valid")):
        extra = view.input(position)
        if extra is not None and extra.dtype != "fp32":
            return f"{name} of type {extra.dtype} (the kernel reads float32)"
    from_probs = _from_probs(view.present)
    head = x.shape[3]
    if not from_probs:
        y = view.input(1)
        if y is None or y.dtype != x.dtype or y.shape is None or len(y.shape) != 4 or y.shape[3] != head:
            return "K differs from Q in type, rank or head size"
        if not power_of_two_in(head):
            return f"head size {head} (the kernels take a static power of two in [16, 256])"
    scale = float(attrs.get("scale", 0.0))
    build = {"source": attrs["source"], "from_probs": from_probs, "head_dim": int(head) if not from_probs else 64,
             "dtype": x.dtype, "head_reduce": attrs.get("head_reduce", "mean"), "weights": view.input(3) is not None,
             "valid": view.input(4) is not None, "sm_scale": scale if scale > 0 else None}  # fmt: skip
    return KernelChoice("tokens", (build,), "TokenScoreBuild")


def _output_dims(attrs: Mapping[str, Any], present: tuple[int, ...]) -> list[list[Dim]]:
    return [[In(0, 0), Sub(In(0, 2), Const(int(attrs.get("skip", 1))))]]


def _combos(attrs: Mapping[str, Any], present: tuple[int, ...], outputs: int) -> list[tuple[str, ...]]:
    combos = []
    for t in _FLOATS:
        types = {0: t, 1: t, 3: "fp32", 4: "fp32"}
        combos.append(tuple(types.get(p, "?") for p in present) + ("fp32",))
    return combos


def _symbols(attrs: Mapping[str, Any], present: tuple[int, ...], dims: Sequence[Sequence[int]]) -> dict[str, int]:
    batch, heads, seq, head = dims[0]
    kv_heads = dims[present.index(1)][1] if 1 in present else heads
    skip = int(attrs.get("skip", 1))
    return {"B": batch, "H": heads, "Hkv": kv_heads, "S": seq, "d": head, "N": seq - skip, "skip": skip,
            "query": int(attrs.get("query", 0))}


def _bindings(attrs: Mapping[str, Any], present: tuple[int, ...], outputs: int) -> tuple[tuple, tuple]:
    names = {0: "X" if _from_probs(present) else "Q", 1: "K", 3: "Weights", 4: "Valid"}
    return tuple(names.get(p) for p in present), ("Scores",)


def plugin_def(spec: Any) -> PluginDef:
    return PluginDef(spec, output_dims=_output_dims, output_types=lambda attrs, types: ["fp32"], type_combos=_combos,
                     choose=_choose, symbols=_symbols, bindings=_bindings,
                     notes="[CLS] / mean-received scores from Q and K (a flash-style pass) or from probabilities")
