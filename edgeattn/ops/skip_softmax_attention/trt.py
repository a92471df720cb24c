"""The TensorRT form of edgeattn.SkipSoftmaxAttention: the node as it is, every attribute written out, a
boolean mask made additive (Q's type).

The skip-softmax kernels (`edgeattn.kernels.skip_softmax`) read contiguous 4-D Q, K, V and a key-only mask
[B or 1, 1, 1, Lkv] (a padding mask), with lower-right causal masking; a node in another layout or with
another mask keeps the TensorRT form all the same, and a TensorRT without a plugin that takes it inlines the
node's exact function body.
"""

from __future__ import annotations

from typing import Any

import onnx_ir as ir

from edgeattn.ops.attention.trt import (
    additive_mask,
    flash_bindings,
    flash_build,
    flash_combos,
    flash_kernel_reason,
    flash_output_dims,
    flash_symbols,
)
from edgeattn.ops.trt_plugin import KernelChoice, NodeView, PluginDef, power_of_two_in


def to_trt_form(node: ir.Node) -> None:
    query = node.inputs[0] if node.inputs else None
    if query is None or query.dtype is None:
        raise ValueError(f"the element type of Q of {node.name} is unknown")
    four_dims = query.shape is not None and len(query.shape) == 4
    if four_dims and node.attributes.get_int("causal", 0) == 1:
        node.attributes["causal"] = ir.AttrInt64("causal", 2)  # the kernels' causal is lower-right (as before)
    if len(node.inputs) > 3 and node.inputs[3] is not None:
        node.replace_input_with(3, additive_mask(node, node.inputs[3], query.dtype))


# -- the plugin ---------------------------------------------------------------------------------------------


def _choose(view: NodeView) -> KernelChoice | str:
    reason = flash_kernel_reason(view, mask_position=3)
    if reason is not None:
        return reason
    attrs = view.attributes
    if view.outputs > 1:
        return "the skip_ratio statistics output (the plugin computes Y only; drop --stats for TensorRT)"
    if int(attrs.get("num_splits", 1)) != 1:
        return f"num_splits={attrs['num_splits']} (the plugin runs one split, the prefill kernel)"
    for name in ("block_m", "block_n"):
        if not power_of_two_in(int(attrs.get(name, 0))):
            return f"{name}={attrs.get(name)} (the kernels take a power of two in [16, 256])"
    build = flash_build(view, float(attrs.get("scale_factor", 0.0)), int(attrs["block_m"]), int(attrs["block_n"]))
    build["block_m"] = int(attrs["block_m"])  # the op's tiles decide which tiles are skipped: keep them exactly
    return KernelChoice("skip_softmax", (build,), "SkipSoftmaxBuild")


def plugin_def(spec: Any) -> PluginDef:
    return PluginDef(spec, output_dims=flash_output_dims, output_types=lambda attrs, types: [types[0]],
                     type_combos=flash_combos, choose=_choose, symbols=flash_symbols, bindings=flash_bindings,
                     notes="the skip-softmax flash kernel, one split")
