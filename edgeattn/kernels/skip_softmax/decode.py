"""Grouped split-K decode for skip-softmax attention: each K/V tile is read once per GQA group.

``skip_softmax_attn_fwd`` runs one program per query head, so in decode (one query row) the
``Hq / Hkv`` heads of a group each stream the same K/V cache from memory: with 32 query and 8 KV
heads, four times the bytes SDPA's grouped path reads. ``skip_softmax_decode_grouped`` runs one
program per (batch x KV head, split): the one query row of every head of the group is stacked into
one tile (padded to 16 rows for the tensor cores), so each K tile feeds one ``QKᵀ`` for the whole
group and each V tile one ``P @ V``.

Semantics are the op's with the same ``num_splits``: in decode each head's query tile holds its one
row, so the skip rule is decided per row. A tile is read (V included) when some head of the group
keeps it, and a head that skips it takes no part in the update (its exponentials are zeroed, its
running max stays): the counts, the running maxima and the output of every head are those of
``skip_softmax_attn_fwd``. Splits write fp32 partials and log-sum-exps in that kernel's layout, and
``skip_softmax_merge_splits`` combines them. This file imports only triton (and the shared tile
steps of ``kernel.py``).
"""

from __future__ import annotations

import triton
import triton.language as tl

from .kernel import LN2, LOG2E, _load_rows, _softmax_update, _tile_scores


@triton.jit
def _grouped_tiles(
    acc, l_i, m_i, n_skip, q, k_base, v_base, bias_base, stride_kn, stride_vn, stride_biasn,
    offs_n, offs_d, row_pad, kv_len, qk_scale, inv_sm_scale, log2_lambda, tile_lo, tile_hi, first_tile,
    BLOCK_N: tl.constexpr, MASKED: tl.constexpr, USE_SKIP: tl.constexpr, UPCAST_DOT: tl.constexpr,
    KEY_BIAS: tl.constexpr,
):  # fmt: skip
    for j in range(tile_lo, tile_hi):
        cols = j * BLOCK_N + offs_n
        v_ptrs = v_base + cols[:, None] * stride_vn + offs_d[None, :]
        k = _load_rows(k_base + cols[:, None] * stride_kn + offs_d[None, :], cols, kv_len, MASKED)
        if not USE_SKIP:  # dense: V with K, so the pipeline prefetches both
            v = _load_rows(v_ptrs, cols, kv_len, MASKED)
        # One query row at the last position sees every key: only the tail is hidden (not CAUSAL).
        qk = _tile_scores(q, k, bias_base, stride_biasn, cols, offs_n, kv_len, inv_sm_scale,
                          MASKED, False, UPCAST_DOT, KEY_BIAS)  # fmt: skip
        m_tile = tl.max(qk, 1) * qk_scale
        if USE_SKIP:
            agree = (m_tile < m_i + log2_lambda) | (m_tile == float("-inf")) | row_pad
            keep = (agree == 0) | (j == first_tile)
            n_skip += tl.where(keep, 0, 1)
            if tl.sum(keep.to(tl.int32), 0) > 0:
                v = _load_rows(v_ptrs, cols, kv_len, MASKED)
                # A head that skips the tile takes no part: its scores read as -inf, so its exponentials
                # are 0, its running max stays and its rescale factor is 1.
                acc, l_i, m_i = _softmax_update(acc, l_i, m_i, tl.where(keep, m_tile, float("-inf")),
                                                tl.where(keep[:, None], qk, float("-inf")), qk_scale, v, UPCAST_DOT)
        else:
            acc, l_i, m_i = _softmax_update(acc, l_i, m_i, m_tile, qk, qk_scale, v, UPCAST_DOT)
    return acc, l_i, m_i, n_skip


@triton.jit(do_not_specialize=["kv_len"])
def skip_softmax_decode_grouped(
    Q, K, V, KeyBias,
    sm_scale, log2_scale_factor,
    stride_qb, stride_qh,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_biasb, stride_biasn,
    stride_ob, stride_oh, stride_os,
    num_kv_heads, kv_group, kv_len, tiles_per_split,
    Out, Lse, Counts,
    HEAD_DIM: tl.constexpr, GROUP_ROWS: tl.constexpr, BLOCK_N: tl.constexpr,
    USE_SKIP: tl.constexpr, STORE_LSE: tl.constexpr, COUNT_SKIPS: tl.constexpr,
    UPCAST_DOT: tl.constexpr = False, KEY_BIAS: tl.constexpr = False,
):  # fmt: skip
    """Grid ``(B * num_kv_heads, n_splits)``; one query row per head (``q_len == 1``).

    Q ``[B, Hq, 1, D]`` (``Hq = num_kv_heads · kv_group``, ``kv_group <= GROUP_ROWS``), K/V
    ``[B, Hkv, kv_len, D]``, last dims contiguous. Out, Lse and Counts as ``skip_softmax_attn_fwd``
    writes them with one query tile: Out ``[B, Hq, 1, D]`` (one split) or fp32 partials with split
    stride ``stride_os``; Lse ``[B * Hq, n_splits, 1]``; Counts ``[B * Hq, n_splits, 1, 2]``.
    Causal and not are the same here: the row sits at the last position and sees every key.
    """
    pid_bk = tl.program_id(0)
    split = tl.program_id(1)
    n_splits = tl.num_programs(1)
    off_b = (pid_bk // num_kv_heads).to(tl.int64)
    off_kvh = (pid_bk % num_kv_heads).to(tl.int64)
    offs_g = tl.arange(0, GROUP_ROWS)
    row_pad = offs_g >= kv_group
    heads = off_kvh * kv_group + offs_g  # query heads of the group (padding rows past the group)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    q = tl.load(Q + off_b * stride_qb + heads[:, None] * stride_qh + offs_d[None, :], mask=(~row_pad)[:, None],
                other=0.0)  # fmt: skip
    k_base = K + off_b * stride_kb + off_kvh * stride_kh
    v_base = V + off_b * stride_vb + off_kvh * stride_vh
    if KEY_BIAS:
        bias_base = KeyBias + off_b * stride_biasb
    else:
        bias_base = KeyBias
    qk_scale = sm_scale * LOG2E
    if USE_SKIP:
        log2_lambda = log2_scale_factor - tl.log2(kv_len.to(tl.float32))
    else:
        log2_lambda = 0.0

    tile_lo = split * tiles_per_split
    tile_hi = tl.minimum(tile_lo + tiles_per_split, tl.cdiv(kv_len, BLOCK_N))
    mid = tl.minimum(tl.maximum(kv_len // BLOCK_N, tile_lo), tile_hi)
    m_i = tl.full([GROUP_ROWS], float("-inf"), tl.float32)
    l_i = tl.zeros([GROUP_ROWS], tl.float32)
    acc = tl.zeros([GROUP_ROWS, HEAD_DIM], tl.float32)
    n_skip = tl.zeros([GROUP_ROWS], tl.int32)
    acc, l_i, m_i, n_skip = _grouped_tiles(
        acc, l_i, m_i, n_skip, q, k_base, v_base, bias_base, stride_kn, stride_vn, stride_biasn,
        offs_n, offs_d, row_pad, kv_len, qk_scale, 1.0 / sm_scale, log2_lambda, tile_lo, mid, tile_lo,
        BLOCK_N, False, USE_SKIP, UPCAST_DOT, KEY_BIAS,
    )  # fmt: skip
    acc, l_i, m_i, n_skip = _grouped_tiles(
        acc, l_i, m_i, n_skip, q, k_base, v_base, bias_base, stride_kn, stride_vn, stride_biasn,
        offs_n, offs_d, row_pad, kv_len, qk_scale, 1.0 / sm_scale, log2_lambda, mid, tile_hi, tile_lo,
        BLOCK_N, True, USE_SKIP, UPCAST_DOT, KEY_BIAS,
    )  # fmt: skip

    l_use = tl.where(l_i == 0.0, 1.0, l_i)  # an empty split writes 0 and lse = -inf
    out = acc / l_use[:, None]
    o_ptrs = Out + off_b * stride_ob + heads[:, None] * stride_oh + split.to(tl.int64) * stride_os + offs_d[None, :]
    tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=(~row_pad)[:, None])
    bh = off_b * num_kv_heads * kv_group + heads  # flat (batch, query head)
    if STORE_LSE:
        lse = tl.where(l_i == 0.0, float("-inf"), (m_i + tl.math.log2(l_use)) * LN2)
        tl.store(Lse + bh * n_splits + split, lse, mask=~row_pad)
    if COUNT_SKIPS:
        c_off = (bh * n_splits + split) * 2
        tl.store(Counts + c_off, n_skip, mask=~row_pad)
        tl.store(Counts + c_off + 1, tl.zeros([GROUP_ROWS], tl.int32) + tl.maximum(tile_hi - tile_lo, 0),
                 mask=~row_pad)  # fmt: skip
