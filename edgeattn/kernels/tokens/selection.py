"""Visual-token selection: top-k with ascending indices, HoloV per-chunk budgets, and the gather.

Semantics: ``edgeattn.TokenSelect`` modes "topk" and "regions" (``plugins/token_select/reference.py``
and its spec): kept candidates as ascending positions, every ordering breaking ties by the lower
position. Imports only triton.

Orderings use unique int64 keys: a float score maps to an int32 that orders like the float
(``bits ^ 0x7FFFFFFF`` for negatives; -0.0 is first made +0.0), shifted above the inverted position
so that equal scores order by position. Nothing sorts: a k-th largest key is found bit by bit
(radix select, one masked count per bit), and ascending positions come from a cumulative sum.

``token_topk_fwd`` — grid ``(B,)``: one row of N scores (``N_P2`` = N rounded up to a power of two);
    the kept positions are those with a key >= the k-th largest (exactly k), written in order.
``token_chunk_variance_fwd`` — grid ``(R, B)``: per chunk, HoloV's v_i, the (unbiased) variance of
    token i's cosine similarities to the other tokens of its chunk (norms, then row tiles of the
    chunk's Gram matrix on tensor cores, fp32 accumulation; cos = G_ij / (|z_i| |z_j|), within 1e-6
    of 1 snapped to 1 as ``DUPLICATE_SNAP`` of ``plugins/token_nodes.py``), and the token's rank by score
    inside its chunk (pairwise counts). Writes Var fp32 and Rank int32 ``[B, N]``.
``token_regions_fwd`` — grid ``(B,)``: s_i = a'_i + alpha·v_i·mean|a'|/mean|v| (a' =
    attention_scale·a, fp32), chunk weights = mean s (fp64), quotas ⌊k·c/Σc + 0.001⌋ capped by the
    chunk sizes, chunk ranks by weight. The reference's leftover rounds (one place per chunk per
    round, heaviest first) reduce to per-chunk budgets: a bisection over the number of whole
    rounds, then the partial round by chunk rank. A token is kept iff its rank in its chunk is
    below its chunk's budget. Writes Indices int64 ``[B, k]``.
``token_gather_fwd`` — grid ``(cdiv(rows, BLOCK_R), cdiv(D, BLOCK_D), B)``: the selected rows
    (after the ``out_prefix`` leading rows copied as they are) of Features into Out.

Parameter order follows TensorRT's AOT launch convention (inputs, scalars, outputs, constants);
the floats of regions (``alpha``, ``attention_scale``) are compiled in for TensorRT (``aot.py``).
"""

from __future__ import annotations

import triton
import triton.language as tl

DUPLICATE_SNAP: tl.constexpr = tl.constexpr(1e-6)
QUOTA_SLACK: tl.constexpr = tl.constexpr(1e-3)


@triton.jit
def _ordered_bits(x):
    """int32 that orders like the float32 ``x`` (-0.0 taken as +0.0), as int64."""
    bits = tl.where(x == 0.0, 0.0, x).to(tl.int32, bitcast=True)
    return tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits).to(tl.int64)


@triton.jit
def _kth_largest(key, k, NBITS: tl.constexpr):
    """The k-th largest of the unique keys (>= 0; -1 for padding) of a 1-D block, bit by bit
    (radix select: NBITS masked counts, no sort)."""
    t = tl.min(key, 0) * 0
    bit = tl.full([], 1 << (NBITS - 1), tl.int64)
    for _ in range(NBITS):
        cand = t | bit
        t = tl.where(tl.sum((key >= cand).to(tl.int32), 0) >= k, cand, t)
        bit = bit >> 1
    return t


@triton.jit(do_not_specialize=["n_tokens", "k"])
def token_topk_fwd(
    Scores,
    n_tokens, k,
    Indices,
    N_P2: tl.constexpr,
):  # fmt: skip
    """Scores fp32 ``[B, n_tokens]`` -> Indices int64 ``[B, k]``: the k best, ascending (n_tokens <= 2**14)."""
    off_b = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, N_P2)
    ok = offs < n_tokens
    s = tl.load(Scores + off_b * n_tokens + offs, mask=ok, other=0.0)
    # Unique keys >= 0: the score's order bits (32) above the inverted position (14 bits).
    key = ((_ordered_bits(s) + (1 << 31)) << 14) + ((1 << 14) - 1 - offs)
    key = tl.where(ok, key, -1)
    chosen = key >= _kth_largest(key, k, 46)
    slot = tl.cumsum(chosen.to(tl.int32), 0) - 1
    tl.store(Indices + off_b * k + slot, offs.to(tl.int64), mask=chosen)


@triton.jit(do_not_specialize=["n_tokens", "parts", "dim"])
def token_chunk_variance_fwd(
    Z, Scores,
    stride_zb, stride_zn,
    n_tokens, parts, dim,
    Var, Rank,
    CHUNK_P2: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, UPCAST_DOT: tl.constexpr = False,
):  # fmt: skip
    """Chunk ``program_id(0)`` of image ``program_id(1)``: Z ``[B, N, C]`` (last dim contiguous) and
    Scores fp32 ``[B, N]`` -> Var fp32 ``[B, N]`` and Rank int32 ``[B, N]`` (place of the token's
    score inside its chunk, descending, ties to the lower position)."""
    p = tl.program_id(0)
    off_b = tl.program_id(1).to(tl.int64)
    size = n_tokens // parts + (p < n_tokens % parts).to(tl.int32)
    start = p * (n_tokens // parts) + tl.minimum(p, n_tokens % parts)
    z_base = Z + off_b * stride_zb + start.to(tl.int64) * stride_zn
    offs_j = tl.arange(0, CHUNK_P2)
    offs_c = tl.arange(0, BLOCK_C)
    j_ok = offs_j < size
    a_j = tl.load(Scores + off_b * n_tokens + start + offs_j, mask=j_ok, other=0.0)
    # Norms of the chunk's tokens (F.normalize clamps them at 1e-12).
    sq = tl.zeros([CHUNK_P2], tl.float32)
    for c0 in range(0, dim, BLOCK_C):
        c_ok = (c0 + offs_c) < dim
        zj = tl.load(z_base + offs_j[:, None] * stride_zn + c0 + offs_c[None, :], mask=j_ok[:, None] & c_ok[None, :],
                     other=0.0).to(tl.float32)  # fmt: skip
        sq += tl.sum(zj * zj, 1)
    inv_j = 1.0 / tl.maximum(tl.sqrt(sq), 1e-12)
    count = (size - 1).to(tl.float32)
    offs_r = tl.arange(0, BLOCK_R)
    for r0 in range(0, size, BLOCK_R):
        rows = r0 + offs_r
        r_ok = rows < size
        others = j_ok[None, :] & (offs_j[None, :] != rows[:, None])
        # Rank by score inside the chunk.
        a_r = tl.load(Scores + off_b * n_tokens + start + rows, mask=r_ok, other=0.0)
        ahead = (a_j[None, :] > a_r[:, None]) | ((a_j[None, :] == a_r[:, None]) & (offs_j[None, :] < rows[:, None]))
        rank = tl.sum((others & ahead).to(tl.int32), 1)
        tl.store(Rank + off_b * n_tokens + start + rows, rank, mask=r_ok)
        # Cosine similarities to the chunk: a row tile of the Gram matrix, fp32 accumulation.
        gram = tl.zeros([BLOCK_R, CHUNK_P2], tl.float32)
        sq_r = tl.zeros([BLOCK_R], tl.float32)
        for c0 in range(0, dim, BLOCK_C):
            c_ok = (c0 + offs_c) < dim
            zr = tl.load(z_base + rows[:, None] * stride_zn + c0 + offs_c[None, :], mask=r_ok[:, None] & c_ok[None, :],
                         other=0.0)  # fmt: skip
            zj = tl.load(z_base + offs_j[:, None] * stride_zn + c0 + offs_c[None, :],
                         mask=j_ok[:, None] & c_ok[None, :], other=0.0)  # fmt: skip
            if UPCAST_DOT:
                gram = tl.dot(zr.to(tl.float32), tl.trans(zj.to(tl.float32)), gram, input_precision="ieee")
            else:
                gram = tl.dot(zr, tl.trans(zj), gram)
            zr32 = zr.to(tl.float32)
            sq_r += tl.sum(zr32 * zr32, 1)
        inv_r = 1.0 / tl.maximum(tl.sqrt(sq_r), 1e-12)
        cos = gram * inv_r[:, None] * inv_j[None, :]
        cos = tl.where(cos > 1.0 - DUPLICATE_SNAP, 1.0, cos)
        mean = tl.sum(tl.where(others, cos, 0.0), 1) / tl.maximum(count, 1.0)
        dev = tl.where(others, cos - mean[:, None], 0.0)
        var = tl.sum(dev * dev, 1) / tl.maximum(count - 1.0, 1.0)
        tl.store(Var + off_b * n_tokens + start + rows, var, mask=r_ok)


@triton.jit
def _chunk_of(n, n_tokens, parts):
    """Chunk of each position: ``parts`` contiguous chunks, the first ``n_tokens % parts`` one longer."""
    base = n_tokens // parts
    extra = n_tokens % parts
    boundary = extra * (base + 1)
    return tl.where(n < boundary, n // (base + 1), extra + (n - boundary) // tl.maximum(base, 1))


@triton.jit
def _leftover_picks(rounds, lo, hi):
    """Places chunk p gets in leftover rounds 0..rounds-1: the rounds in [lo_p, hi_p)."""
    return tl.maximum(tl.minimum(rounds, hi) - lo, 0)


@triton.jit(do_not_specialize=["n_tokens", "parts", "k"])
def token_regions_fwd(
    Scores, Var, Rank,
    alpha, attention_scale,
    n_tokens, parts, k,
    Indices,
    N_P2: tl.constexpr, PARTS_P2: tl.constexpr,
):  # fmt: skip
    """HoloV selection of one image: Scores (the attention a), Var, Rank ``[B, N]`` -> Indices int64
    ``[B, k]`` ascending. ``N_P2`` >= N, ``PARTS_P2`` >= parts (powers of two)."""
    off_b = tl.program_id(0).to(tl.int64)
    n = tl.arange(0, N_P2)
    ok = n < n_tokens
    a = tl.load(Scores + off_b * n_tokens + n, mask=ok, other=0.0)
    v = tl.load(Var + off_b * n_tokens + n, mask=ok, other=0.0)
    rank = tl.load(Rank + off_b * n_tokens + n, mask=ok, other=0)
    scaled = attention_scale * a
    ratio = (tl.sum(tl.abs(scaled), 0) / n_tokens) / tl.maximum(tl.sum(tl.abs(v), 0) / n_tokens, 1e-12)
    s = (scaled + alpha * v * ratio).to(tl.float64)
    cid = _chunk_of(n, n_tokens, parts)

    # Chunk weights (mean s, fp64), quotas, ranks (heaviest first, ties to the lower chunk).
    pp = tl.arange(0, PARTS_P2)
    p_ok = pp < parts
    sizes = tl.where(p_ok, n_tokens // parts + (pp < n_tokens % parts).to(tl.int32), 0)
    weight = tl.zeros([PARTS_P2], tl.float64)
    for p in range(parts):
        weight = tl.where(pp == p, tl.sum(tl.where(ok & (cid == p), s, 0.0), 0), weight)
    weight = tl.where(p_ok, weight / tl.maximum(sizes, 1).to(tl.float64), 0.0)
    total = tl.sum(weight, 0)
    flat = total <= 0.0
    weight = tl.where(flat, tl.where(p_ok, 1.0, 0.0).to(tl.float64), weight)
    total = tl.where(flat, parts.to(tl.float64), total)
    raw = tl.floor(k * weight / total + QUOTA_SLACK)
    quota = tl.where(p_ok, tl.minimum(tl.maximum(raw, -(1 << 30)), sizes.to(tl.float64)).to(tl.int32), 0)
    heavier = ((weight[None, :] > weight[:, None]) | ((weight[None, :] == weight[:, None]) & (pp[None, :] < pp[:, None])))
    chunk_rank = tl.sum((heavier & p_ok[None, :]).to(tl.int32), 1)

    # The reference ranks a chunk's r-th best token at "behind" = r - quota: behind < 0 is a quota
    # place, the others go round by round (behind 0, 1, ...), heaviest chunk first in a round.
    # Chunk p takes part in the rounds [lo_p, hi_p); find the last round that fits in k.
    quota_total = tl.sum(tl.maximum(quota, 0), 0)
    left = k - quota_total
    lo = tl.maximum(-quota, 0)
    hi = tl.where(p_ok, sizes - quota, 0)
    r_lo = n_tokens * 0  # loop-carried values start as tensors
    r_hi = n_tokens + (1 << 30)  # picks(r_lo) <= left < picks(r_hi) unless every place fits
    for _ in range(32):
        mid = (r_lo + r_hi) // 2
        fits = tl.sum(_leftover_picks(mid, lo, hi), 0) <= left
        r_lo = tl.where(fits, mid, r_lo)
        r_hi = tl.where(fits, r_hi, mid)
    rounds = r_lo
    rest = left - tl.sum(_leftover_picks(rounds, lo, hi), 0)
    in_round = p_ok & (rounds >= lo) & (rounds < hi)
    before = tl.sum((in_round[None, :] & (chunk_rank[None, :] < chunk_rank[:, None])).to(tl.int32), 1)
    budget = tl.maximum(quota, 0) + _leftover_picks(rounds, lo, hi) + (in_round & (before < rest)).to(tl.int32)

    # Per token: kept iff its rank in the chunk is below the chunk's budget. With more quota places
    # than k (negative chunk weights), the reference keeps the quota places of lowest position.
    b_tok = tl.zeros([N_P2], tl.int32)
    q_tok = tl.zeros([N_P2], tl.int32)
    for p in range(parts):
        b_tok = tl.where(cid == p, tl.sum(tl.where(pp == p, budget, 0), 0), b_tok)
        q_tok = tl.where(cid == p, tl.sum(tl.where(pp == p, quota, 0), 0), q_tok)
    quota_place = ok & (rank < q_tok)
    over = quota_total > k
    chosen = tl.where(over, quota_place & (tl.cumsum(quota_place.to(tl.int32), 0) <= k), ok & (rank < b_tok))
    slot = tl.cumsum(chosen.to(tl.int32), 0) - 1
    tl.store(Indices + off_b * k + slot, n.to(tl.int64), mask=chosen)


@triton.jit(do_not_specialize=["prefix", "k", "out_prefix", "dim"])
def token_gather_fwd(
    Features, Indices,
    stride_fb, stride_fn, stride_ob, stride_on,
    prefix, k, out_prefix, dim,
    Out,
    BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """Out row r: Features row r for r < out_prefix, else row prefix + Indices[b, r - out_prefix]."""
    pid_r = tl.program_id(0)
    pid_d = tl.program_id(1)
    off_b = tl.program_id(2).to(tl.int64)
    rows = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    r_ok = rows < out_prefix + k
    picked = tl.load(Indices + off_b * k + (rows - out_prefix), mask=r_ok & (rows >= out_prefix), other=0)
    src = tl.where(rows < out_prefix, rows.to(tl.int64), prefix + picked)
    ok = r_ok[:, None] & (cols[None, :] < dim)
    x = tl.load(Features + off_b * stride_fb + src[:, None] * stride_fn + cols[None, :], mask=ok)
    tl.store(Out + off_b * stride_ob + rows[:, None].to(tl.int64) * stride_on + cols[None, :], x, mask=ok)
