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

One split only (prefill); decode keeps the fused split-K kernels. This file imports only triton (and
the shared tile steps of `kernel.py`).
"""

from __future__ import annotations

import triton
import triton.language as tl

from .kernel import LOG2E, _head_tile, _key_range, _load_rows, _softmax_update, _tile_scores


@triton.jit
def _vote_tiles(
    m_i, n_kept, q, k_base, bias_base, stride_kn, stride_biasn, list_base,
    offs_n, offs_d, row_pos, row_pad, kv_len, qk_scale, inv_sm_scale, log2_lambda, tile_lo, tile_hi,
    BLOCK_N: tl.constexpr, MASKED: tl.constexpr, CAUSAL: tl.constexpr, UPCAST_DOT: tl.constexpr,
    KEY_BIAS: tl.constexpr,
):  # fmt: skip
    for j in range(tile_lo, tile_hi):
        cols = j * BLOCK_N + offs_n
        k = _load_rows(k_base + cols[:, None] * stride_kn + offs_d[None, :], cols, kv_len, MASKED)
        qk = _tile_scores(q, k, bias_base, stride_biasn, cols, row_pos, kv_len, inv_sm_scale,
                          MASKED, CAUSAL, UPCAST_DOT, KEY_BIAS)  # fmt: skip
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
    start_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    off_b, _, k_base, _, offs_m, q = _head_tile(
        Q, K, K, stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kb, stride_kh,
        num_q_heads, kv_group, q_len, start_m, pid_bh, BLOCK_M, HEAD_DIM,
    )  # fmt: skip
    if KEY_BIAS:
        bias_base = KeyBias + off_b * stride_biasb
    else:
        bias_base = KeyBias
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    qk_scale = sm_scale * LOG2E
    log2_lambda = log2_scale_factor - tl.log2(kv_len.to(tl.float32))
    row_pos, tile_hi, mid = _key_range(kv_len, q_len, start_m, 0, tl.cdiv(kv_len, BLOCK_N), BLOCK_M, BLOCK_N, CAUSAL)

    list_row = pid_bh.to(tl.int64) * tl.num_programs(0) + start_m
    list_base = TileList + list_row * n_kv_tiles
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    n_kept = tl.zeros([], tl.int32)
    inv_sm_scale = 1.0 / sm_scale
    row_pad = offs_m >= q_len
    # The tiles that need no element mask, then the tail/diagonal ones; the count after the first.
    m_i, n_kept = _vote_tiles(m_i, n_kept, q, k_base, bias_base, stride_kn, stride_biasn, list_base, offs_n, offs_d,
                              row_pos, row_pad, kv_len, qk_scale, inv_sm_scale, log2_lambda, 0, mid,
                              BLOCK_N, False, CAUSAL, UPCAST_DOT, KEY_BIAS)  # fmt: skip
    tl.store(TileCount + list_row * 2, n_kept)
    m_i, n_kept = _vote_tiles(m_i, n_kept, q, k_base, bias_base, stride_kn, stride_biasn, list_base, offs_n, offs_d,
                              row_pos, row_pad, kv_len, qk_scale, inv_sm_scale, log2_lambda, mid, tile_hi,
                              BLOCK_N, True, CAUSAL, UPCAST_DOT, KEY_BIAS)  # fmt: skip
    tl.store(TileCount + list_row * 2 + 1, n_kept)

@triton.jit
def _attend_listed(
    acc, l_i, m_i, q, k_base, v_base, bias_base, stride_kn, stride_vn, stride_biasn, list_base,
    offs_n, offs_d, row_pos, kv_len, qk_scale, inv_sm_scale, e_lo, e_hi,
    BLOCK_N: tl.constexpr, MASKED: tl.constexpr, CAUSAL: tl.constexpr, UPCAST_DOT: tl.constexpr,
    KEY_BIAS: tl.constexpr,
):  # fmt: skip
    for e in range(e_lo, e_hi):
        cols = tl.load(list_base + e) * BLOCK_N + offs_n
        v = _load_rows(v_base + cols[:, None] * stride_vn + offs_d[None, :], cols, kv_len, MASKED)
        k = _load_rows(k_base + cols[:, None] * stride_kn + offs_d[None, :], cols, kv_len, MASKED)
        qk = _tile_scores(q, k, bias_base, stride_biasn, cols, row_pos, kv_len, inv_sm_scale,
                          MASKED, CAUSAL, UPCAST_DOT, KEY_BIAS)  # fmt: skip
        acc, l_i, m_i = _softmax_update(acc, l_i, m_i, tl.max(qk, 1) * qk_scale, qk, qk_scale, v, UPCAST_DOT)
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
    n_q_tiles = tl.num_programs(0)
    pid_bh = tl.program_id(1)
    if CAUSAL:
        start_m = n_q_tiles - 1 - tl.program_id(0)  # longest causal rows first: better tail balance
    else:
        start_m = tl.program_id(0)
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
    row_pos = kv_len - q_len + offs_m

    list_row = pid_bh.to(tl.int64) * n_q_tiles + start_m
    list_base = TileList + list_row * n_kv_tiles
    n_plain = tl.load(TileCount + list_row * 2)
    n_kept = tl.load(TileCount + list_row * 2 + 1)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    qk_scale = sm_scale * LOG2E
    inv_sm_scale = 1.0 / sm_scale
    # The listed tiles that need no element mask come first.
    acc, l_i, m_i = _attend_listed(acc, l_i, m_i, q, k_base, v_base, bias_base, stride_kn, stride_vn, stride_biasn,
                                   list_base, offs_n, offs_d, row_pos, kv_len, qk_scale, inv_sm_scale, 0, n_plain,
                                   BLOCK_N, False, CAUSAL, UPCAST_DOT, KEY_BIAS)  # fmt: skip
    acc, l_i, m_i = _attend_listed(acc, l_i, m_i, q, k_base, v_base, bias_base, stride_kn, stride_vn, stride_biasn,
                                   list_base, offs_n, offs_d, row_pos, kv_len, qk_scale, inv_sm_scale, n_plain, n_kept,
                                   BLOCK_N, True, CAUSAL, UPCAST_DOT, KEY_BIAS)  # fmt: skip

    l_use = tl.where(l_i == 0.0, 1.0, l_i)  # rows that see no key write 0
    out = acc / l_use[:, None]
    o_ptrs = Out + off_b * stride_ob + off_h.to(tl.int64) * stride_oh + offs_m[:, None] * stride_om + offs_d[None, :]
    tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=offs_m[:, None] < q_len)
