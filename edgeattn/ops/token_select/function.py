"""The standard-op function body of edgeattn.TokenSelect.

Specialised on the mode, on whether k comes from the attribute or the `num_tokens` input, on whether
`keys` is given and on `keep_prefix`; the numbers (k, prefix, region count, alpha, ...) come from the
node's attributes by reference. Every ordering is a TopK, whose ties go to the lower position, and the
kept positions are sorted ascending with one more TopK. The greedy rules are ONNX Loops whose carried
values keep their shape (TensorRT's loops require it): the de-duplication loop carries a fixed-length
residual list with its live count, the max-min loop one distance row that marks the kept tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from edgeattn.ops.bodies import FLOAT, INT64, declared_attributes
from edgeattn.ops.spec import DOMAIN, CallFacts, Target
from edgeattn.ops.token_nodes import TokenNodes
from edgeattn.ops.token_select.reference import QUOTA_SLACK
from edgeattn.ops.token_select.spec import ATTRIBUTES, NAME

DOUBLE = ir.DataType.DOUBLE
_END = 1 << 62


@dataclass(frozen=True)
class Variant:
    opset: int
    mode: str
    k_input: bool
    keys: bool
    keep_prefix: bool

    @property
    def key(self) -> str:
        flags = "".join(f for f, on in (("n", self.k_input), ("k", self.keys), ("p", self.keep_prefix)) if on)
        return self.mode + (f"_{flags}" if flags else "")


def variant_of(call: CallFacts) -> Variant:
    inputs = call.inputs
    present = [i < len(inputs) and inputs[i].present for i in range(4)]
    return Variant(call.opset, str(call.attributes["mode"]), present[2], present[3],
                   bool(int(call.attributes["keep_prefix"])))


def function_key(call: CallFacts, target: Target) -> str:
    return variant_of(call).key


def build_function(call: CallFacts, target: Target, overload: str) -> ir.Function:
    return build_body(variant_of(call), overload)


def build_body(variant: Variant, overload: str) -> ir.Function:
    body = TokenNodes(variant.opset)
    formal = {name: body.input(name) for name in ("scores", "features", "num_tokens", "keys")}
    scores = body.to_float(formal["scores"])
    features = formal["features"]
    prefix = body.vec(body.ref_int("prefix"))
    candidates = body.op("Slice", features, prefix, body.i64(_END), body.i64(1))
    if variant.k_input:
        k = body.op("Reshape", formal["num_tokens"], body.const(np.zeros(0, np.int64)))
    else:
        k = body.ref_int("k")
    keys = body.to_float(formal["keys"] if variant.keys else candidates)
    if variant.mode == "topk":
        _, chosen = body.stable_order(scores, k)
    elif variant.mode == "regions":
        chosen = _regions(body, scores, keys, k)
    elif variant.mode == "diversity":
        chosen = _diversity(body, scores, keys, k)
    else:
        chosen = _maxmin(body, scores, keys, k)
    kept = body.ascending(chosen)
    selected = body.gather_rows(candidates, kept)
    if variant.keep_prefix:
        head = body.op("Slice", features, body.i64(0), prefix, body.i64(1))
        selected = body.op("Concat", head, selected, axis=1)
    return body.function(DOMAIN, NAME, overload, {"selected": selected, "kept_indices": kept},
                         declared_attributes(ATTRIBUTES), f"edgeattn.TokenSelect body {variant.key}")


def _pairwise_rank(body: TokenNodes, values: ir.Value, positions: ir.Value, within: ir.Value | None) -> ir.Value:
    """For values [B, M]: how many entries come before each one in decreasing order (ties: lower position
    first), counting only entries where `within` [M, M] is true. Returns [B, M] double."""
    row, col = body.unsqueeze(values, 2), body.unsqueeze(values, 1)  # [B, M, 1], [B, 1, M]
    greater = body.op("Greater", col, row)  # [b, i, l]: value_l > value_i
    lower = body.op("Less", body.unsqueeze(positions, 0), body.unsqueeze(positions, 1))  # [i, l]: l < i
    ahead = body.op("Or", greater, body.op("And", body.op("Equal", col, row), lower))
    if within is not None:
        ahead = body.op("And", ahead, within)
    return body.reduce("Sum", body.cast(ahead, DOUBLE), [-1])


def _regions(body: TokenNodes, scores: ir.Value, keys: ir.Value, k: ir.Value) -> ir.Value:
    """HoloV (see the spec): quota seats first, leftover seats round by round, heaviest chunk first."""
    n = body.dim(scores, 1)
    parts = body.op("Min", body.cast(body.ref_int("regions"), INT64), n)
    base, extra = body.op("Div", n, parts), body.op("Mod", n, parts)
    pos = body.arange(n)
    boundary = body.op("Mul", extra, body.op("Add", base, body.const(np.int64(1))))
    long_chunk = body.op("Div", pos, body.op("Add", base, body.const(np.int64(1))))
    short_chunk = body.op("Add", extra, body.op("Div", body.op("Sub", pos, boundary), base))
    cid = body.op("Where", body.op("Less", pos, boundary), long_chunk, short_chunk)  # [N]
    same = body.op("Equal", body.unsqueeze(cid, 1), body.unsqueeze(cid, 0))  # [N, N]
    others = body.cast(body.op("And", same, body.op("Not", body.op("Equal", body.unsqueeze(pos, 1),
                                                                   body.unsqueeze(pos, 0)))), FLOAT)
    variance = _chunk_variance(body, body.cosine(keys), others)
    scaled = body.op("Mul", scores, body.ref_float("attention_scale"))
    ratio = body.op("Div", body.reduce("Mean", body.op("Abs", scaled), [-1], keepdims=1),
                    body.op("Max", body.reduce("Mean", body.op("Abs", variance), [-1], keepdims=1),
                            body.const(np.float32(1e-12))))
    token_score = body.op("Add", scaled, body.op("Mul", body.op("Mul", variance, body.ref_float("alpha")), ratio))
    onehot = body.cast(body.op("Equal", body.unsqueeze(cid, 1), body.unsqueeze(body.arange(parts), 0)),
                       DOUBLE)  # [N, R]
    sizes = body.reduce("Sum", onehot, [0])  # [R]
    weight = body.op("Div", body.op("MatMul", body.cast(token_score, DOUBLE), onehot), sizes)  # [B, R]
    total = body.reduce("Sum", weight, [-1], keepdims=1)
    positive = body.op("Greater", total, body.const(np.float64(0)))
    weight = body.op("Where", positive, weight, body.const(np.float64(1)))
    total = body.op("Where", positive, total, body.cast(parts, DOUBLE))
    share = body.op("Div", body.op("Mul", body.cast(k, DOUBLE), weight), total)
    quota = body.op("Min", body.op("Floor", body.op("Add", share, body.const(np.float64(QUOTA_SLACK)))), sizes)
    chunk_rank = _pairwise_rank(body, weight, body.arange(parts), None)  # [B, R]
    seat = _pairwise_rank(body, scores, pos, same)  # rank of each token inside its chunk, [B, N]
    behind = body.op("Sub", seat, body.op("Gather", quota, cid, axis=1))
    later = body.op("Add", body.op("Mul", behind, body.cast(parts, DOUBLE)),
                    body.op("Gather", chunk_rank, cid, axis=1))
    priority = body.op("Where", body.op("Less", behind, body.const(np.float64(0))), body.const(np.float64(1)),
                       body.op("Neg", later))
    _, chosen = body.stable_order(priority, k)
    return chosen


def _chunk_variance(body: TokenNodes, cos: ir.Value, others: ir.Value) -> ir.Value:
    """Unbiased variance of each token's cosine similarities to the other tokens of its chunk, [B, N]."""
    count = body.reduce("Sum", others, [-1])  # [N]
    mean = body.op("Div", body.reduce("Sum", body.op("Mul", cos, others), [-1]),
                   body.op("Max", count, body.const(np.float32(1))))
    deviation = body.op("Mul", body.op("Sub", cos, body.unsqueeze(mean, 2)), others)
    squares = body.reduce("Sum", body.op("Mul", deviation, deviation), [-1])
    return body.op("Div", squares, body.op("Max", body.op("Sub", count, body.const(np.float32(1))),
                                           body.const(np.float32(1))))


def _diversity(body: TokenNodes, scores: ir.Value, keys: ir.Value, k: ir.Value) -> ir.Value:
    """VisPruner / FlashVLM: top ⌊k·ratio⌋ by score, then bipartite de-duplication of the rest.

    The residual tokens are held in a list of fixed length (TensorRT's loops need carried values of fixed
    shape) whose first `size` entries are the live ones: a round puts the surviving even entries first (by
    decreasing similarity to their nearest odd entry, as the reference orders them), then the odd ones,
    then the rest, and shrinks `size`."""
    n = body.dim(scores, 1)
    important = body.cast(body.op("Floor", body.op("Mul", body.cast(k, FLOAT), body.ref_float("important_ratio"))),
                          INT64)
    diverse = body.op("Sub", k, important)
    _, order = body.stable_order(scores, n)
    kept = body.op("Slice", order, body.i64(0), body.vec(important), body.i64(1))
    residual = body.op("Slice", order, body.vec(important), body.i64(_END), body.i64(1))
    step = body.cast(body.ref_int("dedup_step"), INT64)
    length = body.dim(residual, 1)
    places = body.arange(length)  # [R]
    odd_place = body.op("Equal", body.op("Mod", places, body.const(np.int64(2))), body.const(np.int64(1)))
    half = body.to_float(body.op("Div", places, body.const(np.int64(2))))
    rest = body.op("Add", body.to_float(places), body.to_float(length))  # after every live entry, in place order
    earlier = body.op("Less", body.unsqueeze(places, 0), body.unsqueeze(places, 1))  # [p, j]: j < p

    def dedup(inner: TokenNodes, _: ir.Value, carried: list[ir.Value]) -> tuple[list[ir.Value], ir.Value]:
        current, size = carried
        drop = inner.op("Min", step, inner.op("Sub", size, diverse))
        live = inner.op("Less", places, size)
        evens = inner.op("And", live, inner.op("Not", odd_place))
        odds = inner.op("And", live, odd_place)
        similar = inner.cosine(inner.gather_rows(keys, current))  # [B, R, R]
        best = inner.reduce("Max", inner.where_inf(odds, similar), [-1])  # [B, R]: nearest odd entry
        row, col = inner.unsqueeze(best, 2), inner.unsqueeze(best, 1)
        ahead = inner.op("Or", inner.op("Greater", col, row), inner.op("And", inner.op("Equal", col, row), earlier))
        rank = inner.reduce("Sum", inner.cast(inner.op("And", ahead, evens), FLOAT), [-1])  # among the evens
        dropped = inner.op("Min", drop, inner.op("Div", inner.op("Add", size, inner.const(np.int64(1))),
                                                 inner.const(np.int64(2))))
        surviving_evens = inner.op("Sub", inner.op("Div", inner.op("Add", size, inner.const(np.int64(1))),
                                                   inner.const(np.int64(2))), dropped)
        drop_float = inner.to_float(drop)
        survives = inner.op("And", evens, inner.op("GreaterOrEqual", rank, drop_float))
        odd_key = inner.op("Add", inner.to_float(surviving_evens), half)
        key = inner.op("Where", survives, inner.op("Sub", rank, drop_float), inner.op("Where", odds, odd_key, rest))
        _, moved = inner.stable_order(key, length, largest=0)
        remaining = inner.op("Sub", size, dropped)
        return [inner.op("GatherElements", current, moved, axis=1), remaining], inner.op("Greater", remaining, diverse)

    # Rounds drop min(dedup_step, excess) even tokens, or all of them when fewer: loop while in excess.
    more = body.op("Greater", length, diverse)
    residual, size = body.loop(None, [residual, length], dedup, condition=more,
                               types=[(ir.DataType.INT64, 2), (ir.DataType.INT64, 0)])
    residual = body.op("Slice", residual, body.i64(0), body.vec(size), body.i64(1))
    return body.op("Concat", kept, residual, axis=1)


def _maxmin(body: TokenNodes, scores: ir.Value, keys: ir.Value, k: ir.Value) -> ir.Value:
    """ZOO-Prune SADS: greedy argmax of minmax(score) x min cosine distance to the kept tokens.

    The loop carries one tensor of fixed shape, the distance of each token to the nearest kept one, with -1
    at the kept tokens (distances are >= 0), and the picks are read back from it after the loop: TensorRT's
    loops need carried values of fixed shape, and TensorRT-RTX 1.7 fails to compile a loop with a carried
    value nothing reads afterwards."""
    low = body.reduce("Min", scores, [-1], keepdims=1)
    high = body.reduce("Max", scores, [-1], keepdims=1)
    scaled = body.op("Div", body.op("Sub", scores, low),
                     body.op("Add", body.op("Sub", high, low), body.const(np.float32(1e-8))))
    weight = body.op("Where", body.op("Greater", high, low), scaled, body.const(np.float32(1)))
    distance = body.op("Sub", body.const(np.float32(1)), body.cosine(keys))  # [B, N, N]
    pos = body.unsqueeze(body.arange(body.dim(scores, 1)), 0)  # [1, N]
    kept = body.const(np.float32(-1))

    def keep(nodes: TokenNodes, near: ir.Value, index: ir.Value) -> ir.Value:
        return nodes.op("Where", nodes.op("Equal", pos, index), kept, near)

    first = body.op("ArgMax", weight, axis=1, keepdims=1)  # [B, 1]
    nearest = keep(body, _distance_row(body, distance, first), first)

    def pick(inner: TokenNodes, _: ir.Value, carried: list[ir.Value]) -> tuple[list[ir.Value], None]:
        (near,) = carried
        gain = inner.op("Where", inner.op("Less", near, inner.const(np.float32(0))),
                        inner.const(np.float32(-np.inf)), inner.op("Mul", near, weight))
        index = inner.op("ArgMax", gain, axis=1, keepdims=1)
        return [keep(inner, inner.op("Min", near, _distance_row(inner, distance, index)), index)], None

    trips = body.op("Sub", k, body.const(np.int64(1)))
    (near,) = body.loop(trips, [nearest], pick, types=[(ir.DataType.FLOAT, 2)])
    # the kept tokens, by ascending position: taken·(N - position) is positive exactly at them
    taken = body.cast(body.op("Less", near, body.const(np.float32(0))), FLOAT)
    _, chosen = body.stable_order(body.op("Mul", taken, body.to_float(body.op("Sub", body.dim(scores, 1), pos))), k)
    return chosen


def _distance_row(body: TokenNodes, distance: ir.Value, index: ir.Value) -> ir.Value:
    """distance[b, index[b], :] for distance [B, N, N] and index [B, 1] -> [B, N]."""
    shape = body.op("Concat", body.op("Shape", index), body.dims(distance, -1), axis=0)
    rows = body.op("GatherElements", distance, body.op("Expand", body.unsqueeze(index, 2), shape), axis=1)
    return body.squeeze(rows, 1)
