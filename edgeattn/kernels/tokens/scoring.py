"""Token scores from an encoder layer's attention: the [CLS] row (FasterVLM) or the mean received.

Semantics: ``edgeattn.TokenScore`` sources "cls" and "mean_received" (``plugins/token_score/
reference.py``): per head the softmax rows of ``scale·QKᵀ`` over every key (GQA: K heads shared by
``kv_group`` query heads), then for the candidate keys ``skip..S``: the row ``query`` ("cls") or
the mean over all rows ("mean_received"); heads combined by mean or max; times ``weights[n]`` and
``valid[b, n] != 0``. Imports only triton.

Two launches from Q/K (one from given probabilities):

``token_row_stats_fwd`` — grid ``(cdiv(n_rows, BLOCK_M), B·H)``: for the query rows
    ``row0..row0+n_rows`` (one row for "cls"), the running max (log2 units) and sum of the
    softmax over all keys, flash-style: Q tile in registers, K tiles -> QK^T -> online max/sum.
    Writes Stats fp32 ``[B·H, n_rows, 2]``.
``token_score_fwd`` — grid ``(cdiv(N, BLOCK_N), B)``: one tile of candidate keys; for each head
    and each tile of rows, the probabilities ``exp2(s - m) / l`` (recomputed from Q/K with the
    stats, or read from X ``[B, H, S, S]`` when ``FROM_PROBS``) summed over the rows; the head
    values (sum / n_rows) reduced over heads; weights and valid applied; Scores fp32 ``[B, N]``.
    Deterministic: no atomics, every output written by one program.

Parameter order follows TensorRT's AOT launch convention (inputs, scalars, outputs, constants).
"""

from __future__ import annotations

import triton
import triton.language as tl

LOG2E: tl.constexpr = tl.constexpr(1.4426950408889634)


@triton.jit
def _scores_tile(q, k, qk_scale, UPCAST_DOT: tl.constexpr):
    if UPCAST_DOT:
        s = tl.dot(q.to(tl.float32), tl.trans(k.to(tl.float32)), input_precision="ieee")
    else:
        s = tl.dot(q, tl.trans(k))
    return s * qk_scale


@triton.jit(do_not_specialize=["num_heads", "kv_group", "seq_len", "row0", "n_rows"])
def token_row_stats_fwd(
    Q, K,
    sm_scale,
    stride_qb, stride_qh, stride_qm,
    stride_kb, stride_kh, stride_kn,
    num_heads, kv_group, seq_len, row0, n_rows,
    Stats,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, UPCAST_DOT: tl.constexpr = False,
):  # fmt: skip
    """Q ``[B, H, S, D]``, K ``[B, H / kv_group, S, D]`` (last dim contiguous); Stats fp32 ``[B·H, n_rows, 2]``."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    off_b = (pid_bh // num_heads).to(tl.int64)
    off_h = pid_bh % num_heads
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    rows = row0 + offs_m
    row_ok = offs_m < n_rows
    q = tl.load(Q + off_b * stride_qb + off_h * stride_qh + rows[:, None].to(tl.int64) * stride_qm
                + offs_d[None, :], mask=row_ok[:, None], other=0.0)  # fmt: skip
    k_base = K + off_b * stride_kb + (off_h // kv_group).to(tl.int64) * stride_kh
    qk_scale = sm_scale * LOG2E
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    for n0 in range(0, seq_len, BLOCK_N):
        cols = n0 + offs_n
        k = tl.load(k_base + cols[:, None].to(tl.int64) * stride_kn + offs_d[None, :], mask=cols[:, None] < seq_len,
                    other=0.0)  # fmt: skip
        s = tl.where(cols[None, :] < seq_len, _scores_tile(q, k, qk_scale, UPCAST_DOT), float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        l_i = l_i * tl.math.exp2(m_i - m_new) + tl.sum(tl.math.exp2(s - m_new[:, None]), 1)
        m_i = m_new
    out = Stats + (pid_bh.to(tl.int64) * n_rows + offs_m) * 2
    tl.store(out, m_i, mask=row_ok)
    tl.store(out + 1, l_i, mask=row_ok)


@triton.jit(do_not_specialize=["num_heads", "kv_group", "seq_len", "row0", "n_rows", "skip", "n_tokens"])
def token_score_fwd(
    Q, K, Stats, X, Weights, Valid,
    sm_scale,
    stride_qb, stride_qh, stride_qm,
    stride_kb, stride_kh, stride_kn,
    stride_xb, stride_xh, stride_xm,
    num_heads, kv_group, seq_len, row0, n_rows, skip, n_tokens,
    Scores,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, FROM_PROBS: tl.constexpr,
    HEAD_REDUCE: tl.constexpr, USE_WEIGHTS: tl.constexpr, USE_VALID: tl.constexpr,
    UPCAST_DOT: tl.constexpr = False,
):  # fmt: skip
    """Candidates ``skip..skip+n_tokens`` of the key axis; rows ``row0..row0+n_rows``.

    HEAD_REDUCE 0 mean, 1 max. Weights fp32 ``[N]``, Valid fp32 ``[B, N]`` (nonzero = keep).
    X (``FROM_PROBS``): probabilities ``[B, H, S, S]``, last dim contiguous.
    """
    pid_n = tl.program_id(0)
    off_b = tl.program_id(1).to(tl.int64)
    offs_t = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # candidate index
    cols = skip + offs_t  # key position
    col_ok = offs_t < n_tokens
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    qk_scale = sm_scale * LOG2E
    if HEAD_REDUCE == 0:
        red = tl.zeros([BLOCK_N], tl.float32)
    else:
        red = tl.full([BLOCK_N], float("-inf"), tl.float32)
    for h_loop in range(num_heads):
        h = off_b * 0 + h_loop  # int64 (the interpreter yields Python ints)
        colsum = tl.zeros([BLOCK_N], tl.float32)
        if not FROM_PROBS:
            k_base = K + off_b * stride_kb + (h // kv_group) * stride_kh
            k = tl.load(k_base + cols[:, None].to(tl.int64) * stride_kn + offs_d[None, :], mask=col_ok[:, None],
                        other=0.0)  # fmt: skip
        for m0 in range(0, n_rows, BLOCK_M):
            rows = row0 + m0 + offs_m
            row_ok = (m0 + offs_m) < n_rows
            if FROM_PROBS:
                x_ptrs = (X + off_b * stride_xb + h * stride_xh + rows[:, None].to(tl.int64) * stride_xm
                          + cols[None, :])  # fmt: skip
                p = tl.load(x_ptrs, mask=row_ok[:, None] & col_ok[None, :], other=0.0).to(tl.float32)
            else:
                q = tl.load(Q + off_b * stride_qb + h * stride_qh + rows[:, None].to(tl.int64) * stride_qm
                            + offs_d[None, :], mask=row_ok[:, None], other=0.0)  # fmt: skip
                st = Stats + ((off_b * num_heads + h) * n_rows + m0 + offs_m) * 2
                m = tl.load(st, mask=row_ok, other=0.0)
                l_row = tl.load(st + 1, mask=row_ok, other=1.0)
                p = tl.math.exp2(_scores_tile(q, k, qk_scale, UPCAST_DOT) - m[:, None]) / l_row[:, None]
                p = tl.where(row_ok[:, None] & col_ok[None, :], p, 0.0)
            colsum += tl.sum(p, 0)
        value = colsum / n_rows
        if HEAD_REDUCE == 0:
            red += value
        else:
            red = tl.maximum(red, value)
    if HEAD_REDUCE == 0:
        red = red / num_heads
    if USE_WEIGHTS:
        red = red * tl.load(Weights + offs_t, mask=col_ok, other=0.0)
    if USE_VALID:
        red = tl.where(tl.load(Valid + off_b * n_tokens + offs_t, mask=col_ok, other=0.0) != 0.0, red, 0.0)
    tl.store(Scores + off_b * n_tokens + offs_t, red, mask=col_ok)
