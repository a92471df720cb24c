"""The standard-op body of edgeattn.BlockSparseAttention: the exact definition, computing every score.

It is the definition onnxruntime falls back to and what tests hold the lowering to; the fast
onnxruntime lowering (`edgeattn.graphs.sparse.lower_ort`) gathers the kept blocks instead.
"""

from __future__ import annotations

import hashlib

import onnx_ir as ir

from edgeattn.ops.attention.trt import additive_mask
from edgeattn.ops.block_select.function import (
    BlockGeometry,
    geometry,
    key_blocks,
    pooled_values,
    row_blocks,
    select,
    block_probabilities,
    available,
)
from edgeattn.ops.block_sparse_attention.spec import ATTRIBUTES, NAME, check_attributes
from edgeattn.ops.bodies import BOOL, FLOAT, Nodes, attention_scale, declared_attributes, merge_heads, split_heads
from edgeattn.ops.skip_softmax_attention.function import (
    causal_valid,
    grouped_output,
    grouped_scores,
    masked_scores,
    softmax_guarded,
)
from edgeattn.ops.spec import DOMAIN, CallFacts, Target

_MASK, _BLOCK_MASK, _KEEP, _THRESHOLD, _WINDOW = 3, 4, 5, 6, 7


def _present(call: CallFacts, index: int) -> bool:
    return len(call.inputs) > index and call.inputs[index].present


def _mask_kind(call: CallFacts) -> str:
    if not _present(call, _MASK):
        return "none"
    return "bool" if call.inputs[_MASK].dtype == int(BOOL) else "additive"


def function_key(call: CallFacts, target: Target) -> str:
    attrs = call.attributes
    check_attributes(attrs)
    if attrs["layout"] == "mask" and not _present(call, _BLOCK_MASK):
        raise ValueError("layout 'mask' needs the block_mask input")
    values = "_".join(f"{a.name}={attrs[a.name]}" for a in ATTRIBUTES)
    inputs = "".join(str(i) for i in range(_MASK, _WINDOW + 1) if _present(call, i))
    digest = hashlib.sha1(values.encode()).hexdigest()[:10]
    stats = "_stats" if call.outputs > 1 else ""
    return f"{attrs['layout']}_r{call.inputs[0].rank}_m{_mask_kind(call)}_i{inputs}_{digest}{stats}"


def build_function(call: CallFacts, target: Target, overload: str) -> ir.Function:
    attrs = call.attributes
    rank = call.inputs[0].rank
    if rank not in (3, 4):
        raise ValueError(f"Q has rank {rank}; BlockSparseAttention takes 3-D or 4-D inputs")
    b = Nodes(call.opset, "bsa")
    query, key, value = b.input("Q"), b.input("K"), b.input("V")
    last = max([i for i in range(_MASK, _WINDOW + 1) if _present(call, i)], default=_MASK - 1)
    extra = {i: b.input(name) for i, name in zip(range(_MASK, last + 1),
                                                  ("mask", "block_mask", "keep", "threshold", "window"))}
    mask = extra.get(_MASK) if _present(call, _MASK) else None
    if rank == 3:
        heads, kv_heads = int(attrs["q_num_heads"]), int(attrs["kv_num_heads"] or attrs["q_num_heads"])
        query, key, value = split_heads(b, query, heads), split_heads(b, key, kv_heads), split_heads(b, value, kv_heads)
    inputs = {name: extra[i] if _present(call, i) else None
              for i, name in ((_BLOCK_MASK, "block_mask"), (_KEEP, "keep"), (_THRESHOLD, "threshold"),
                              (_WINDOW, "window"))}
    out, density = block_sparse_nodes(b, query, key, value, mask, _mask_kind(call), attrs, **inputs,
                                      with_density=call.outputs > 1)
    if rank == 3:
        out = merge_heads(b, out)
    outputs = {"Y": out}
    if density is not None:
        outputs["density"] = density
    return b.function(DOMAIN, NAME, overload, outputs, declared_attributes(ATTRIBUTES),
                      f"edgeattn.BlockSparseAttention body {overload}")


def layout_visible(b: Nodes, query: ir.Value, key: ir.Value, attrs: dict, geo: BlockGeometry,
                   block_mask: ir.Value | None, keep: ir.Value | None, threshold: ir.Value | None,
                   window_input: ir.Value | None = None) -> tuple[ir.Value, ir.Value | None, ir.Value | None]:
    """(visible keys [.., Hkv or 1, 1, Lq, Lkv] bool, chosen blocks or None, per-head probabilities or None).
    The window layout reads its window from `window_input` (an int64 scalar) when given, else the attribute."""
    if attrs["layout"] == "window":
        positions = b.op("Unsqueeze", b.op("Add", b.arange(geo.q_len), geo.offset), b.i64(1))
        keys = b.arange(geo.kv_len)
        window = window_input if window_input is not None else b.scalar(int(attrs["window"]))
        if geo.causal:
            near = b.op("Greater", keys, b.op("Sub", positions, window))
        else:
            near = b.op("Less", b.op("Abs", b.op("Sub", keys, positions)), window)
        visible = b.op("Or", near, b.op("Less", keys, b.scalar(int(attrs["sinks"]))))
        dense = dense_heads(b, attrs, key)
        if dense is not None:  # [Lq, Lkv] -> [Hkv, 1, Lq, Lkv]
            visible = b.op("Or", visible, b.op("Unsqueeze", dense, b.i64(1, 2, 3)))
        return visible, None, None
    probs = None
    if attrs["layout"] == "select":
        chosen, probs, _ = select(b, query, key, attrs, geo, keep, threshold)
    else:
        chosen = block_mask
    dense = dense_heads(b, attrs, key)
    if dense is not None:
        chosen = b.op("Or", chosen, b.op("Unsqueeze", dense, b.i64(0, 2, 3)))
    tokens = b.op("Gather", b.op("Gather", chosen, row_blocks(b, geo), axis=2), key_blocks(b, geo), axis=3)
    return b.op("Unsqueeze", tokens, b.i64(2)), chosen, probs


def dense_heads(b: Nodes, attrs: dict, key: ir.Value) -> ir.Value | None:
    """[Hkv] bool: key/value heads outside `heads` (None when `heads` is empty: every head is sparse)."""
    heads = [int(h) for h in attrs["heads"]]
    if not heads:
        return None
    listed = b.op("Equal", b.op("Unsqueeze", b.arange(b.dim(key, 1)), b.i64(1)), b.i64(*heads))
    return b.op("Not", b.cast(b.reduce("Max", b.cast(listed, ir.DataType.INT64), [1]), BOOL))


def block_sparse_nodes(b: Nodes, query: ir.Value, key: ir.Value, value: ir.Value, mask: ir.Value | None,
                       mask_kind: str, attrs: dict, block_mask: ir.Value | None = None, keep: ir.Value | None = None,
                       threshold: ir.Value | None = None, with_density: bool = True, window: ir.Value | None = None,
                       ) -> tuple[ir.Value, ir.Value | None]:
    """4-D block-sparse attention computing every score: (Y, density or None)."""
    geo = geometry(b, query, key, int(attrs["block_size"]), int(attrs["causal"]))
    visible, chosen, probs = layout_visible(b, query, key, attrs, geo, block_mask, keep, threshold, window)
    scores = grouped_scores(b, query, key, attention_scale(b, float(attrs["scale"]), query))
    valid, _ = causal_valid(b, geo.causal, geo.q_len, geo.kv_len)
    scores = masked_scores(b, scores, mask, mask_kind, valid)  # [B, Hq, Lq, Lkv]
    allowed = b.op("Not", b.op("IsInf", scores, detect_positive=0))
    grouped_shape = b.vec(0, b.dim(key, 1), -1, geo.q_len, geo.kv_len)
    five = b.op("Reshape", scores, grouped_shape)
    five = b.where_inf(visible, five)
    kept = b.op("And", b.op("Reshape", allowed, grouped_shape), visible)
    probs_tok = softmax_guarded(b, b.op("Reshape", five, b.op("Shape", scores)), int(attrs["softmax_precision"]))
    out = grouped_output(b, probs_tok, value, query)
    if int(attrs["rectify"]) and attrs["layout"] != "window":
        out = _rectify(b, out, query, key, value, attrs, geo, chosen, probs)
    if not with_density:
        return out, None
    density = b.op("Div", b.reduce("Sum", b.cast(kept, FLOAT), [0, 1, 2, 3, 4]),
                   b.op("Max", b.reduce("Sum", b.cast(allowed, FLOAT), [0, 1, 2, 3]), b.scalar(1.0)))
    return out, density


def _rectify(b: Nodes, out: ir.Value, query: ir.Value, key: ir.Value, value: ir.Value, attrs: dict,
             geo: BlockGeometry, chosen: ir.Value, probs: ir.Value | None) -> ir.Value:
    """Y·R + Σ_{available, not kept} P_j·V̄_j per query head and query block."""
    avail = available(b, geo)
    if probs is None:
        probs = block_probabilities(b, query, key, geo, float(attrs["scale"]), str(attrs["key_pool"]), avail,
                                    str(attrs["query_pool"]))
    kept = b.op("And", b.op("Unsqueeze", chosen, b.i64(2)), avail)  # [B, Hkv, 1, nQB, nKB]
    zero = b.like(b.scalar(0.0), probs)
    mass = b.reduce("Sum", b.op("Where", kept, probs, zero), [4], keepdims=True)  # [B, Hkv, g, nQB, 1]
    rest_probs = b.op("Where", b.op("And", b.op("Not", kept), avail), probs, zero)
    v_bar = b.op("Unsqueeze", pooled_values(b, value, geo), b.i64(2))  # [B, Hkv, 1, nKB, dv]
    rest = b.op("MatMul", rest_probs, v_bar)  # [B, Hkv, g, nQB, dv]
    rows = row_blocks(b, geo)
    mass_rows = b.op("Gather", mass, rows, axis=3)
    rest_rows = b.op("Gather", rest, rows, axis=3)
    five = b.vec(0, b.dim(key, 1), -1, geo.q_len, b.dim(out, 3))
    out5 = b.op("Add", b.op("Mul", b.op("Reshape", out, five), mass_rows), rest_rows)
    return b.op("Reshape", out5, b.op("Shape", out))


def to_trt_form(node: ir.Node) -> None:
    """The TensorRT form takes the node as it is (keep, threshold or window read from an input is refused before
    this is called) with a boolean mask made additive, as the kernels read it; Q's element type must be known."""
    query = node.inputs[0] if node.inputs else None
    if query is None or query.dtype is None:
        raise ValueError(f"the element type of Q of {node.name} is unknown")
    if len(node.inputs) > 3 and node.inputs[3] is not None:
        node.replace_input_with(3, additive_mask(node, node.inputs[3], query.dtype))
