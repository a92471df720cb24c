"""The TensorRT form of edgeattn.TokenSelect: k as an attribute, every attribute written out.

An engine needs static output shapes: [B, k, D] and [B, k] follow from the attribute k, so a node that
reads k from the `num_tokens` input is refused before this is called (`graphs.lower` says so); the
plugin then takes scores, features and, when present, keys.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import onnx_ir as ir

from edgeattn.ops.trt_plugin import ITEM_BYTES, Const, Dim, In, KernelChoice, NodeView, PluginDef


def to_trt_form(node: ir.Node) -> None:
    if len(node.inputs) > 2 and node.inputs[2] is not None:
        raise ValueError(f"{node.name} reads k from an input; TensorRT needs k as an attribute")
    features = node.inputs[1] if len(node.inputs) > 1 else None
    if features is None or features.dtype is None:
        raise ValueError(f"the element type of the features of {node.name} is unknown")


# -- the plugin ---------------------------------------------------------------------------------------------

_FLOATS = ("fp16", "bf16", "fp32")
MAX_TOKENS = 16384  # the selection kernels hold a row of scores in registers


def _choose(view: NodeView) -> KernelChoice | str:
    attrs = view.attributes
    mode = attrs.get("mode", "topk")
    if mode not in ("topk", "regions"):
        return f"mode {mode!r} (kernels exist for topk and regions)"
    scores, features = view.input(0), view.input(1)
    if view.input(3) is not None:
        return "a keys input (the regions kernel measures similarity on the candidate features)"
    if scores is None or scores.shape is None or len(scores.shape) != 2 or scores.dtype != "fp32":
        return "scores are not [B, N] float32"
    if features is None or features.shape is None or len(features.shape) != 3 or features.dtype not in _FLOATS:
        return "features are not [B, P + N, D] of a float type"
    n = scores.shape[1]
    if not isinstance(n, int) or not 1 <= n <= MAX_TOKENS:
        return f"{n} candidates (the kernels need a static count of at most {MAX_TOKENS})"
    prefix = int(attrs.get("prefix", 0))
    if isinstance(features.shape[1], int) and features.shape[1] != prefix + n:
        return f"features hold {features.shape[1]} tokens, not prefix + N = {prefix + n}"
    if view.outputs != 2:
        return "no kept_indices output (the plugin writes both outputs)"
    if not 1 <= int(attrs["k"]) <= n:
        return f"k={attrs['k']} outside [1, {n}]"
    build = {"mode": mode, "max_tokens": n, "dtype": features.dtype}
    if mode == "regions":
        build |= {"regions": int(attrs["regions"]), "alpha": float(attrs["alpha"]),
                  "attention_scale": float(attrs["attention_scale"])}
    return KernelChoice("tokens", (build,), "TokenSelectBuild")


def _rows(attrs: Mapping[str, Any]) -> int:
    return int(attrs["k"]) + (int(attrs.get("prefix", 0)) if int(attrs.get("keep_prefix", 0)) else 0)


def _output_dims(attrs: Mapping[str, Any], present: tuple[int, ...]) -> list[list[Dim]]:
    return [[In(0, 0), Const(_rows(attrs)), In(1, 2)], [In(0, 0), Const(int(attrs["k"]))]]


def _combos(attrs: Mapping[str, Any], present: tuple[int, ...], outputs: int) -> list[tuple[str, ...]]:
    return [("fp32", t, t, "i64")[: len(present) + outputs] for t in _FLOATS]


def _symbols(attrs: Mapping[str, Any], present: tuple[int, ...], dims: Sequence[Sequence[int]]) -> dict[str, int]:
    batch, n = dims[0]
    keep_prefix = int(attrs.get("keep_prefix", 0))
    prefix = int(attrs.get("prefix", 0))
    return {"B": batch, "N": n, "P": prefix, "Po": prefix if keep_prefix else 0, "Dm": dims[1][2],
            "k": int(attrs["k"]), "R": int(attrs.get("regions", 16))}


def _bindings(attrs: Mapping[str, Any], present: tuple[int, ...], outputs: int) -> tuple[tuple, tuple]:
    return ("Scores", "Features"), ("Out", "Indices")[:outputs]


def _aliases(attrs: Mapping[str, Any], symbols: Mapping[str, int], record: Mapping[str, Any]) -> dict[str, tuple[str, int]]:
    """The regions kernel reads the candidates: the features after the prefix tokens."""
    item = ITEM_BYTES[record["attributes"]["dtype"]]
    return {"Z": ("Features", symbols["P"] * symbols["Dm"] * item)}


def plugin_def(spec: Any) -> PluginDef:
    return PluginDef(spec, output_dims=_output_dims, output_types=lambda attrs, types: [types[1], "i64"],
                     type_combos=_combos, choose=_choose, symbols=_symbols, bindings=_bindings, aliases=_aliases,
                     notes="top-k or HoloV regions selection in registers, then a gather")
