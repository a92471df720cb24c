"""Triton kernels for ``edgeattn.SkipSoftmaxAttention`` (BLASST skip-softmax flash attention).

The tile walk, the skip rule and the tile counts are the ones of ``reference.py`` (read its
docstring first). This file imports only triton, so GPU scripts can load it on a bare machine;
whether its kernels are compiled or interpreted is fixed by ``TRITON_INTERPRET`` when triton is
first imported.

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
    ``V_LOAD`` says where a skip-mode kernel reads V: 0 with K (the compiler sinks that load into
    the processed branch anyway, where nothing prefetches it), 1 inside the processed branch (a
    skipped tile never reads V; the default, fastest on an H200 in prefill and decode alike, see
    ``benchmarks/gpu_skip_ablation.py``), 2 one tile ahead into registers (the load latency hides
    behind the current tile; skipped tiles are read anyway). Dense mode always loads V with K, where
    Triton's software pipeline prefetches both into shared memory.

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
def _load_rows(ptrs, cols, kv_len, MASKED: tl.constexpr):
    """A K or V tile; in a tail tile (MASKED) the keys at or past kv_len read as 0 (their scores are
    masked to -inf by `_tile_scores`)."""
    if MASKED:
        rows = tl.load(ptrs, mask=cols[:, None] < kv_len, other=0.0)
    else:
        rows = tl.load(ptrs)
    return rows


@triton.jit
def _tile_scores(
    q, k, bias_base, stride_biasn, cols, row_pos, kv_len, inv_sm_scale,
    MASKED: tl.constexpr, CAUSAL: tl.constexpr, UPCAST_DOT: tl.constexpr, KEY_BIAS: tl.constexpr,
):  # fmt: skip
    """Raw scores q·kᵀ (fp32) of one key tile, with the key mask and, in a MASKED tile, -inf where a key
    is past kv_len or (CAUSAL) after the row's position."""
    if UPCAST_DOT:
        qk = tl.dot(q.to(tl.float32), tl.trans(k.to(tl.float32)), input_precision="ieee")
    else:
        qk = tl.dot(q, tl.trans(k))
    if KEY_BIAS:
        # The key mask in raw-score units: scale·(qk + m/scale) = scale·qk + m (exact for m = -inf).
        if MASKED:
            bias = tl.load(bias_base + cols * stride_biasn, mask=cols < kv_len, other=0.0)
        else:
            bias = tl.load(bias_base + cols * stride_biasn)
        qk = qk + bias.to(tl.float32)[None, :] * inv_sm_scale
    if MASKED:
        valid = cols[None, :] < kv_len
        if CAUSAL:
            valid = valid & (cols[None, :] <= row_pos[:, None])
        qk = tl.where(valid, qk, float("-inf"))
    return qk


@triton.jit
def _softmax_update(acc, l_i, m_i, m_tile, qk, qk_scale, v, UPCAST_DOT: tl.constexpr):
    """One online-softmax step in the exp2 domain over a tile's raw scores qk (row maxima m_tile, scaled).
    A row with no valid key yet keeps m = -inf; the exponents use 0 in its place so that
    exp2(-inf - (-inf)) never makes NaN. Returns (acc, l, m)."""
    m_new = tl.maximum(m_i, m_tile)
    m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
    p = tl.math.exp2(qk * qk_scale - m_use[:, None])
    alpha = tl.math.exp2(m_i - m_use)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None]
    p = p.to(v.dtype)  # P @ V on tensor cores in the input precision, fp32 accumulation
    if UPCAST_DOT:
        acc = tl.dot(p.to(tl.float32), v.to(tl.float32), acc, input_precision="ieee")
    else:
        acc = tl.dot(p, v, acc)
    return acc, l_i, m_new


@triton.jit
def _head_tile(
    Q, K, V, stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_vb, stride_vh,
    num_q_heads, kv_group, q_len, start_m, pid_bh, BLOCK_M: tl.constexpr, HEAD_DIM: tl.constexpr,
):  # fmt: skip
    """What a (query tile, batch x query head) program reads: the batch and head, the K and V bases of
    its key/value head, the tile's row offsets and its Q tile (padding rows read as 0). (The key mask's
    base stays with the caller: without a mask it is None, which a jit function cannot return.)"""
    off_b = (pid_bh // num_q_heads).to(tl.int64)
    off_h = pid_bh % num_q_heads
    off_kvh = (off_h // kv_group).to(tl.int64)
    k_base = K + off_b * stride_kb + off_kvh * stride_kh
    v_base = V + off_b * stride_vb + off_kvh * stride_vh
    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    q_base = Q + off_b * stride_qb + off_h.to(tl.int64) * stride_qh
    q = tl.load(q_base + offs_m[:, None] * stride_qm + offs_d[None, :], mask=offs_m[:, None] < q_len, other=0.0)
    return off_b, off_h, k_base, v_base, offs_m, q


@triton.jit
def _key_range(kv_len, q_len, start_m, tile_lo, tile_hi, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
               CAUSAL: tl.constexpr):  # fmt: skip
    """The key tiles [tile_lo, tile_hi) of a query tile, cut at the causal frontier of its last row, and
    where the tiles that need an element mask (tail, diagonal) begin: (row positions, end, middle)."""
    first_row_pos = kv_len - q_len + start_m * BLOCK_M
    row_pos = first_row_pos + tl.arange(0, BLOCK_M)
    unmasked_hi = kv_len // BLOCK_N
    if CAUSAL:
        last_pos = kv_len - q_len + tl.minimum((start_m + 1) * BLOCK_M, q_len) - 1
        tile_hi = tl.minimum(tile_hi, tl.cdiv(tl.maximum(last_pos + 1, 0), BLOCK_N))
        unmasked_hi = tl.minimum(unmasked_hi, tl.maximum(first_row_pos + 1, 0) // BLOCK_N)
    mid = tl.minimum(tl.maximum(unmasked_hi, tile_lo), tile_hi)
    return row_pos, tile_hi, mid


@triton.jit
def _attend_key_tiles(
    acc, l_i, m_i, n_skip,
    q, k_base, v_base, bias_base, stride_kn, stride_vn, stride_biasn,
    offs_n, offs_d, row_pos, row_pad,
    kv_len, qk_scale, inv_sm_scale, log2_lambda,
    tile_lo, tile_hi, first_tile,
    BLOCK_N: tl.constexpr, MASKED: tl.constexpr, CAUSAL: tl.constexpr,
    USE_SKIP: tl.constexpr, V_LOAD: tl.constexpr, UPCAST_DOT: tl.constexpr, KEY_BIAS: tl.constexpr,
):  # fmt: skip
    # Scores and maxima are in log2 units (scores * sm_scale * log2 e), so exp2 does the softmax.
    # V_LOAD (see the module docstring): 0 with K, 1 in the processed branch, 2 one tile ahead.
    PREFETCH: tl.constexpr = USE_SKIP and V_LOAD == 2
    IN_BRANCH: tl.constexpr = USE_SKIP and V_LOAD == 1
    if PREFETCH:
        # Keys past this loop's last tile (or past kv_len) read as 0 and are never used.
        v_limit = tl.minimum(kv_len, tile_hi * BLOCK_N)
        cols = tile_lo * BLOCK_N + offs_n
        v_next = tl.load(v_base + cols[:, None] * stride_vn + offs_d[None, :], mask=cols[:, None] < v_limit, other=0.0)
    for j in range(tile_lo, tile_hi):
        cols = j * BLOCK_N + offs_n
        v_ptrs = v_base + cols[:, None] * stride_vn + offs_d[None, :]
        k = _load_rows(k_base + cols[:, None] * stride_kn + offs_d[None, :], cols, kv_len, MASKED)
        if PREFETCH:
            # Register prefetch of the next V tile: its latency hides behind this tile's work, and
            # a loop-carried value cannot be sunk into the branch below (which a plain load is).
            v = v_next
            v_next = tl.load(v_ptrs + BLOCK_N * stride_vn, mask=(cols[:, None] + BLOCK_N) < v_limit, other=0.0)
        elif not IN_BRANCH:
            v = _load_rows(v_ptrs, cols, kv_len, MASKED)
        qk = _tile_scores(q, k, bias_base, stride_biasn, cols, row_pos, kv_len, inv_sm_scale,
                          MASKED, CAUSAL, UPCAST_DOT, KEY_BIAS)  # fmt: skip
        # Raw scores stay unscaled: the row max is scaled (exact, qk_scale > 0), and only a
        # processed tile pays for qk * qk_scale - m, one fused multiply-add per score.
        m_tile = tl.max(qk, 1) * qk_scale
        process = True
        if USE_SKIP:
            # A row agrees to skip when the tile cannot carry softmax mass above lambda relative
            # to its running max: m~ - m < log2(lambda). Rows without a valid key in the tile, and
            # padding rows past q_len, always agree. The split's first tile is never skipped.
            agree = (m_tile < m_i + log2_lambda) | (m_tile == float("-inf")) | row_pad
            process = (tl.sum(tl.where(agree, 0, 1), 0) > 0) | (j == first_tile)
        if process:
            if IN_BRANCH:
                v = _load_rows(v_ptrs, cols, kv_len, MASKED)
            acc, l_i, m_i = _softmax_update(acc, l_i, m_i, m_tile, qk, qk_scale, v, UPCAST_DOT)
        else:
            n_skip += 1
    return acc, l_i, m_i, n_skip


@triton.jit(do_not_specialize=["q_len", "kv_len"])
def skip_softmax_attn_fwd(
    Q, K, V, KeyBias,
    sm_scale, log2_scale_factor,
    stride_qb, stride_qh, stride_qm,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_biasb, stride_biasn,
    stride_ob, stride_oh, stride_os, stride_om,
    num_q_heads, kv_group, q_len, kv_len, tiles_per_split,
    Out, Lse, Counts,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr, USE_SKIP: tl.constexpr, V_LOAD: tl.constexpr,
    STORE_LSE: tl.constexpr, COUNT_SKIPS: tl.constexpr, UPCAST_DOT: tl.constexpr = False,
    KEY_BIAS: tl.constexpr = False,
):  # fmt: skip
    """Grid ``(cdiv(q_len, BLOCK_M), B * num_q_heads, n_splits)``.

    Q ``[B, Hq, q_len, HEAD_DIM]``, K/V ``[B, Hq / kv_group, kv_len, HEAD_DIM]`` (last dim
    contiguous, any other strides). Out: ``[B, Hq, q_len, HEAD_DIM]`` in the output dtype when
    ``n_splits == 1``; otherwise fp32 partials ``[B, Hq, n_splits, q_len, HEAD_DIM]`` (split stride
    ``stride_os``). Lse (natural log, fp32) ``[B * Hq, n_splits, q_len]``; Counts (int32)
    ``[B * Hq, n_splits, n_query_tiles, 2]`` = (tiles skipped, tiles visited).
    ``KEY_BIAS``: KeyBias, broadcast to ``[B, kv_len]`` by its strides (``stride_biasb``,
    ``stride_biasn``; 0 broadcasts), is added to every score of key j, as a key-only (padding) mask of
    the op: 0 keeps a key, -inf hides it; the skip rule sees the masked scores. Without it KeyBias is not read (None).
    ``UPCAST_DOT`` multiplies in IEEE fp32: for fp32 inputs (no TF32), and for bf16 in the Triton
    3.9 interpreter, whose dot cannot take bf16 (exact: 16-bit products fit in fp32).
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
    off_b, off_h, k_base, v_base, offs_m, q = _head_tile(
        Q, K, V, stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_vb, stride_vh,
        num_q_heads, kv_group, q_len, start_m, pid_bh, BLOCK_M, HEAD_DIM,
    )  # fmt: skip
    if KEY_BIAS:
        bias_base = KeyBias + off_b * stride_biasb
    else:
        bias_base = KeyBias
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    row_pad = offs_m >= q_len
    qk_scale = sm_scale * LOG2E
    inv_sm_scale = 1.0 / sm_scale
    if USE_SKIP:
        log2_lambda = log2_scale_factor - tl.log2(kv_len.to(tl.float32))
    else:
        log2_lambda = 0.0

    # Key tiles of this split, cut at the causal frontier of the tile's last row.
    tile_lo = split * tiles_per_split
    row_pos, tile_hi, mid = _key_range(kv_len, q_len, start_m, tile_lo,
                                       tl.minimum(tile_lo + tiles_per_split, tl.cdiv(kv_len, BLOCK_N)),
                                       BLOCK_M, BLOCK_N, CAUSAL)  # fmt: skip

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    n_skip = tl.zeros([], tl.int32)
    acc, l_i, m_i, n_skip = _attend_key_tiles(
        acc, l_i, m_i, n_skip, q, k_base, v_base, bias_base, stride_kn, stride_vn, stride_biasn,
        offs_n, offs_d, row_pos, row_pad,
        kv_len, qk_scale, inv_sm_scale, log2_lambda, tile_lo, mid, tile_lo,
        BLOCK_N, False, CAUSAL, USE_SKIP, V_LOAD, UPCAST_DOT, KEY_BIAS,
    )  # fmt: skip
    acc, l_i, m_i, n_skip = _attend_key_tiles(
        acc, l_i, m_i, n_skip, q, k_base, v_base, bias_base, stride_kn, stride_vn, stride_biasn,
        offs_n, offs_d, row_pos, row_pad,
        kv_len, qk_scale, inv_sm_scale, log2_lambda, mid, tile_hi, tile_lo,
        BLOCK_N, True, CAUSAL, USE_SKIP, V_LOAD, UPCAST_DOT, KEY_BIAS,
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
    HEAD_DIM: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_S: tl.constexpr,
):  # fmt: skip
    """Grid ``(cdiv(q_len, BLOCK_R), B * num_q_heads)``: log-sum-exp merge of the split partials.

    Partial fp32 ``[B * Hq, num_splits, q_len, HEAD_DIM]`` (each split's normalised output),
    PartialLse fp32 ``[B * Hq, num_splits, q_len]``; split ``s`` is weighted by
    ``exp(lse_s - max lse)``; empty splits (lse = -inf) weigh 0, a row with none left writes 0.
    """
    pid_r = tl.program_id(0)
    pid_bh = tl.program_id(1)
    rows = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    offs_d = tl.arange(0, HEAD_DIM)
    m = tl.full([BLOCK_R], float("-inf"), tl.float32)
    den = tl.zeros([BLOCK_R], tl.float32)
    acc = tl.zeros([BLOCK_R, HEAD_DIM], tl.float32)
    for s0 in range(0, num_splits, BLOCK_S):
        offs_s = s0 + tl.arange(0, BLOCK_S)
        ok = (offs_s[:, None] < num_splits) & (rows[None, :] < q_len)  # [BLOCK_S, BLOCK_R]
        flat = (pid_bh.to(tl.int64) * num_splits + offs_s[:, None]) * q_len + rows[None, :]
        lse = tl.load(PartialLse + flat, mask=ok, other=float("-inf"))
        o = tl.load(Partial + flat[:, :, None] * HEAD_DIM + offs_d[None, None, :], mask=ok[:, :, None], other=0.0)
        m_new = tl.maximum(m, tl.max(lse, 0))
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
        w = tl.exp(lse - m_use[None, :])
        alpha = tl.exp(m - m_use)
        den = den * alpha + tl.sum(w, 0)
        acc = acc * alpha[:, None] + tl.sum(w[:, :, None] * o, 0)
        m = m_new
    out = acc / tl.where(den == 0.0, 1.0, den)[:, None]
    off_b = (pid_bh // num_q_heads).to(tl.int64)
    off_h = (pid_bh % num_q_heads).to(tl.int64)
    o_ptrs = Out + off_b * stride_ob + off_h * stride_oh + rows[:, None].to(tl.int64) * stride_om + offs_d[None, :]
    tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=rows[:, None] < q_len)
