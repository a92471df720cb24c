"""edgeattn.BlockSparseAttention for onnxruntime: the kept K/V blocks gathered, dense attention over them.
Exact for the op (tests hold it to the function body). Per-graph pieces (block geometry, masks, gather
offsets) are written once, through `SharedValues`; per layer only what depends on the layer's Q, K and V.

- block select (BlockSparseAttention, layout select, topk): pooled scores and TopK per layer, the
  chosen K/V blocks gathered (query heads grouped per key/value head, one Gather on a flattened block
  axis), dense attention over the gathered blocks with a slot mask built once. Slot 0 holds the
  diagonal block (the only one cut by the causal rule), the others hold blocks strictly before it or
  are empty, and which slots are empty depends only on the geometry.
- window (BlockSparseAttention, layout window): the same gathered attention over static block
  indices (the window's blocks and the sink blocks) with an exact token-level mask built once.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx_ir as ir

from edgeattn.ops.ort import (
    Plan,
    SharedValues,
    LoweringSite,
    attention,
    causal_mask,
    causal_site,
    flat_block_index,
    gather_blocks,
    slot_mask_rows,
    stack_query_rows,
    unstack_rows,
)
from edgeattn.ops.block_select.function import (
    available,
    block_grid,
    block_probabilities,
    budget,
    forced,
    geometry,
)
from edgeattn.ops.bodies import BOOL, FLOAT, INT64, Nodes
from edgeattn.ops.ort import if_else as _if


def ort_lowering(node: ir.Node, attrs: dict[str, Any], opset: int) -> Plan | str:
    """block-gather (layout select, top-k) or window-gather (layout window), or why the node keeps its body."""
    site = causal_site(node, attrs, opset)
    if isinstance(site, str):
        return site
    if attrs["heads"]:
        return "a layout on some heads only (heads) keeps the function body"
    if attrs["layout"] == "window":
        return Plan("window-gather", lambda b, shared, settings: lower_window(b, site, shared))
    if attrs["layout"] != "select" or attrs["mode"] != "topk":
        return "the gather lowering takes layout select in topk mode"
    if int(attrs["local_blocks"]) < 1 or int(attrs["rectify"]):
        return "the gather lowering needs local_blocks >= 1 and rectify = 0"
    return Plan("block-gather", lambda b, shared, settings: lower_block_select(b, site, shared))


# -- block select -------------------------------------------------------------------------------------------


def lower_block_select(b: Nodes, site: LoweringSite, shared: SharedValues) -> ir.Value:
    """Top-k blocks from pooled scores, gathered, then dense attention over them."""
    attrs, node, opset = site.attrs, site.node, b.opset
    block, causal, group = int(attrs["block_size"]), int(attrs["causal"]), site.group

    def pieces(s: Nodes) -> dict:
        geo = geometry(s, site.query, site.key, block, causal)
        avail = available(s, geo)
        must = forced(s, geo, int(attrs["local_blocks"]), int(attrs["sink_blocks"]), avail)
        absolute, cols = block_grid(s, geo)
        diagonal = s.op("Equal", cols, absolute)
        # forced blocks sort first (+2 > any P), the diagonal before them (+5): it lands in slot 0
        bonus = s.op("Add", s.op("Mul", s.cast(must, FLOAT), s.scalar(2.0)),
                     s.op("Mul", s.cast(diagonal, FLOAT), s.scalar(3.0)))
        bonus = s.where_inf(avail, bonus)
        count = _slot_counts(s, attrs, geo, avail, must)  # [nQB]
        slots = s.reduce("Max", count, [0])
        valid = s.op("Less", s.op("Unsqueeze", s.arange(slots), s.i64(0)), s.op("Unsqueeze", count, s.i64(1)))
        offsets = s.arange(block)
        triangle = s.op("LessOrEqual", s.op("Unsqueeze", offsets, s.i64(0)), s.op("Unsqueeze", offsets, s.i64(1)))
        first_slot = s.op("Equal", s.arange(slots), s.scalar(0))  # [S]
        not_first = s.op("Not", s.op("Unsqueeze", first_slot, s.i64(0, 2)))  # [1, S, 1]
        token = s.op("Or", not_first, s.op("Unsqueeze", triangle, s.i64(1)))  # [b, S, b]
        mask = s.op("And", s.op("Unsqueeze", valid, s.i64(1, 3)), token)  # [nQB, b, S, b]
        mask = s.op("Reshape", mask, s.vec(geo.n_q, block, -1))
        out = {"geo": geo, "avail": avail, "bonus": bonus, "slots": slots, "mask": slot_mask_rows(s, mask, group),
               "starts": flat_block_index(s, site.key, geo.n_kv), **_key_mask_pieces(s, site, geo)}
        rows = int(attrs["dense_last_rows"])
        if rows:
            first_dense = s.op("Mul", s.op("Sub", geo.n_q, s.scalar(rows)), s.scalar(block))  # padded row
            start = s.op("Max", s.op("Sub", first_dense, geo.front), s.scalar(0))
            start = s.op("Min", start, geo.q_len)
            out["tail"] = (s.vec(start), causal_mask(s, s.op("Sub", geo.q_len, start), geo.kv_len,
                                                      s.op("Add", geo.offset, start), site.key_mask))
        return out

    key = ("block-select", *(attrs[n] for n in ("block_size", "causal", "keep", "keep_blocks", "local_blocks",
                                                "sink_blocks", "dense_last_rows")), group, *site.lengths,
           id(site.key_mask))
    got = shared.get(key, node, pieces, opset)

    def sparse(inner: Nodes) -> ir.Value:
        return _block_select_layer(inner, site, got)

    if not int(attrs["dense_decode"]):
        return sparse(b)

    def decode(inner: Nodes) -> ir.Value:  # one query row: every available key (here: all of them)
        mask = site.key_mask
        return attention(inner, site.query, site.key, site.value, mask, site.scale)

    return _if(b, b.op("Equal", got["geo"].q_len, b.scalar(1)), decode, sparse)


def _slot_counts(s: Nodes, attrs: dict, geo, avail: ir.Value, must: ir.Value) -> ir.Value:
    """[nQB] int64: blocks kept per query block (the op's rule: max(budget, forced), at most available)."""
    forced_count = s.reduce("Sum", s.cast(must, INT64), [1])
    available_count = s.reduce("Sum", s.cast(avail, INT64), [1])
    return s.op("Min", s.op("Max", forced_count, budget(s, attrs, None, geo)), available_count)


def _block_select_layer(b: Nodes, site: LoweringSite, got: dict) -> ir.Value:
    attrs, geo = site.attrs, got["geo"]
    block, group = int(attrs["block_size"]), site.group
    probs = block_probabilities(b, site.query, site.key, geo, float(attrs["scale"]), str(attrs["key_pool"]),
                                got["avail"], str(attrs["query_pool"]))
    grouped = b.reduce("Mean" if attrs["group_reduce"] == "mean" else "Max", probs, [2])  # [B, Hkv, nQB, nKB]
    priority = b.op("Add", grouped, b.like(got["bonus"], grouped))
    _, chosen = b.op("TopK", priority, b.vec(got["slots"]), axis=-1, outputs=2)  # [B, Hkv, nQB, S]
    flat = b.op("Reshape", b.op("Add", chosen, got["starts"]), b.i64(-1))
    return _gatheredattention(b, site, got, flat, geo, block, group)


def _gatheredattention(b: Nodes, site: LoweringSite, got: dict, flat: ir.Value, geo, block: int, group: int) -> ir.Value:
    k = gather_blocks(b, site.key, geo.n_kv, block, geo.kv_len, flat, geo.n_q, got["slots"])
    v = gather_blocks(b, site.value, geo.n_kv, block, geo.kv_len, flat, geo.n_q, got["slots"])
    q = stack_query_rows(b, site.query, geo.front, geo.n_q, block, group, geo.q_len)

    def attend(inner: Nodes, mask: ir.Value) -> ir.Value:
        out = attention(inner, q, k, v, mask, site.scale)
        return unstack_rows(inner, out, site.query, geo.front, geo.n_q, block, group, geo.q_len)

    if site.key_mask is None:
        out = attend(b, got["mask"])
    else:
        # Every key kept (no padding): the slot mask alone. Otherwise the key mask is gathered with the
        # blocks and joins the slot mask for this layer (rows that then see no key give zeros, as defined).
        def padded(inner: Nodes) -> ir.Value:
            keys = inner.op("Gather", got["key_blocks"], flat, axis=0)  # [B·Hkv·nQB·S, block]
            width = inner.op("Mul", got["slots"], inner.scalar(block))
            keys = inner.op("Reshape", keys, inner.vec(-1, geo.n_q, 1, width))
            return attend(inner, inner.op("And", keys, got["mask"]))

        out = _if(b, got["all_keys"], lambda inner: attend(inner, got["mask"]), padded)
    if "tail" in got:
        start, mask = got["tail"]
        tail_q = b.op("Slice", site.query, start, b.vec(geo.q_len), b.i64(2))
        tail = attention(b, tail_q, site.key, site.value, mask, site.scale)
        head = b.op("Slice", out, b.i64(0), start, b.i64(2))
        out = b.op("Concat", head, tail, axis=2)
    return out


def _key_mask_pieces(s: Nodes, site: LoweringSite, geo) -> dict:
    """Per graph: whether the key mask keeps every key, and the mask in blocks [B·Hkv·nKB, block]."""
    if site.key_mask is None:
        return {}
    block = geo.block
    mask = site.key_mask  # [B|1, 1, 1, Lkv]
    every = s.op("Not", s.cast(s.reduce("Max", s.cast(s.op("Not", mask), INT64), [0, 1, 2, 3]), BOOL))
    heads = s.op("Expand", s.op("Reshape", mask, s.vec(s.dim(mask, 0), 1, -1)),
                 s.vec(s.dim(site.key, 0), s.dim(site.key, 1), geo.kv_len))  # [B, Hkv, Lkv]
    padded = s.pad_axis(heads, 3, 2, 0, s.op("Sub", s.op("Mul", geo.n_kv, s.scalar(block)), geo.kv_len),
                        s.const(np.array(False)))
    return {"all_keys": every, "key_blocks": s.op("Reshape", padded, s.vec(-1, block))}


# -- window ----------------------------------------------------------------------------------------------


def lower_window(b: Nodes, site: LoweringSite, shared: SharedValues) -> ir.Value:
    """Sliding window + sinks over statically indexed, gathered blocks."""
    attrs, opset = site.attrs, b.opset
    block, causal, group = int(attrs["block_size"]), int(attrs["causal"]), site.group
    window, sinks = int(attrs["window"]), int(attrs["sinks"])
    window_blocks = (window - 1 + block - 1) // block + 1
    sink_blocks = -(-sinks // block)
    slots = window_blocks + sink_blocks

    def pieces(s: Nodes) -> dict:
        geo = geometry(s, site.query, site.key, block, causal)
        absolute, _ = block_grid(s, geo)  # [nQB, 1]
        # slot s: sink block s (s < sink_blocks), else block T - window_blocks + 1 + (s - sink_blocks)
        index = np.concatenate([np.arange(sink_blocks, dtype=np.int64),
                                np.arange(window_blocks, dtype=np.int64) - window_blocks + 1])
        is_sink = np.arange(slots) < sink_blocks
        blocks = s.op("Add", s.op("Mul", absolute, s.const(~is_sink, np.int64)), s.const(index))  # [nQB, S]
        first_window = s.op("Sub", absolute, s.scalar(window_blocks - 1))
        sink_ok = s.op("And", s.op("Less", blocks, first_window), s.op("LessOrEqual", blocks, absolute))
        window_ok = s.op("GreaterOrEqual", blocks, s.scalar(0))
        sink = s.const(is_sink)  # (no Where on bool data in onnxruntime)
        valid = s.op("Or", s.op("And", sink, sink_ok), s.op("And", s.op("Not", sink), window_ok))  # [nQB, S]
        clamped = s.op("Min", s.op("Max", blocks, s.scalar(0)), s.op("Sub", geo.n_kv, s.scalar(1)))
        offsets = s.arange(block)
        key_pos = s.op("Add", s.op("Unsqueeze", s.op("Mul", clamped, s.scalar(block)), s.i64(1, 3)),
                       s.op("Unsqueeze", offsets, s.i64(0, 1, 2)))  # [nQB, 1, S, b]
        row_pos = s.op("Add", s.op("Unsqueeze", s.op("Mul", absolute, s.scalar(block)), s.i64(2, 3)),
                       s.op("Unsqueeze", offsets, s.i64(0, 2, 3)))  # [nQB, b, 1, 1]
        near = s.op("Or", s.op("Greater", key_pos, s.op("Sub", row_pos, s.scalar(window))),
                    s.op("Less", key_pos, s.scalar(sinks)))
        visible = s.op("And", near, s.op("LessOrEqual", key_pos, row_pos))
        mask = s.op("And", visible, s.op("Unsqueeze", valid, s.i64(1, 3)))
        mask = s.op("Reshape", mask, s.vec(geo.n_q, block, -1))
        flat = s.op("Add", flat_block_index(s, site.key, geo.n_kv), s.op("Unsqueeze", clamped, s.i64(0, 1)))
        return {"geo": geo, "slots": s.scalar(slots), "mask": slot_mask_rows(s, mask, group),
                "causal": causal_mask(s, geo.q_len, geo.kv_len, geo.offset, site.key_mask),
                "flat": s.op("Reshape", flat, s.i64(-1)), **_key_mask_pieces(s, site, geo)}

    key = ("window", block, causal, window, sinks, group, *site.lengths, id(site.key_mask))
    got = shared.get(key, site.node, pieces, opset)
    geo = got["geo"]

    def decode(inner: Nodes) -> ir.Value:
        """One query row at position p: the sink keys before the window, then keys (p - window, p]."""
        position = geo.offset
        start = inner.op("Max", inner.op("Sub", position, inner.scalar(window - 1)), inner.scalar(0))
        sink_end = inner.op("Min", inner.scalar(sinks), start)
        end = inner.op("Add", position, inner.scalar(1))

        def keys(x: ir.Value, axis: int) -> ir.Value:
            head = inner.op("Slice", x, inner.i64(0), inner.vec(sink_end), inner.i64(axis))
            tail = inner.op("Slice", x, inner.vec(start), inner.vec(end), inner.i64(axis))
            return inner.op("Concat", head, tail, axis=axis)

        mask = keys(site.key_mask, 3) if site.key_mask is not None else None
        return attention(inner, site.query, keys(site.key, 2), keys(site.value, 2), mask, site.scale)

    def windowed(inner: Nodes) -> ir.Value:
        return _gatheredattention(inner, site, got, got["flat"], geo, block, group)

    def everything(inner: Nodes) -> ir.Value:  # the window holds every key: causal attention
        return attention(inner, site.query, site.key, site.value, got["causal"], site.scale)

    def prefill(inner: Nodes) -> ir.Value:
        return _if(inner, inner.op("LessOrEqual", geo.kv_len, inner.scalar(window)), everything, windowed)

    return _if(b, b.op("Equal", geo.q_len, b.scalar(1)), decode, prefill)


__all__ = ["lower_block_select", "lower_window", "ort_lowering"]
