"""The standard-op body of edgeattn.SkipSoftmaxAttention (also its onnxruntime lowering).

onnxruntime has no kernel that skips tiles, so this body computes every score, then replays the tile
walk on the tile row maxima: a `Scan` over key tiles carries the running row max (reset at each
split), decides per query tile whether the key tile is skipped, and updates the max only for tiles
kept — exactly the sequential rule, for any λ. The kept tiles then go through one masked softmax.
It is exact, and it is not faster than dense attention: the saving exists only in GPU kernels.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from edgeattn.ops.bodies import BOOL, FLOAT, Nodes, attention_scale, declared_attributes, merge_heads, split_heads
from edgeattn.ops.skip_softmax_attention.spec import ATTRIBUTES, NAME, check_attributes
from edgeattn.ops.spec import DOMAIN, CallFacts, Target

def function_key(call: CallFacts, target: Target) -> str:
    attrs = call.attributes
    check_attributes(attrs)
    mask = _mask_kind(call)
    tunable = len(call.inputs) > 4 and call.inputs[4].present
    parts = [f"r{call.inputs[0].rank}", f"m{mask}", f"c{attrs['causal']}",
             f"h{attrs['q_num_heads']}x{attrs['kv_num_heads']}",
             f"s{attrs['scale']:g}", f"b{attrs['block_m']}x{attrs['block_n']}", f"n{attrs['num_splits']}",
             "sfin" if tunable else f"sf{attrs['scale_factor']:g}"]
    if attrs["softmax_precision"]:
        parts.append(f"p{attrs['softmax_precision']}")
    if call.outputs > 1:
        parts.append("stats")
    return "_".join(parts)


def _mask_kind(call: CallFacts) -> str:
    if len(call.inputs) <= 3 or not call.inputs[3].present:
        return "none"
    return "bool" if call.inputs[3].dtype == int(BOOL) else "additive"


def build_function(call: CallFacts, target: Target, overload: str) -> ir.Function:
    attrs = call.attributes
    rank = call.inputs[0].rank
    if rank not in (3, 4):
        raise ValueError(f"Q has rank {rank}; SkipSoftmaxAttention takes 3-D or 4-D inputs")
    b = Nodes(call.opset, "ss")
    query, key, value = b.input("Q"), b.input("K"), b.input("V")
    mask = b.input("mask") if _mask_kind(call) != "none" else None
    if mask is None and len(call.inputs) > 4 and call.inputs[4].present:
        b.input("mask")  # an absent mask still holds its place before scale_factor
    factor_input = b.input("scale_factor") if len(call.inputs) > 4 and call.inputs[4].present else None
    if rank == 3:
        query = split_heads(b, query, attrs["q_num_heads"])
        key = split_heads(b, key, attrs["kv_num_heads"] or attrs["q_num_heads"])
        value = split_heads(b, value, attrs["kv_num_heads"] or attrs["q_num_heads"])
    out, ratio = skip_softmax_nodes(b, query, key, value, mask, _mask_kind(call), attrs, factor_input,
                                    with_ratio=call.outputs > 1)
    if rank == 3:
        out = merge_heads(b, out)
    outputs = {"Y": out}
    if ratio is not None:
        outputs["skip_ratio"] = ratio
    return b.function(DOMAIN, NAME, overload, outputs, declared_attributes(ATTRIBUTES),
                      f"edgeattn.SkipSoftmaxAttention body {overload}")


def grouped_scores(b: Nodes, query: ir.Value, key: ir.Value, scale: ir.Value) -> ir.Value:
    """scale·QKᵀ as [B, Hq, Lq, Lkv] without repeating K: the query heads of one key/value head are
    stacked as rows ([B, Hkv, g·Lq, d]), which is a reshape of [B, Hq, Lq, d]."""
    stacked = b.op("Reshape", query, b.vec(0, b.dim(key, 1), -1, b.dim(query, 3)))
    scores = b.op("MatMul", stacked, b.op("Transpose", key, perm=[0, 1, 3, 2]))
    scores = b.op("Mul", scores, b.like(scale, scores))
    return b.op("Reshape", scores, b.vec(0, b.dim(query, 1), b.dim(query, 2), -1))


def grouped_output(b: Nodes, probs: ir.Value, value: ir.Value, query: ir.Value) -> ir.Value:
    """probs [B, Hq, Lq, Lkv] · V [B, Hkv, Lkv, dv] -> [B, Hq, Lq, dv], K/V heads not repeated."""
    stacked = b.op("Reshape", probs, b.vec(0, b.dim(value, 1), -1, b.dim(probs, 3)))
    out = b.op("MatMul", stacked, value)
    return b.op("Reshape", out, b.vec(0, b.dim(query, 1), b.dim(query, 2), -1))


def causal_valid(b: Nodes, causal: int, q_len: ir.Value, kv_len: ir.Value) -> tuple[ir.Value | None, ir.Value]:
    """([Lq, Lkv] bool of keys each row may see, or None without causal; the position of row 0)."""
    offset = b.op("Sub", kv_len, q_len) if causal == 2 else b.scalar(0)
    if not causal:
        return None, offset
    rows = b.op("Unsqueeze", b.op("Add", b.arange(q_len), offset), b.i64(1))
    return b.op("LessOrEqual", b.arange(kv_len), rows), offset


def masked_scores(b: Nodes, scores: ir.Value, mask: ir.Value | None, mask_kind: str,
                  valid: ir.Value | None) -> ir.Value:
    """Scores with the mask added (additive) and -inf where a key is hidden (bool mask, causal)."""
    if mask is not None and mask_kind == "additive":
        scores = b.op("Add", scores, b.like(mask, scores))
    keep = valid
    if mask is not None and mask_kind == "bool":
        keep = mask if keep is None else b.op("And", keep, mask)
    return scores if keep is None else b.where_inf(keep, scores)


def softmax_guarded(b: Nodes, scores: ir.Value, precision: int) -> ir.Value:
    """Softmax over the last axis (in `precision` when set); rows with no key give zeros."""
    if precision:
        probs = b.like(b.op("Softmax", b.op("Cast", scores, to=precision), axis=-1), scores)
    else:
        probs = b.op("Softmax", scores, axis=-1)
    return b.op("Where", b.op("IsNaN", probs), b.like(b.scalar(0.0), probs), probs)


def skip_softmax_nodes(b: Nodes, query: ir.Value, key: ir.Value, value: ir.Value, mask: ir.Value | None,
                       mask_kind: str, attrs: dict, factor_input: ir.Value | None, with_ratio: bool = True,
                       ) -> tuple[ir.Value, ir.Value | None]:
    """4-D skip-softmax attention: (Y, skip_ratio or None)."""
    block_m, block_n, causal = int(attrs["block_m"]), int(attrs["block_n"]), int(attrs["causal"])
    q_len, kv_len = b.dim(query, 2), b.dim(key, 2)
    scores = grouped_scores(b, query, key, attention_scale(b, float(attrs["scale"]), query))
    valid, offset = causal_valid(b, causal, q_len, kv_len)
    scores = masked_scores(b, scores, mask, mask_kind, valid)
    n_q_tiles, n_kv_tiles = b.ceil_div(q_len, block_m), b.ceil_div(kv_len, block_n)
    skipped, visited = _tile_walk(b, scores, attrs, q_len, kv_len, offset, n_q_tiles, n_kv_tiles, factor_input)
    # Keep a (row, key) score only when its key tile was kept for the row's query tile.
    row_tiles = b.op("Div", b.arange(q_len), b.scalar(block_m))
    key_tiles = b.op("Div", b.arange(kv_len), b.scalar(block_n))
    kept = b.op("Not", skipped)  # [B, Hq, nQT, nKT]
    kept = b.op("Gather", b.op("Gather", kept, row_tiles, axis=2), key_tiles, axis=3)
    probs = softmax_guarded(b, b.where_inf(kept, scores), int(attrs["softmax_precision"]))
    out = grouped_output(b, probs, value, query)
    if not with_ratio:
        return out, None
    total = b.op("Mul", b.reduce("Sum", b.cast(visited, FLOAT), [0, 1]),
                 b.cast(b.op("Mul", b.dim(query, 0), b.dim(query, 1)), FLOAT))
    count = b.reduce("Sum", b.cast(skipped, FLOAT), [0, 1, 2, 3])
    ratio = b.op("Div", count, b.op("Max", total, b.scalar(1.0)))
    return out, ratio


def _tile_walk(b: Nodes, scores: ir.Value, attrs: dict, q_len: ir.Value, kv_len: ir.Value, offset: ir.Value,
               n_q_tiles: ir.Value, n_kv_tiles: ir.Value, factor_input: ir.Value | None) -> tuple[ir.Value, ir.Value]:
    """(skipped [B, Hq, nQT, nKT] bool, visited [nKT, nQT] bool) by the sequential skip rule."""
    block_m, block_n = int(attrs["block_m"]), int(attrs["block_n"])
    minus_inf = b.like(b.scalar(-np.inf), scores)
    padded = b.pad_axis(scores, 4, 3, 0, b.op("Sub", b.op("Mul", n_kv_tiles, b.scalar(block_n)), kv_len), minus_inf)
    padded = b.pad_axis(padded, 4, 2, 0, b.op("Sub", b.op("Mul", n_q_tiles, b.scalar(block_m)), q_len), minus_inf)
    tiles = b.op("Reshape", padded, b.vec(0, 0, 0, n_kv_tiles, block_n))
    tile_max = b.op("Transpose", b.reduce("Max", tiles, [4]), perm=[3, 0, 1, 2])  # [nKT, B, Hq, Lq']
    per_split = b.op("Max", b.ceil_div(n_kv_tiles, int(attrs["num_splits"])), b.scalar(1))
    first = b.op("Equal", b.op("Mod", b.arange(n_kv_tiles), per_split), b.scalar(0))  # [nKT]
    visited = _visited(b, attrs, q_len, offset, n_q_tiles, n_kv_tiles)
    factor = factor_input if factor_input is not None else b.scalar(float(attrs["scale_factor"]))
    kv_float = b.cast(kv_len, FLOAT)
    log_lambda = b.op("Where", b.op("Greater", factor, b.scalar(0.0)),
                      b.op("Log", b.op("Div", b.op("Max", factor, b.scalar(1e-30)), kv_float)), b.scalar(-np.inf))
    log_lambda = b.like(log_lambda, scores)
    start = b.op("Expand", minus_inf, b.op("Shape", b.op("Gather", tile_max, b.scalar(0), axis=0)))
    body = _scan_body(b.opset, block_m, scores)
    _, _, skipped = b.op("Scan", start, log_lambda, tile_max, first, visited, outputs=3,
                         body=ir.Attr("body", ir.AttributeType.GRAPH, body), num_scan_inputs=3)
    return b.op("Transpose", skipped, perm=[1, 2, 3, 0]), visited


def _visited(b: Nodes, attrs: dict, q_len: ir.Value, offset: ir.Value, n_q_tiles: ir.Value,
             n_kv_tiles: ir.Value) -> ir.Value:
    """[nKT, nQT] bool: key tile j is visited by query tile t (causal: its first key is visible to
    the tile's last row)."""
    block_m, block_n = int(attrs["block_m"]), int(attrs["block_n"])
    first_keys = b.op("Unsqueeze", b.op("Mul", b.arange(n_kv_tiles), b.scalar(block_n)), b.i64(1))
    if not int(attrs["causal"]):
        return b.op("Expand", b.const(np.array(True)), b.vec(n_kv_tiles, n_q_tiles))
    ends = b.op("Min", b.op("Mul", b.op("Add", b.arange(n_q_tiles), b.scalar(1)), b.scalar(block_m)), q_len)
    last_pos = b.op("Add", b.op("Sub", ends, b.scalar(1)), offset)
    return b.op("LessOrEqual", first_keys, last_pos)


def _scan_body(opset: int, block_m: int, scores: ir.Value) -> ir.Graph:
    """One key tile: state (running max [B, Hq, Lq'], ln λ); inputs (tile row max, first, visited)."""
    s = Nodes(opset, "ss_scan")
    running = s.input("running", scores.dtype)
    log_lambda = s.input("log_lambda", scores.dtype)
    tile_max = s.input("tile_max", scores.dtype)
    first = s.input("first", BOOL)
    visited = s.input("visited", BOOL)
    minus_inf = s.like(s.scalar(-np.inf), tile_max)
    current = s.op("Where", first, minus_inf, running)
    rise = s.op("Where", s.op("Equal", tile_max, minus_inf), minus_inf, s.op("Sub", tile_max, current))
    rise = s.op("Reshape", rise, s.i64(0, 0, -1, block_m))  # [B, Hq, nQT, block_m]
    margin = s.reduce("Max", rise, [3])
    margin = s.op("Where", first, s.like(s.scalar(np.inf), margin), margin)
    skip = s.op("And", visited, s.op("Less", margin, log_lambda))  # [B, Hq, nQT]
    keep_rows = s.op("Expand", s.op("Unsqueeze", s.op("Not", skip), s.i64(3)), s.op("Shape", rise))
    keep_rows = s.op("Reshape", keep_rows, s.op("Shape", tile_max))
    updated = s.op("Where", keep_rows, s.op("Max", current, tile_max), current)
    log_lambda_out = s.op("Identity", log_lambda)
    return s.graph([updated, log_lambda_out, s.op("Identity", skip)], "skip_tile")
