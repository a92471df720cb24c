"""The TensorRT plugin of edgeattn.BlockSelect: the selection kernels of `edgeattn.kernels.block_sparse`
(pool, select) with the block mask as the output, no attention.

The node's TensorRT form is written by `function.to_trt_form`; this module says which nodes the kernels
compute, the output's shape as dim expressions (the block geometry of the op's reference) and how a launch
binds the tensors.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from edgeattn.ops.attention.trt import KERNEL_TYPES
from edgeattn.ops.block_sparse_attention.trt import selection_build, selection_symbols
from edgeattn.ops.trt_plugin import Add, Const, Dim, Div, In, KernelChoice, NodeView, PluginDef, Sub


def _choose(view: NodeView) -> KernelChoice | str:
    for position, name in ((2, "a keep input"), (3, "a threshold input")):
        if view.input(position) is not None:
            return f"{name} (the plugin reads the budget from the attributes)"
    build = selection_build(view)
    if isinstance(build, str):
        return build
    return KernelChoice("block_sparse", ({**build, "layout": "select", "select_only": True},), "BlockSparseBuild")


def block_counts(attrs: Mapping[str, Any]) -> tuple[Dim, Dim]:
    """(nQB, nKB) over Q's and K's dims: with causal = 2 the queries are the last Lq of Lkv positions, so the
    query blocks run from (Lkv - Lq) // b to (Lkv - 1) // b; without causal from 0 to (Lq - 1) // b."""
    block = Const(int(attrs["block_size"]))
    q_len, kv_len = In(0, 2), In(1, 2)
    kv_blocks = Div(kv_len, block, ceil=True)
    if int(attrs["causal"]) == 2:
        offset = Sub(kv_len, q_len)
        last = Div(Sub(kv_len, Const(1)), block)
        return Add(Sub(last, Div(offset, block)), Const(1)), kv_blocks
    return Div(q_len, block, ceil=True), kv_blocks


def _output_dims(attrs: Mapping[str, Any], present: tuple[int, ...]) -> list[list[Dim]]:
    q_blocks, kv_blocks = block_counts(attrs)
    return [[In(0, 0), In(1, 1), q_blocks, kv_blocks]]


def _combos(attrs: Mapping[str, Any], present: tuple[int, ...], outputs: int) -> list[tuple[str, ...]]:
    return [(t, t, "bool") for t in KERNEL_TYPES]


def _symbols(attrs: Mapping[str, Any], present: tuple[int, ...], dims: Sequence[Sequence[int]]) -> dict[str, int]:
    return selection_symbols(attrs, dims)


def _bindings(attrs: Mapping[str, Any], present: tuple[int, ...], outputs: int) -> tuple[tuple, tuple]:
    return tuple({0: "Q", 1: "K"}.get(p) for p in present), ("BlockMask",)


def plugin_def(spec: Any) -> PluginDef:
    return PluginDef(spec, output_dims=_output_dims, output_types=lambda attrs, types: ["bool"],
                     type_combos=_combos, choose=_choose, symbols=_symbols, bindings=_bindings,
                     notes="block selection from pooled scores; the block mask out")
