"""The TensorRT plugin of edgeattn.BlockSparseAttention: block selection and attention in the block-sparse
kernels (`edgeattn.kernels.block_sparse`), for the select and window layouts, with a key-only mask (padding)
added to the scores.

The node's TensorRT form is written by `function.to_trt_form` (every attribute out, the tunables folded);
this module says which nodes the kernels compute and how a launch binds them.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from edgeattn.ops.attention.trt import (
    KERNEL_TYPES,
    flash_bindings,
    flash_combos,
    flash_output_dims,
    key_bias_of,
    key_bias_symbols,
)
from edgeattn.ops.trt_plugin import KernelChoice, NodeView, PluginDef, power_of_two_in

DEFAULT_LONGEST = 4096  # keys an engine serves when the compile does not say (the selection tile's width)


def _choose(view: NodeView) -> KernelChoice | str:
    attrs = view.attributes
    layout = attrs.get("layout", "select")
    if layout not in ("select", "window"):
        return f"layout {layout!r} (the plugin computes the select and window layouts)"
    for position, name in ((4, "a block_mask input"), (5, "a keep input"), (6, "a threshold input"),
                           (7, "a window input")):
        if view.input(position) is not None:
            return f"{name} (the plugin takes Q, K, V and a key mask)"
    if view.outputs > 1:
        return "the density statistics output (the plugin computes Y only; drop --stats for TensorRT)"
    if attrs.get("heads"):
        return "a subset of sparse heads (`heads`; the plugin makes every head sparse)"
    value = view.input(2)
    if value is None or value.shape is None or len(value.shape) != 4:
        return "Q, K, V are not 4-D [B, H, S, d]"
    key_bias = key_bias_of(view, 3)
    if isinstance(key_bias, str):
        return key_bias
    build = selection_build(view)
    if isinstance(build, str):
        return build
    if value.shape[3] != build["head_dim"]:
        return f"head size {value.shape[3]} of V (the kernels take Q's head size {build['head_dim']} for V too)"
    build |= {"layout": layout, "rectify": bool(attrs.get("rectify", 0)), "key_bias": key_bias}
    return KernelChoice("block_sparse", (build,), "BlockSparseBuild")


def selection_build(view: NodeView) -> dict[str, Any] | str:
    """The block-sparse build attributes of the selection of a node (Q and K at inputs 0 and 1, the selection
    attributes of BlockSelect), or why the kernels cannot compute it."""
    attrs = view.attributes
    query, key = view.input(0), view.input(1)
    if any(v is None or v.shape is None or len(v.shape) != 4 for v in (query, key)):
        return "Q, K are not 4-D [B, H, S, d]"
    assert query is not None and key is not None and query.shape is not None and key.shape is not None
    if query.dtype not in KERNEL_TYPES:
        return f"{query.dtype or 'an unknown type'} (the kernels are built for fp16 and bf16; export with --dtype fp16)"
    head = query.shape[3]
    if not power_of_two_in(head) or key.shape[3] != head:
        return f"head size {head} (the kernels take one static power of two in [16, 256] for Q, K and V)"
    q_heads, kv_heads = query.shape[1], key.shape[1]
    if not isinstance(q_heads, int) or not isinstance(kv_heads, int) or q_heads % kv_heads:
        return "head counts that are not static (the kernels are built for one query-per-key-head group)"
    block = int(attrs.get("block_size", 64))
    if not power_of_two_in(block, 16, 256):
        return f"block_size {block} (the kernels take a power of two in [16, 256])"
    if int(attrs.get("causal", 0)) == 1:
        return "upper-left causal masking (the kernels' block geometry is lower-right or none)"
    longest = view.longest or DEFAULT_LONGEST
    return {"head_dim": int(head), "dtype": query.dtype, "causal": int(attrs.get("causal", 0)), "block_size": block,
            "mode": attrs.get("mode", "topk"), "query_pool": attrs.get("query_pool", "mean"),
            "key_pool": attrs.get("key_pool", "mean"), "group_reduce": attrs.get("group_reduce", "mean"),
            "kv_group": q_heads // kv_heads, "max_kv_len": int(longest),
            "threshold": float(attrs.get("threshold", 0.01)), "cum_prob": float(attrs.get("cum_prob", 0.9)),
            "sm_scale": float(attrs["scale"]) if float(attrs.get("scale", 0.0)) > 0 else None}  # fmt: skip


def selection_symbols(attrs: Mapping[str, Any], dims: Sequence[Sequence[int]]) -> dict[str, int]:
    """The launch symbols of the block geometry and the selection, from Q's and K's dims."""
    from edgeattn.kernels.block_sparse.geometry import block_geometry, budget_of

    batch, q_heads, q_len, head = dims[0]
    kv_heads, kv_len = dims[1][1], dims[1][2]
    geo = block_geometry(q_len, kv_len, int(attrs["block_size"]), int(attrs["causal"]))
    keep_blocks = int(attrs.get("keep_blocks", 0))
    return {"B": batch, "Hq": q_heads, "Hkv": kv_heads, "Lq": q_len, "Lkv": kv_len, "D": head,
            "nQB": geo.n_q_blocks, "nKB": geo.n_kv_blocks, "front": geo.front, "first": geo.first_block,
            "off": geo.offset, "budget": keep_blocks if keep_blocks > 0 else budget_of(float(attrs["keep"]), geo.n_kv_blocks),
            "local_blocks": int(attrs["local_blocks"]), "sink_blocks": int(attrs["sink_blocks"]),
            "dense_last_rows": int(attrs["dense_last_rows"]), "dense_decode": int(bool(attrs["dense_decode"]))}  # fmt: skip


def _symbols(attrs: Mapping[str, Any], present: tuple[int, ...], dims: Sequence[Sequence[int]]) -> dict[str, int]:
    return {**selection_symbols(attrs, dims), "window": int(attrs["window"]), "sinks": int(attrs["sinks"]),
            **key_bias_symbols(present, dims)}


def plugin_def(spec: Any) -> PluginDef:
    return PluginDef(spec, output_dims=flash_output_dims, output_types=lambda attrs, types: [types[0]],
                     type_combos=flash_combos, choose=_choose, symbols=_symbols, bindings=flash_bindings,
                     notes="block selection from pooled scores, then flash attention over the kept blocks")
