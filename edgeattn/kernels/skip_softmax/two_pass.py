"""Two-pass skip-softmax prefill: decide the reference's skip set first, then attend the kept tiles.

The fused kernel (``kernel.py``) decides per key tile, inside the softmax loop, whether to go on
with the exponentials and P @ V. The branch sits in the middle of the pipelined loop, so the GPU
waits at it: on an H200 skipping 75 % of the tiles ran slower than dense (README). Here the
decision and the attention run as two kernels, each a branch-free loop:

``skip_softmax_tile_votes`` — one program per (query tile, batch x query head): walks the visited
    key tiles in the fused kernel's order, computes each tile's row maxima of ``scale·QKᵀ`` (one
    GEMM with a max epilogue: no exponentials, no V), and applies the skip rule of the reference to
    the running max of the tiles kept so far. It writes the kept tiles, in walk order, as a list
    per (batch x head, query tile), and how many of them need no element mask (those come first).
``skip_softmax_attend_listed`` — one program per (query tile, batch x query head): online softmax
    and P @ V over the listed tiles only, K and V read together so the loop pipelines as the dense
    kernel's does; the unmasked tiles in one loop, the diagonal and tail tiles in a second.

The skip set is the reference's exactly (same rule, same running max, same tile order), and a
skipped tile contributes nothing in either form, so the output is the fused kernel's up to the
rounding of the same sums. Cost model (prefill, causal, ``f`` the kept fraction of visited tiles):
the votes pass is half the dense GEMM work and none of its exponentials, the attend pass ``f`` of
dense, so ``time ≈ (0.5 + f)·dense`` when tensor-core bound: 1.33x at 75 % skipped, 1.67x at 90 %,
and slower than dense below 50 %; memory: one int32 per visited tile.

One split only (prefill); decode keeps the fused split-K kernels. This file imports only triton.
"""

from __future__ import annotations

import triton
import triton.language as tl

LOG2E: tl.constexpr = tl.constexpr(1.4426950408889634)


@triton.jit
def _tile_scores(
    q, k_base, bias_base, stride_kn, stride_biasn, j, offs_n, offs_d, row_pos, kv_len, inv_sm_scale,
    BLOCK_N: tl.constexpr, MASKED: tl.constexpr, CAUSAL: tl.constexpr, UPCAST_DOT: tl.constexpr,
    KEY_BIAS: tl.constexpr,
):  # fmt: skip
    """Raw scores ``q·kᵀ`` (+ key mask / scale) of key tile ``j``, -inf where a key is hidden."""
    cols = j * BLOCK_N + offs_n
    k_ptrs = k_base + cols[:, None] * stride_kn + offs_d[None, :]
    if MASKED:
        k = tl.load(k_ptrs, mask=cols[:, None] < kv_len, other=0.0)
    else:
        k = tl.load(k_ptrs)
    if UPCAST_DOT:
        qk = tl.dot(q.to(tl.float32), tl.trans(k.to(tl.float32)), input_precision="ieee")
    else:
        qk = tl.dot(q, tl.trans(k))
    if KEY_BIAS:
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
def _vote_tiles(
    m_i, n_kept, q, k_base, bias_base, stride_kn, stride_biasn, list_base,
    offs_n, offs_d, row_pos, row_pad, kv_len, qk_scale, inv_sm_scale, log2_lambda, tile_lo, tile_hi,
    BLOCK_N: tl.constexpr, MASKED: tl.constexpr, CAUSAL: tl.constexpr, UPCAST_DOT: tl.constexpr,
    KEY_BIAS: tl.constexpr,
):  # fmt: skip
    for j in range(tile_lo, tile_hi):
        qk = _tile_scores(q, k_base, bias_base, stride_kn, stride_biasn, j, offs_n, offs_d, row_pos, kv_len,
                          inv_sm_scale, BLOCK_N, MASKED, CAUSAL, UPCAST_DOT, KEY_BIAS)  # fmt: skip
        m_tile = tl.max(qk, 1) * qk_scale
        # The fused kernel's rule: every row agrees (or has no valid key, or is padding), and the
        # first tile is always kept. Only a kept tile moves the running max.
        agree = (m_tile < m_i + log2_lambda) | (m_tile == float("-inf")) | row_pad
        keep = (tl.sum(tl.where(agree, 0, 1), 0) > 0) | (j == 0)
        if keep:
            tl.store(list_base + n_kept, j)
            n_kept += 1
            m_i = tl.maximum(m_i, m_tile)
    return m_i, n_kept


@triton.jit(do_not_specialize=["q_len", "kv_len"])
def skip_softmax_tile_votes(
    Q, K, KeyBias,
    sm_scale, log2_scale_factor,
    stride_qb, stride_qh, stride_qm,
    stride_kb, stride_kh, stride_kn,
    stride_biasb, stride_biasn,
    num_q_heads, kv_group, q_len, kv_len, n_kv_tiles,
    TileList, TileCount,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr,
    UPCAST_DOT: tl.constexpr = False, KEY_BIAS: tl.constexpr = False,
):  # fmt: skip
    """Grid ``(cdiv(q_len, BLOCK_M), B * num_q_heads)``.

    Q ``[B, Hq, q_len, D]``, K ``[B, Hq / kv_group, kv_len, D]`` (last dim contiguous), KeyBias as in
    ``skip_softmax_attn_fwd``. TileList int32 ``[B * Hq, n_q_tiles, n_kv_tiles]``: the kept key tiles
    of each query tile in walk order (entries past the count are not written); TileCount int32
    ``[B * Hq, n_q_tiles, 2]`` = (kept tiles that need no element mask, kept tiles).
    """
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    n_q_tiles = tl.num_programs(0)
    start_m = pid_m
    off_b = (pid_bh // num_q_heads).to(tl.int64)
    off_h = pid_bh % num_q_heads
    off_kvh = (off_h // kv_group).to(tl.int64)
    q_base = Q + off_b * stride_qb + off_h.to(tl.int64) * stride_qh
    k_base = K + off_b * stride_kb + off_kvh * stride_kh
    if KEY_BIAS:
        bias_base = KeyBias + off_b * stride_biasb
    else:
        bias_base = KeyBias

    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    row_pad = offs_m >= q_len
    q = tl.load(q_base + offs_m[:, None] * stride_qm + offs_d[None, :], mask=offs_m[:, None] < q_len, other=0.0)
    qk_scale = sm_scale * LOG2E
    log2_lambda = log2_scale_factor - tl.log2(kv_len.to(tl.float32))

    # The visited tiles and the unmasked prefix, as the fused kernel cuts them.
    first_row_pos = kv_len - q_len + start_m * BLOCK_M
    row_pos = first_row_pos + tl.arange(0, BLOCK_M)
    tile_hi = tl.cdiv(kv_len, BLOCK_N)
    unmasked_hi = kv_len // BLOCK_N
    if CAUSAL:
        last_pos = kv_len - q_len + tl.minimum((start_m + 1) * BLOCK_M, q_len) - 1
        tile_hi = tl.minimum(tile_hi, tl.cdiv(tl.maximum(last_pos + 1, 0), BLOCK_N))
        unmasked_hi = tl.minimum(unmasked_hi, tl.maximum(first_row_pos + 1, 0) // BLOCK_N)
    mid = tl.minimum(tl.maximum(unmasked_hi, 0), tile_hi)

    list_row = pid_bh.to(tl.int64) * n_q_tiles + start_m
    list_base = TileList + list_row * n_kv_tiles
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    n_kept = tl.zeros([], tl.int32)
    m_i, n_kept = _vote_tiles(m_i, n_kept, q, k_base, bias_base, stride_kn, stride_biasn, list_base,
                              offs_n, offs_d, row_pos, row_pad, kv_len, qk_scale, 1.0 / sm_scale, log2_lambda,
                              0, mid, BLOCK_N, False, CAUSAL, UPCAST_DOT, KEY_BIAS)  # fmt: skip
    tl.store(TileCount + list_row * 2, n_kept)
    m_i, n_kept = _vote_tiles(m_i, n_kept, q, k_base, bias_base, stride_kn, stride_biasn, list_base,
                              offs_n, offs_d, row_pos, row_pad, kv_len, qk_scale, 1.0 / sm_scale, log2_lambda,
                              mid, tile_hi, BLOCK_N, True, CAUSAL, UPCAST_DOT, KEY_BIAS)  # fmt: skip
    tl.store(TileCount + list_row * 2 + 1, n_kept)


@triton.jit
def _attend_listed(
    acc, l_i, m_i, q, k_base, v_base, bias_base, stride_kn, stride_vn, stride_biasn, list_base,
    offs_n, offs_d, row_pos, kv_len, qk_scale, inv_sm_scale, e_lo, e_hi,
    BLOCK_N: tl.constexpr, MASKED: tl.constexpr, CAUSAL: tl.constexpr, UPCAST_DOT: tl.constexpr,
    KEY_BIAS: tl.constexpr,
):  # fmt: skip
    for e in range(e_lo, e_hi):
        j = tl.load(list_base + e)
        cols = j * BLOCK_N + offs_n
        v_ptrs = v_base + cols[:, None] * stride_vn + offs_d[None, :]
        if MASKED:
            v = tl.load(v_ptrs, mask=cols[:, None] < kv_len, other=0.0)
        else:
            v = tl.load(v_ptrs)
        qk = _tile_scores(q, k_base, bias_base, stride_kn, stride_biasn, j, offs_n, offs_d, row_pos, kv_len,
                          inv_sm_scale, BLOCK_N, MASKED, CAUSAL, UPCAST_DOT, KEY_BIAS)  # fmt: skip
        m_tile = tl.max(qk, 1) * qk_scale
        # Online softmax in the exp2 domain; a row with no valid key yet keeps m = -inf.
        m_new = tl.maximum(m_i, m_tile)
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.math.exp2(qk * qk_scale - m_use[:, None])
        alpha = tl.math.exp2(m_i - m_use)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        p = p.to(v.dtype)
        if UPCAST_DOT:
            acc = tl.dot(p.to(tl.float32), v.to(tl.float32), acc, input_precision="ieee")
        else:
            acc = tl.dot(p, v, acc)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit(do_not_specialize=["q_len", "kv_len"])
def skip_softmax_attend_listed(
    Q, K, V, KeyBias, TileList, TileCount,
    sm_scale,
    stride_qb, stride_qh, stride_qm,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_biasb, stride_biasn,
    stride_ob, stride_oh, stride_om,
    num_q_heads, kv_group, q_len, kv_len, n_kv_tiles,
    Out,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr,
    UPCAST_DOT: tl.constexpr = False, KEY_BIAS: tl.constexpr = False,
):  # fmt: skip
    """Grid ``(cdiv(q_len, BLOCK_M), B * num_q_heads)``: attention over the tiles that
    ``skip_softmax_tile_votes`` listed. Out ``[B, Hq, q_len, D]`` in the output dtype."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    n_q_tiles = tl.num_programs(0)
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
    if KEY_BIAS:
        bias_base = KeyBias + off_b * stride_biasb
    else:
        bias_base = KeyBias

    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    q = tl.load(q_base + offs_m[:, None] * stride_qm + offs_d[None, :], mask=offs_m[:, None] < q_len, other=0.0)
    qk_scale = sm_scale * LOG2E
    row_pos = kv_len - q_len + start_m * BLOCK_M + tl.arange(0, BLOCK_M)

    list_row = pid_bh.to(tl.int64) * n_q_tiles + start_m
    list_base = TileList + list_row * n_kv_tiles
    n_plain = tl.load(TileCount + list_row * 2)
    n_kept = tl.load(TileCount + list_row * 2 + 1)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    acc, l_i, m_i = _attend_listed(acc, l_i, m_i, q, k_base, v_base, bias_base, stride_kn, stride_vn, stride_biasn,
                                   list_base, offs_n, offs_d, row_pos, kv_len, qk_scale, 1.0 / sm_scale, 0, n_plain,
                                   BLOCK_N, False, CAUSAL, UPCAST_DOT, KEY_BIAS)  # fmt: skip
    acc, l_i, m_i = _attend_listed(acc, l_i, m_i, q, k_base, v_base, bias_base, stride_kn, stride_vn, stride_biasn,
                                   list_base, offs_n, offs_d, row_pos, kv_len, qk_scale, 1.0 / sm_scale, n_plain,
                                   n_kept, BLOCK_N, True, CAUSAL, UPCAST_DOT, KEY_BIAS)  # fmt: skip

    l_use = tl.where(l_i == 0.0, 1.0, l_i)  # rows that see no key write 0
    out = acc / l_use[:, None]
    o_ptrs = Out + off_b * stride_ob + off_h.to(tl.int64) * stride_oh + offs_m[:, None] * stride_om + offs_d[None, :]
    tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=offs_m[:, None] < q_len)
