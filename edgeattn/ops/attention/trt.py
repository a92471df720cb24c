"""The TensorRT form of edgeattn.Attention: the one signature its plugin takes.

The plugin (and the generic function body TensorRT falls back to) take 4-D Q, K, V and always an
additive mask of Q's type, and a concrete softmax_precision. A node in another form is brought to this
one in place: heads split and merged around it, the mask converted or a zero mask supplied.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import onnx_ir as ir

from edgeattn.ops.attention.spec import beyond_basic_form, trt_unsupported
from edgeattn.ops.trt_plugin import Dim, In, KernelChoice, NodeView, PluginDef, power_of_two_in

BOOL = ir.DataType.BOOL


def to_trt_form(node: ir.Node) -> None:
    """Rewrite `node` (in its graph) into the TensorRT signature; ValueError when types are unknown. A node
    that uses a part of the op the plugin does not take (a KV cache, softcap, windows, padding lengths, the
    extra outputs) stays as it is: it keeps a function body of its own, which TensorRT inlines."""
    if node_beyond_basic_form(node) is not None:
        return
    query = node.inputs[0]
    if query is None or query.dtype is None:
        raise ValueError(f"the element type of Q of {node.name} is unknown")
    dtype = query.dtype
    if _rank(query) == 3:
        _to_four_dims(node)
    node.resize_inputs(4)
    mask = additive_mask(node, node.inputs[3], dtype)
    node.replace_input_with(3, mask)
    precision = node.attributes.get_int("softmax_precision", 0)
    if precision == 0:
        node.attributes["softmax_precision"] = ir.AttrInt64("softmax_precision", int(dtype))


def node_beyond_basic_form(node: ir.Node) -> str | None:
    """`beyond_basic_form` for a node of the graph: what it uses beyond Q, K, V and a mask -> Y, or None."""
    attributes = {name: attr.value for name, attr in node.attributes.items() if not attr.is_ref()}
    inputs = max((i + 1 for i, value in enumerate(node.inputs) if value is not None), default=0)
    return beyond_basic_form(attributes, inputs, len(node.outputs))


def _rank(value: ir.Value) -> int | None:
    return len(value.shape) if value.shape is not None else None


def _before(node: ir.Node, purpose: str, op_type: str, inputs: list[ir.Value | None], **attrs: object) -> ir.Value:
    """A new node just before `node`, named after it and its purpose (names stay deterministic)."""
    name = f"{node.name}/trt_{purpose}"
    new = ir.node(op_type, inputs, attributes=attrs, name=name)
    new.outputs[0].name = name
    node.prepend(new)
    return new.outputs[0]


def _constant(node: ir.Node, purpose: str, array: np.ndarray) -> ir.Value:
    return _before(node, purpose, "Constant", [], value=ir.tensor(array))


def _to_four_dims(node: ir.Node) -> None:
    q_heads = node.attributes.get_int("q_num_heads", 0)
    kv_heads = node.attributes.get_int("kv_num_heads", 0) or q_heads
    if q_heads <= 0:
        raise ValueError(f"3-D attention {node.name} needs q_num_heads to split its heads")
    for index, heads, letter in ((0, q_heads, "q"), (1, kv_heads, "k"), (2, kv_heads, "v")):
        source = node.inputs[index]
        shape = _constant(node, f"{letter}_shape", np.array([0, 0, heads, -1], np.int64))
        split = _before(node, f"{letter}_split", "Reshape", [source, shape])
        four_dims = _before(node, f"{letter}_bhsd", "Transpose", [split], perm=[0, 2, 1, 3])
        four_dims.dtype, four_dims.shape = source.dtype if source is not None else None, ir.Shape([None] * 4)
        node.replace_input_with(index, four_dims)
    _merge_output_heads(node)


def _merge_output_heads(node: ir.Node) -> None:
    """Y becomes 4-D; a Transpose and a Reshape after the node give its users the 3-D tensor again."""
    out = node.outputs[0]
    uses = list(out.uses())
    graph = node.graph
    output_positions = [i for i, v in enumerate(graph.outputs) if v is out] if graph is not None else []
    moved = ir.node("Transpose", [out], attributes={"perm": [0, 2, 1, 3]}, name=f"{node.name}/trt_merge_t")
    shape = ir.node(
        "Constant", [], attributes={"value": ir.tensor(np.array([0, 0, -1], np.int64))}, name=f"{node.name}/trt_merge_s"
    )
    merged = ir.node("Reshape", [moved.outputs[0], shape.outputs[0]], name=f"{node.name}/trt_merge_r")
    node.append([moved, shape, merged])
    result = merged.outputs[0]
    result.name, out.name = out.name, f"{out.name}_4d"
    result.dtype, result.shape = out.dtype, out.shape
    out.shape = None
    moved.outputs[0].name = f"{result.name}_moved"
    shape.outputs[0].name = f"{result.name}_shape"
    for user, index in uses:
        user.replace_input_with(index, result)
    for position in output_positions:
        graph.outputs[position] = result


def additive_mask(node: ir.Node, mask: ir.Value | None, dtype: ir.DataType) -> ir.Value:
    """`mask` as an additive mask of `dtype` (0 attends, -inf hides), made by nodes just before `node`, with
    the mask's shape (a key-only mask stays recognisable as one); a zero [1, 1, 1, 1] mask when there is none."""
    numpy_dtype = dtype.numpy()
    if mask is None:
        result = _constant(node, "zero_mask", np.zeros((1, 1, 1, 1), numpy_dtype))
        result.shape = ir.Shape([1, 1, 1, 1])
    elif mask.dtype == BOOL:
        zero = _constant(node, "mask_zero", np.zeros((), numpy_dtype))
        minus_inf = _constant(node, "mask_minus_inf", np.full((), -np.inf, numpy_dtype))
        result = _before(node, "additive_mask", "Where", [mask, zero, minus_inf])
        result.shape = mask.shape
    elif mask.dtype is None:
        raise ValueError(f"the element type of the mask of {node.name} is unknown")
    elif mask.dtype != dtype:
        result = _before(node, "mask_cast", "Cast", [mask], to=int(dtype))
        result.shape = mask.shape
    else:
        return mask
    result.dtype = dtype
    return result


# -- the plugin ---------------------------------------------------------------------------------------------

KERNEL_TYPES = ("fp16", "bf16")  # the flash kernels' AOT builds


def flash_kernel_reason(view: "NodeView", mask_position: int | None) -> str | None:
    """Why the flash kernels (`edgeattn.kernels.skip_softmax`) cannot compute this 4-D attention node, or None."""
    query, key, value = view.input(0), view.input(1), view.input(2)
    if query is None or key is None or value is None or query.shape is None or len(query.shape) != 4:
        return "Q is not 4-D [B, H, S, d] (the kernels read that layout)"
    if query.dtype not in KERNEL_TYPES:
        return f"{query.dtype or 'an unknown type'} (the kernels are built for fp16 and bf16; export with --dtype fp16)"
    head = query.shape[3]
    if not power_of_two_in(head):
        return f"head size {head} (the kernels take a static power of two in [16, 256])"
    for name, view_ in (("K", key), ("V", value)):
        if view_.shape is None or len(view_.shape) != 4 or view_.shape[3] != head:
            return f"{name}'s head size differs from Q's {head}"
    mask = key_bias_of(view, mask_position)
    if isinstance(mask, str):
        return mask
    causal = int(view.attributes.get("causal", 0))
    if causal == 1:
        q_len, kv_len = query.shape[2], key.shape[2]
        if not (isinstance(q_len, int) and q_len == kv_len):
            return "upper-left causal masking with query and key lengths not known equal (the kernels align causal masks lower-right)"
    return None


def key_bias_of(view: "NodeView", mask_position: int | None) -> bool | str:
    """Whether the kernels add the node's mask as a key bias (False: no mask, or a constant zero one), or why
    they cannot apply it. The kernels take an additive key-only mask of Q's type, [B or 1, 1, 1, Lkv]: a
    padding mask, what is left of a decoder's mask once its causal part is the `causal` attribute."""
    mask = view.input(mask_position) if mask_position is not None else None
    if mask is None or (mask.constant is not None and not np.any(mask.constant != 0)):
        return False
    query = view.input(0)
    if mask.dtype != (query.dtype if query is not None else None):
        return (f"a {mask.dtype or 'typeless'} mask (the kernels take an additive mask of Q's type; the TensorRT "
                "form converts boolean masks)")
    shape = mask.shape
    if shape is None or len(shape) != 4 or shape[1] != 1 or shape[2] != 1:
        return ("a mask that varies per query row or head (the kernels apply causal masking and a key-only mask "
                "[B or 1, 1, 1, Lkv])")
    return True


def key_bias_symbols(present: tuple[int, ...], dims: Sequence[Sequence[int]], mask_position: int = 3) -> dict[str, int]:
    """The strides the kernels read a key mask [Bm, 1, 1, Tm] with (KBS per batch entry, KNS per key; 0 where
    it broadcasts); ValueError for a mask that does not broadcast to the call's [B, 1, 1, Lkv]."""
    if mask_position not in present:
        return {"KBS": 0, "KNS": 0}
    mask = dims[present.index(mask_position)]
    batch, kv_len = dims[0][0], dims[1][2]
    if len(mask) != 4 or mask[0] not in (1, batch) or mask[3] not in (1, kv_len):
        raise ValueError(f"a mask of shape {list(mask)} does not broadcast to [{batch}, 1, 1, {kv_len}]")
    return {"KBS": 0 if mask[0] == 1 else int(mask[3]), "KNS": 0 if mask[3] == 1 else 1}


def flash_build(view: "NodeView", scale_factor: float, block_m: int = 128, block_n: int = 64) -> dict[str, Any]:
    """The flash kernel's build for a node; wide heads take 64-row tiles, which fit the shared memory of every
    target (sm_75's 64 KB included) and change no result of dense attention."""
    query = view.input(0)
    assert query is not None and query.shape is not None
    head = int(query.shape[3])  # type: ignore[arg-type]
    scale = float(view.attributes.get("scale", 0.0))
    return {"head_dim": head, "dtype": query.dtype, "mode": "prefill", "causal": int(view.attributes.get("causal", 0)) != 0,
            "scale_factor": float(scale_factor), "sm_scale": scale if scale > 0 else None,
            "block_m": block_m if head <= 64 else min(block_m, 64), "block_n": block_n,
            "key_bias": key_bias_of(view, 3) is True}  # fmt: skip


def _choose(view: "NodeView") -> "KernelChoice | str":
    reason = trt_unsupported(view.attributes, max(view.present, default=-1) + 1, view.outputs)
    if reason is not None:
        return reason
    reason = flash_kernel_reason(view, mask_position=3)
    if reason is not None:
        return reason
    builds = [flash_build(view, 0.0)]
    if builds[0]["block_m"] > 64:  # dense attention: any tiles give the same result, so both are tactics
        builds.append(flash_build(view, 0.0, block_m=64))
    return KernelChoice("skip_softmax", tuple(builds), "SkipSoftmaxBuild")


def flash_symbols(attrs: Mapping[str, Any], present: tuple[int, ...], dims: Sequence[Sequence[int]]) -> dict[str, int]:
    batch, q_heads, q_len, head = dims[0]
    return {"B": batch, "Hq": q_heads, "Lq": q_len, "D": head, "Hkv": dims[1][1], "Lkv": dims[1][2], "S": 1,
            **key_bias_symbols(present, dims)}


def flash_output_dims(attrs: Mapping[str, Any], present: tuple[int, ...]) -> list[list[Dim]]:
    return [[In(0, 0), In(0, 1), In(0, 2), In(2, 3)]]


def flash_combos(attrs: Mapping[str, Any], present: tuple[int, ...], outputs: int) -> list[tuple[str, ...]]:
    """Every input (the mask too: additive, of Q's type) and output in one of the kernels' types."""
    return [(t,) * (len(present) + outputs) for t in KERNEL_TYPES]


def flash_bindings(attrs: Mapping[str, Any], present: tuple[int, ...], outputs: int) -> tuple[tuple, tuple]:
    names = {0: "Q", 1: "K", 2: "V", 3: "KeyBias"}
    return tuple(names.get(p) for p in present), ("Out",)


def plugin_def(spec: Any) -> PluginDef:
    return PluginDef(spec, output_dims=flash_output_dims, output_types=lambda attrs, types: [types[0]],
                     type_combos=flash_combos, choose=_choose, symbols=flash_symbols, bindings=flash_bindings,
                     notes="the dense flash kernel (skip-softmax kernels with nothing skipped)")
