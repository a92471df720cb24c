"""Triton kernels for ``edgeattn.SkipSoftmaxAttention`` (BLASST skip-softmax flash attention).

The tile walk, the skip rule and the tile counts are the ones of ``reference.py`` (read its
docstring first); this file imports only triton so that GPU scripts can load it on a bare machine. Whether its
kernels are compiled or interpreted is fixed by ``TRITON_INTERPRET`` when triton is first imported.

``skip_softmax_attn_fwd`` — one program per (query tile, batch x query head, KV split):
    Q tile -> registers once; for each visited key tile: K tile -> QK^T (fp32 accumulate) -> tile
    row max -> skip decision; a processed tile loads V (unless already prefetched), updates the
    online softmax in the exp2 domain and accumulates P @ V in fp32; a skipped tile does nothing
    else. With one split it writes the normalised output in the output dtype (prefill); with
    several (decode, flash-decoding) it writes each split's normalised fp32 output and its
    log-sum-exp, and ``skip_softmax_merge_splits`` combines them.
    The key tiles of a (query tile, split) run in two loops: first the tiles that need no mask
    (inside the key length and, when causal, wholly below the diagonal for every row), then the
    tail/diagonal tiles with the mask, so the common tile pays for no compares.
    ``SKIP_V_LOAD`` puts the V load inside the processed branch (a skipped tile never reads V, which
    is what saves bandwidth in decode); without it V is loaded with K, where the software pipeline
    can prefetch it (prefill is compute-bound and the skip saves the exponentials and P @ V).

Parameter order follows TensorRT's AOT launch convention: input pointers, scalars, output pointers,
then compile-time constants. The two floats (``sm_scale``, ``log2_scale_factor``) are runtime
arguments for torch callers and compiled in as constants for TensorRT (see ``aot.py``).
"""

from __future__ import annotations

import triton
import triton.language as tl

LOG2E: tl.constexpr = tl.constexpr(1.4426950408889634)
LN2: tl.constexpr = tl.constexpr(0.6931471805599453)


@triton.jit
def _load_rows(ptrs, rows, n_rows, MASKED: tl.constexpr):
    # Rows at or past n_rows (the key tail) read as 0; their scores are masked to -inf anyway.
    if MASKED:
        return tl.load(ptrs, mask=rows[:, None] < n_rows, other=0.0)
    else:
        return tl.load(ptrs)


@triton.jit
def _online_softmax_update(acc, l_i, m_i, qk, m_tile, v):
    # qk and m are in log2 units (scores * sm_scale * log2 e). Rows without any valid key so far
    # keep m = -inf; exponents use 0 in its place so that exp2(-inf - (-inf)) never makes NaN.
    m_new = tl.maximum(m_i, m_tile)
    m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
    p = tl.math.exp2(qk - m_use[:, None])
    alpha = tl.math.exp2(m_i - m_use)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None]
    acc = tl.dot(p.to(v.dtype), v, acc)
    return acc, l_i, m_new


@triton.jit
def _attend_key_tiles(
    acc, l_i, m_i, n_skip,
    q, k_base, v_base, stride_kn, stride_vn,
    offs_n, offs_d, row_pos, row_pad,
    kv_len, qk_scale, log2_lambda,
    tile_lo, tile_hi, first_tile,
    BLOCK_N: tl.constexpr, MASKED: tl.constexpr, CAUSAL: tl.constexpr,
    USE_SKIP: tl.constexpr, SKIP_V_LOAD: tl.constexpr,
):  # fmt: skip
    for j in range(tile_lo, tile_hi):
        cols = j * BLOCK_N + offs_n
        k = _load_rows(k_base + cols[:, None] * stride_kn + offs_d[None, :], cols, kv_len, MASKED)
        v_ptrs = v_base + cols[:, None] * stride_vn + offs_d[None, :]
        if not SKIP_V_LOAD:
            v = _load_rows(v_ptrs, cols, kv_len, MASKED)
        qk = tl.dot(q, tl.trans(k)) * qk_scale
        if MASKED:
            valid = cols[None, :] < kv_len
            if CAUSAL:
                valid = valid & (cols[None, :] <= row_pos[:, None])
            qk = tl.where(valid, qk, float("-inf"))
        m_tile = tl.max(qk, 1)
        if USE_SKIP:
            # A row agrees to skip when the tile cannot raise its softmax mass above lambda:
            # m~ - m < log2(lambda) (log2 units). Rows without a valid key here, and padding rows
            # past q_len, always agree. The first tile of the split is never skipped.
            agree = (m_tile < m_i + log2_lambda) | (m_tile == float("-inf")) | row_pad
            n_disagree = tl.sum(tl.where(agree, 0, 1), 0)
            if (n_disagree > 0) | (j == first_tile):
                if SKIP_V_LOAD:
                    v = _load_rows(v_ptrs, cols, kv_len, MASKED)
                acc, l_i, m_i = _online_softmax_update(acc, l_i, m_i, qk, m_tile, v)
            else:
                n_skip += 1
        else:
            if SKIP_V_LOAD:
                v = _load_rows(v_ptrs, cols, kv_len, MASKED)
            acc, l_i, m_i = _online_softmax_update(acc, l_i, m_i, qk, m_tile, v)
    return acc, l_i, m_i, n_skip


@triton.jit(do_not_specialize=["q_len", "kv_len"])
def skip_softmax_attn_fwd(
    Q, K, V,
    sm_scale, log2_scale_factor,
    stride_qb, stride_qh, stride_qm,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_ob, stride_oh, stride_os, stride_om,
    num_q_heads, kv_group, q_len, kv_len, tiles_per_split,
    Out, Lse, Counts,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr, USE_SKIP: tl.constexpr, SKIP_V_LOAD: tl.constexpr,
    STORE_LSE: tl.constexpr, COUNT_SKIPS: tl.constexpr,
):  # fmt: skip
    """Grid ``(cdiv(q_len, BLOCK_M), B * num_q_heads, n_splits)``.

    Q ``[B, Hq, q_len, HEAD_DIM]``, K/V ``[B, Hq / kv_group, kv_len, HEAD_DIM]`` (last dim
    contiguous, any other strides). Out: ``[B, Hq, q_len, HEAD_DIM]`` in the output dtype when
    ``n_splits == 1``; otherwise fp32 partials ``[B, Hq, n_splits, q_len, HEAD_DIM]`` (split stride
    ``stride_os``). Lse (natural log, fp32) ``[B * Hq, n_splits, q_len]``; Counts (int32)
    ``[B * Hq, n_splits, n_query_tiles, 2]`` = (tiles skipped, tiles visited).
    """
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    split = tl.program_id(2)
    n_q_tiles = tl.num_programs(0)
    n_splits = tl.num_programs(2)
    if CAUSAL:
        start_m = n_q_tiles - 1 - pid_m  # longest causal rows first: better tail balance
    else:
        start_m = pid_m
    off_b = (pid_bh // num_q_heads).to(tl.int64)
    off_h = pid_bh % num_q_heads
    off_kvh = (off_h // kv_group).to(tl.int64)
    q_base = Q + off_b * stride_qb + off_h.to(tl.int64) * stride_qh
    k_base = K + off_b * stride_kb + off_kvh * stride_kh
    v_base = V + off_b * stride_vb + off_kvh * stride_vh

    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    row_pad = offs_m >= q_len
    # Q tile stays in registers for the whole walk; padding rows read as 0.
    q = tl.load(q_base + offs_m[:, None] * stride_qm + offs_d[None, :], mask=offs_m[:, None] < q_len, other=0.0)
    qk_scale = sm_scale * LOG2E
    if USE_SKIP:
        log2_lambda = log2_scale_factor - tl.log2(kv_len.to(tl.float32))
    else:
        log2_lambda = 0.0

    # Key tiles of this split, cut at the causal frontier of the tile's last row.
    first_row_pos = kv_len - q_len + start_m * BLOCK_M
    row_pos = first_row_pos + tl.arange(0, BLOCK_M)
    tile_lo = split * tiles_per_split
    tile_hi = tl.minimum(tile_lo + tiles_per_split, tl.cdiv(kv_len, BLOCK_N))
    unmasked_hi = kv_len // BLOCK_N
    if CAUSAL:
        last_pos = kv_len - q_len + tl.minimum((start_m + 1) * BLOCK_M, q_len) - 1
        tile_hi = tl.minimum(tile_hi, tl.cdiv(tl.maximum(last_pos + 1, 0), BLOCK_N))
        unmasked_hi = tl.minimum(unmasked_hi, tl.maximum(first_row_pos + 1, 0) // BLOCK_N)
    mid = tl.minimum(tl.maximum(unmasked_hi, tile_lo), tile_hi)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    n_skip = tl.zeros([], tl.int32)
    acc, l_i, m_i, n_skip = _attend_key_tiles(
        acc, l_i, m_i, n_skip, q, k_base, v_base, stride_kn, stride_vn, offs_n, offs_d, row_pos, row_pad,
        kv_len, qk_scale, log2_lambda, tile_lo, mid, tile_lo,
        BLOCK_N, False, CAUSAL, USE_SKIP, SKIP_V_LOAD,
    )  # fmt: skip
    acc, l_i, m_i, n_skip = _attend_key_tiles(
        acc, l_i, m_i, n_skip, q, k_base, v_base, stride_kn, stride_vn, offs_n, offs_d, row_pos, row_pad,
        kv_len, qk_scale, log2_lambda, mid, tile_hi, tile_lo,
        BLOCK_N, True, CAUSAL, USE_SKIP, SKIP_V_LOAD,
    )  # fmt: skip

    # Rows that processed no key (fully masked, or an empty split) write 0 and lse = -inf.
    l_use = tl.where(l_i == 0.0, 1.0, l_i)
    out = acc / l_use[:, None]
    o_base = Out + off_b * stride_ob + off_h.to(tl.int64) * stride_oh + split.to(tl.int64) * stride_os
    o_ptrs = o_base + offs_m[:, None] * stride_om + offs_d[None, :]
    tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=offs_m[:, None] < q_len)
    if STORE_LSE:
        lse = tl.where(l_i == 0.0, float("-inf"), (m_i + tl.math.log2(l_use)) * LN2)
        lse_off = (pid_bh.to(tl.int64) * n_splits + split) * q_len + offs_m
        tl.store(Lse + lse_off, lse, mask=offs_m < q_len)
    if COUNT_SKIPS:
        c_off = ((pid_bh * n_splits + split) * n_q_tiles + start_m) * 2
        tl.store(Counts + c_off, n_skip)
        tl.store(Counts + c_off + 1, tl.maximum(tile_hi - tile_lo, 0))


@triton.jit(do_not_specialize=["q_len", "num_splits"])
def skip_softmax_merge_splits(
    Partial, PartialLse,
    num_q_heads, q_len, num_splits,
    stride_ob, stride_oh, stride_om,
    Out,
    HEAD_DIM: tl.constexpr, BLOCK_S: tl.constexpr,
):  # fmt: skip
    """Grid ``(q_len, B * num_q_heads)``: log-sum-exp merge of the per-split partials.

    Partial fp32 ``[B * Hq, num_splits, q_len, HEAD_DIM]`` (each split's normalised output),
    PartialLse fp32 ``[B * Hq, num_splits, q_len]``; split ``s`` is weighted by
    ``exp(lse_s - max lse)``; empty splits (lse = -inf) weigh 0, a row with none left writes 0.
    """
    row = tl.program_id(0)
    pid_bh = tl.program_id(1)
    offs_d = tl.arange(0, HEAD_DIM)
    m = tl.full([], float("-inf"), tl.float32)
    den = tl.zeros([], tl.float32)
    acc = tl.zeros([HEAD_DIM], tl.float32)
    for s0 in range(0, num_splits, BLOCK_S):
        offs_s = s0 + tl.arange(0, BLOCK_S)
        in_range = offs_s < num_splits
        flat = (pid_bh.to(tl.int64) * num_splits + offs_s) * q_len + row
        lse = tl.load(PartialLse + flat, mask=in_range, other=float("-inf"))
        o = tl.load(Partial + flat[:, None] * HEAD_DIM + offs_d[None, :], mask=in_range[:, None], other=0.0)
        m_new = tl.maximum(m, tl.max(lse, 0))
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
        w = tl.exp(lse - m_use)
        alpha = tl.exp(m - m_use)
        den = den * alpha + tl.sum(w, 0)
        acc = acc * alpha + tl.sum(w[:, None] * o, 0)
        m = m_new
    out = acc / tl.where(den == 0.0, 1.0, den)
    off_b = (pid_bh // num_q_heads).to(tl.int64)
    off_h = (pid_bh % num_q_heads).to(tl.int64)
    tl.store(Out + off_b * stride_ob + off_h * stride_oh + row.to(tl.int64) * stride_om + offs_d, out.to(Out.dtype.element_ty))
