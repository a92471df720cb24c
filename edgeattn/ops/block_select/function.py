"""Standard-op nodes of block selection (BlockSelect's body; BlockSparseAttention's body and the
onnxruntime lowering call the same builders), following `reference.py` step by step."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import onnx_ir as ir

from edgeattn.ops.block_select.spec import ATTRIBUTES, NAME, check_selection
from edgeattn.ops.bodies import FLOAT, Nodes, attention_scale, declared_attributes, split_heads
from edgeattn.ops.spec import DOMAIN, CallFacts, Target

BUDGET_SLACK = 1e-4  # as reference.BUDGET_SLACK


@dataclass(frozen=True)
class BlockGeometry:
    """0-D int64 values of one call's block layout (see the reference's docstring)."""

    q_len: ir.Value
    kv_len: ir.Value
    offset: ir.Value  # position of query row 0
    first: ir.Value  # block index of query row 0
    front: ir.Value  # rows before query row 0 in its block
    n_q: ir.Value  # query blocks
    n_kv: ir.Value  # key blocks
    block: int
    causal: int


def geometry(b: Nodes, query: ir.Value, key: ir.Value, block: int, causal: int) -> BlockGeometry:
    q_len, kv_len = b.dim(query, 2), b.dim(key, 2)
    offset = b.op("Sub", kv_len, q_len) if causal == 2 else b.scalar(0)
    size = b.scalar(block)
    first = b.op("Div", offset, size)
    front = b.op("Sub", offset, b.op("Mul", first, size))
    last = b.op("Div", b.op("Sub", b.op("Add", offset, q_len), b.scalar(1)), size)
    n_q = b.op("Add", b.op("Sub", last, first), b.scalar(1))
    return BlockGeometry(q_len, kv_len, offset, first, front, n_q, b.ceil_div(kv_len, block), block, causal)


def row_blocks(b: Nodes, geo: BlockGeometry) -> ir.Value:
    """[Lq] int64: the block row of each query row."""
    positions = b.op("Add", b.arange(geo.q_len), geo.offset)
    return b.op("Sub", b.op("Div", positions, b.scalar(geo.block)), geo.first)


def key_blocks(b: Nodes, geo: BlockGeometry) -> ir.Value:
    """[Lkv] int64: the block of each key."""
    return b.op("Div", b.arange(geo.kv_len), b.scalar(geo.block))


def block_grid(b: Nodes, geo: BlockGeometry) -> tuple[ir.Value, ir.Value]:
    """([nQB, 1] absolute query block index, [nKB] key block index)."""
    absolute = b.op("Unsqueeze", b.op("Add", b.arange(geo.n_q), geo.first), b.i64(1))
    return absolute, b.arange(geo.n_kv)


def available(b: Nodes, geo: BlockGeometry) -> ir.Value:
    """[nQB, nKB] bool (causal: j <= T)."""
    absolute, cols = block_grid(b, geo)
    if geo.causal:
        return b.op("LessOrEqual", cols, absolute)
    return b.op("Expand", b.const(np.array(True)), b.vec(geo.n_q, geo.n_kv))


def forced(b: Nodes, geo: BlockGeometry, local_blocks: int, sink_blocks: int, avail: ir.Value) -> ir.Value:
    """[nQB, nKB] bool: available local (diagonal) and sink blocks."""
    absolute, cols = block_grid(b, geo)
    if geo.causal:
        local = b.op("And", b.op("LessOrEqual", cols, absolute),
                     b.op("Greater", cols, b.op("Sub", absolute, b.scalar(local_blocks))))
    else:
        local = b.op("Less", b.op("Abs", b.op("Sub", cols, absolute)), b.scalar(local_blocks))
    return b.op("And", b.op("Or", local, b.op("Less", cols, b.scalar(sink_blocks))), avail)


def _padded_blocks(b: Nodes, x: ir.Value, length: ir.Value, count: ir.Value, block: int, before: ir.Value | int,
                   fill: float) -> ir.Value:
    """[B, H, L, d] -> [B, H, count, block, d], padded with `fill` (before and after)."""
    after = b.op("Sub", b.op("Sub", b.op("Mul", count, b.scalar(block)), length),
                 before if isinstance(before, ir.Value) else b.scalar(before))
    padded = b.pad_axis(x, 4, 2, before, after, b.like(b.scalar(fill), x))
    return b.op("Reshape", padded, b.vec(0, 0, count, block, b.dim(x, 3)))


def _block_counts(b: Nodes, length: ir.Value, count: ir.Value, block: int, before: ir.Value | int,
                  like: ir.Value) -> ir.Value:
    """[count, 1] float: rows of each block that hold data."""
    ones = b.op("Expand", b.like(b.scalar(1.0), like), b.vec(length))
    after = b.op("Sub", b.op("Sub", b.op("Mul", count, b.scalar(block)), length),
                 before if isinstance(before, ir.Value) else b.scalar(before))
    padded = b.pad_axis(ones, 1, 0, before, after)
    return b.reduce("Sum", b.op("Reshape", padded, b.vec(count, block)), [1], keepdims=True)


def pooled_queries(b: Nodes, query: ir.Value, geo: BlockGeometry) -> ir.Value:
    blocks = _padded_blocks(b, query, geo.q_len, geo.n_q, geo.block, geo.front, 0.0)
    counts = _block_counts(b, geo.q_len, geo.n_q, geo.block, geo.front, query)
    return b.op("Div", b.reduce("Sum", blocks, [3]), counts)


def pooled_keys(b: Nodes, key: ir.Value, geo: BlockGeometry, pool: str) -> ir.Value:
    fill = {"mean": 0.0, "max": -np.inf, "min": np.inf}[pool]
    blocks = _padded_blocks(b, key, geo.kv_len, geo.n_kv, geo.block, 0, fill)
    if pool != "mean":
        return b.reduce("Max" if pool == "max" else "Min", blocks, [3])
    return b.op("Div", b.reduce("Sum", blocks, [3]), _block_counts(b, geo.kv_len, geo.n_kv, geo.block, 0, key))


def pooled_values(b: Nodes, value: ir.Value, geo: BlockGeometry) -> ir.Value:
    """[B, Hkv, nKB, dv]: the mean of V over each key block."""
    return pooled_keys(b, value, geo, "mean")


def block_probabilities(b: Nodes, query: ir.Value, key: ir.Value, geo: BlockGeometry, scale: float, pool: str,
                        avail: ir.Value, query_pool: str = "mean") -> ir.Value:
    """Per query head block probabilities [B, Hkv, g, nQB, nKB]: softmax over the available blocks of
    scale·q̄·k̄ (query_pool mean), or the mean over a block's rows of softmax(scale·q·k̄) (rows)."""
    k_bar = b.op("Transpose", pooled_keys(b, key, geo, pool), perm=[0, 1, 3, 2])  # [B, Hkv, d, nKB]
    factor = attention_scale(b, scale, query)
    if query_pool == "mean":
        q_bar = pooled_queries(b, query, geo)  # [B, Hq, nQB, d]
        stacked = b.op("Reshape", q_bar, b.vec(0, b.dim(key, 1), -1, b.dim(query, 3)))
        scores = b.op("Mul", b.op("MatMul", stacked, k_bar), b.like(factor, q_bar))
        scores = b.op("Reshape", scores, b.vec(0, 0, -1, geo.n_q, geo.n_kv))
        return b.op("Softmax", b.where_inf(avail, scores), axis=-1)
    stacked = b.op("Reshape", query, b.vec(0, b.dim(key, 1), -1, b.dim(query, 3)))  # [B, Hkv, g·Lq, d]
    scores = b.op("Mul", b.op("MatMul", stacked, k_bar), b.like(factor, query))
    scores = b.op("Reshape", scores, b.vec(0, 0, -1, geo.q_len, geo.n_kv))  # [B, Hkv, g, Lq, nKB]
    row_avail = b.op("Gather", avail, row_blocks(b, geo), axis=0)  # [Lq, nKB]
    probs = b.op("Softmax", b.where_inf(row_avail, scores), axis=-1)
    after = b.op("Sub", b.op("Sub", b.op("Mul", geo.n_q, b.scalar(geo.block)), geo.q_len), geo.front)
    padded = b.pad_axis(probs, 5, 3, geo.front, after)
    blocks = b.op("Reshape", padded, b.vec(0, 0, 0, geo.n_q, geo.block, geo.n_kv))
    counts = _block_counts(b, geo.q_len, geo.n_q, geo.block, geo.front, query)  # [nQB, 1]
    return b.op("Div", b.reduce("Sum", blocks, [4]), counts)


def budget(b: Nodes, attrs: Mapping[str, Any], keep_input: ir.Value | None, geo: BlockGeometry) -> ir.Value:
    """0-D int64 blocks per query block in topk mode, at most nKB."""
    if int(attrs["keep_blocks"]) > 0:
        count = b.scalar(int(attrs["keep_blocks"]))
    else:
        keep = keep_input if keep_input is not None else b.scalar(float(attrs["keep"]))
        product = b.op("Mul", b.cast(keep, FLOAT), b.cast(geo.n_kv, FLOAT))
        count = b.cast(b.op("Ceil", b.op("Sub", product, b.scalar(BUDGET_SLACK))), ir.DataType.INT64)
        count = b.op("Max", count, b.scalar(1))
    return b.op("Min", count, geo.n_kv)


def _scatter_true(b: Nodes, like: ir.Value, indices: ir.Value, updates: ir.Value | None = None) -> ir.Value:
    """A bool tensor shaped like `like`, true at `indices` along the last axis (or `updates` there)."""
    zeros = b.op("Expand", b.const(np.array(False)), b.op("Shape", like))
    if updates is None:
        updates = b.op("Expand", b.const(np.array(True)), b.op("Shape", indices))
    return b.op("ScatterElements", zeros, indices, updates, axis=-1)


def select(b: Nodes, query: ir.Value, key: ir.Value, attrs: Mapping[str, Any], geo: BlockGeometry,
           keep_input: ir.Value | None = None, threshold_input: ir.Value | None = None,
           ) -> tuple[ir.Value, ir.Value, ir.Value]:
    """(selected [B, Hkv, nQB, nKB] bool, per-head probabilities [B, Hkv, g, nQB, nKB], available)."""
    avail = available(b, geo)
    probs = block_probabilities(b, query, key, geo, float(attrs["scale"]), str(attrs["key_pool"]), avail,
                                str(attrs["query_pool"]))
    grouped = b.reduce("Mean" if attrs["group_reduce"] == "mean" else "Max", probs, [2])
    must = forced(b, geo, int(attrs["local_blocks"]), int(attrs["sink_blocks"]), avail)
    priority = b.op("Add", grouped, b.op("Mul", b.like(b.cast(must, FLOAT), grouped), b.like(b.scalar(2.0), grouped)))
    priority = b.op("Where", avail, priority, b.like(b.scalar(-1.0), grouped))
    mode = attrs["mode"]
    if mode == "topk":
        _, top = b.op("TopK", priority, b.vec(budget(b, attrs, keep_input, geo)), axis=-1, outputs=2)
        chosen = _scatter_true(b, priority, top)
    elif mode == "threshold":
        threshold = threshold_input if threshold_input is not None else b.scalar(float(attrs["threshold"]))
        chosen = b.op("Greater", grouped, b.like(threshold, grouped))
    else:
        _, order = b.op("TopK", priority, b.vec(geo.n_kv), axis=-1, outputs=2)
        mass = b.op("Where", avail, grouped, b.like(b.scalar(0.0), grouped))
        ordered = b.op("GatherElements", mass, order, axis=-1)
        before = b.op("Sub", b.op("CumSum", ordered, b.scalar(-1)), ordered)
        keep_sorted = b.op("Less", before, b.like(b.scalar(float(attrs["cum_prob"])), before))
        chosen = _scatter_true(b, priority, order, keep_sorted)
    selected = b.op("And", b.op("Or", chosen, must), avail)
    return _dense_rows(b, selected, avail, attrs, geo), probs, avail


def _dense_rows(b: Nodes, selected: ir.Value, avail: ir.Value, attrs: Mapping[str, Any],
                geo: BlockGeometry) -> ir.Value:
    rows = int(attrs["dense_last_rows"])
    dense = b.op("GreaterOrEqual", b.arange(geo.n_q), b.op("Sub", geo.n_q, b.scalar(rows)))
    if int(attrs["dense_decode"]):
        dense = b.op("Or", dense, b.op("Equal", geo.q_len, b.scalar(1)))
    if rows == 0 and not int(attrs["dense_decode"]):
        return selected
    # selected is within avail: a dense row takes avail (ORT has no Where on bool data)
    return b.op("Or", selected, b.op("And", b.op("Unsqueeze", dense, b.i64(1)), avail))


# -- the BlockSelect op ----------------------------------------------------------------------------------


def function_key(call: CallFacts, target: Target) -> str:
    attrs = call.attributes
    check_selection(attrs)
    tunable = "".join("k" if i == 2 else "t" for i in (2, 3) if len(call.inputs) > i and call.inputs[i].present)
    values = "_".join(f"{a.name}={attrs[a.name]}" for a in ATTRIBUTES)
    return f"r{call.inputs[0].rank}_{_digest(values)}{'_in' + tunable if tunable else ''}"


def _digest(text: str) -> str:
    import hashlib

    return hashlib.sha1(text.encode()).hexdigest()[:10]


def build_function(call: CallFacts, target: Target, overload: str) -> ir.Function:
    attrs = call.attributes
    rank = call.inputs[0].rank
    if rank not in (3, 4):
        raise ValueError(f"Q has rank {rank}; BlockSelect takes 3-D or 4-D inputs")
    b = Nodes(call.opset, "bsel")
    query, key = b.input("Q"), b.input("K")
    present = [len(call.inputs) > i and call.inputs[i].present for i in (2, 3)]
    keep_input = b.input("keep") if present[0] or present[1] else None
    threshold_input = b.input("threshold") if present[1] else None
    if not present[0]:
        keep_input = None
    if rank == 3:
        query = split_heads(b, query, int(attrs["q_num_heads"]))
        key = split_heads(b, key, int(attrs["kv_num_heads"] or attrs["q_num_heads"]))
    geo = geometry(b, query, key, int(attrs["block_size"]), int(attrs["causal"]))
    selected, _, _ = select(b, query, key, attrs, geo, keep_input, threshold_input)
    return b.function(DOMAIN, NAME, overload, {"block_mask": selected}, declared_attributes(ATTRIBUTES),
                      f"edgeattn.BlockSelect body {overload}")


def to_trt_form(node: ir.Node) -> None:
    """The TensorRT form takes the node as it is (a budget or threshold read from an input is refused before
    this is called); only Q's element type must be known."""
    query = node.inputs[0] if node.inputs else None
    if query is None or query.dtype is None:
        raise ValueError(f"the element type of Q of {node.name} is unknown")


__all__ = ["BlockGeometry", "build_function", "function_key", "geometry", "select", "to_trt_form"]
