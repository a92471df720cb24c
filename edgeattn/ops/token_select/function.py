"""The standard-op function body of edgeattn.TokenSelect.

Specialised on the mode, on whether k comes from the attribute or the `num_tokens` input, on whether
`keys` is given and on `keep_prefix`; the numbers (k, prefix, region count, alpha, ...) come from the
node's attributes by reference. Every ordering is a TopK, whose ties go to the lower position, and the
kept positions are sorted ascending with one more TopK. The greedy rules are ONNX Loops: the
de-duplication loop carries the shrinking residual list, the max-min loop the growing kept list.
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
    """VisPruner / FlashVLM: top ⌊k·ratio⌋ by score, then bipartite de-duplication of the rest."""
    n = body.dim(scores, 1)
    important = body.cast(body.op("Floor", body.op("Mul", body.cast(k, FLOAT), body.ref_float("important_ratio"))),
                          INT64)
    diverse = body.op("Sub", k, important)
    _, order = body.stable_order(scores, n)
    kept = body.op("Slice", order, body.i64(0), body.vec(important), body.i64(1))
    residual = body.op("Slice", order, body.vec(important), body.i64(_END), body.i64(1))
    step = body.cast(body.ref_int("dedup_step"), INT64)

    def dedup(inner: TokenNodes, _: ir.Value, carried: list[ir.Value]) -> tuple[list[ir.Value], ir.Value]:
        current = carried[0]
        size = inner.dim(current, 1)
        drop = inner.op("Min", step, inner.op("Sub", size, diverse))
        even = inner.op("Slice", current, inner.i64(0), inner.i64(_END), inner.i64(1), inner.i64(2))
        odd = inner.op("Slice", current, inner.i64(1), inner.i64(_END), inner.i64(1), inner.i64(2))
        similar = inner.cosine(inner.gather_rows(keys, even), inner.gather_rows(keys, odd))
        best = inner.reduce("Max", similar, [-1])
        _, by_similarity = inner.stable_order(best, inner.dim(even, 1))
        survivors = inner.op("Slice", by_similarity, inner.vec(drop), inner.i64(_END), inner.i64(1))
        kept_even = inner.op("GatherElements", even, survivors, axis=1)
        remaining = inner.op("Concat", kept_even, odd, axis=1)
        return [remaining], inner.op("Greater", inner.dim(remaining, 1), diverse)

    # Rounds drop min(dedup_step, excess) even tokens, or all of them when fewer: loop while in excess.
    more = body.op("Greater", body.dim(residual, 1), diverse)
    (residual,) = body.loop(None, [residual], dedup, condition=more, types=[(ir.DataType.INT64, 2)])
    return body.op("Concat", kept, residual, axis=1)


def _maxmin(body: TokenNodes, scores: ir.Value, keys: ir.Value, k: ir.Value) -> ir.Value:
    """ZOO-Prune SADS: greedy argmax of minmax(score) x min cosine distance to the kept tokens."""
    low = body.reduce("Min", scores, [-1], keepdims=1)
    high = body.reduce("Max", scores, [-1], keepdims=1)
    scaled = body.op("Div", body.op("Sub", scores, low),
                     body.op("Add", body.op("Sub", high, low), body.const(np.float32(1e-8))))
    weight = body.op("Where", body.op("Greater", high, low), scaled, body.const(np.float32(1)))
    distance = body.op("Sub", body.const(np.float32(1)), body.cosine(keys))  # [B, N, N]
    pos = body.arange(body.dim(scores, 1))
    first = body.op("ArgMax", weight, axis=1, keepdims=1)  # [B, 1]
    nearest = _distance_row(body, distance, first)
    taken = body.cast(body.op("Equal", body.unsqueeze(pos, 0), first), FLOAT)

    def pick(inner: TokenNodes, _: ir.Value, carried: list[ir.Value]) -> tuple[list[ir.Value], None]:
        near, mask, chosen = carried
        gain = inner.op("Mul", near, weight)
        gain = inner.op("Where", inner.op("Greater", mask, inner.const(np.float32(0))),
                        inner.const(np.float32(-np.inf)), gain)
        index = inner.op("ArgMax", gain, axis=1, keepdims=1)
        near = inner.op("Min", near, _distance_row(inner, distance, index))
        mask = inner.op("Max", mask, inner.cast(inner.op("Equal", inner.unsqueeze(pos, 0), index), FLOAT))
        return [near, mask, inner.op("Concat", chosen, index, axis=1)], None

    trips = body.op("Sub", k, body.const(np.int64(1)))
    carried = [(ir.DataType.FLOAT, 2), (ir.DataType.FLOAT, 2), (ir.DataType.INT64, 2)]
    _, _, chosen = body.loop(trips, [nearest, taken, first], pick, types=carried)
    return chosen


def _distance_row(body: TokenNodes, distance: ir.Value, index: ir.Value) -> ir.Value:
    """distance[b, index[b], :] for distance [B, N, N] and index [B, 1] -> [B, N]."""
    shape = body.op("Concat", body.op("Shape", index), body.dims(distance, -1), axis=0)
    rows = body.op("GatherElements", distance, body.op("Expand", body.unsqueeze(index, 2), shape), axis=1)
    return body.squeeze(rows, 1)
