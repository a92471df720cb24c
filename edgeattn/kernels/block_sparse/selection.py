"""Block scoring and selection: pooled Q/K block scores -> the list of key blocks of each query block.

Semantics: ``edgeattn.BlockSelect`` (``plugins/block_select/reference.py``: read its docstring for the
geometry, pooling, softmax over available blocks, grouping, forced blocks, dense rows and the three
modes), plus the Rectified SpaAttn terms of ``edgeattn.BlockSparseAttention``. Imports only triton.

Two launches (three with query_pool "rows"):

``block_pool_fwd`` — grid ``(n_q_blocks·Hq·POOL_Q + n_kv_blocks·Hkv·(1 + POOL_V), B)``: each program reads
    one block of Q, K or V once (``ROWS`` rows at a time) and writes its pool in fp32: the mean of
    the query rows -> QBar ``[B, Hq, nQB, D]``; the mean / max / min of the keys (``KEY_POOL`` 0/1/2)
    -> KBarT ``[B, Hkv, D, nKB]`` (transposed: the selection reads one channel of every block at a
    time); with ``POOL_V`` the mean of the values -> VBarT ``[B, Hkv, D, nKB]`` (rectify only).

``block_row_probs_fwd`` — query_pool "rows" only: per (query block, query head) the mean over the
    block's rows of their softmax against the pooled keys -> Probs ``[B, Hq, nQB, nKB]``.

``block_select_fwd`` — grid ``(cdiv(nQB, BT), B·Hkv)``: ``BT`` query blocks x the ``GROUP_P2``
    query heads of one key/value head are the ``ROWS`` rows of a score tile ``[ROWS, NKB_P2]`` that
    spans every key block (``NKB_P2`` = nKB rounded up to a power of two) and stays in registers:
    scores by an outer-product loop over the channels (fp32, exact order-independent of tiling),
    softmax over the available blocks per query head, mean/max over the heads of the group, then
    per query block the selection on the GPU:
      topk / cumprob: every available block gets a unique int64 key ``(forced, P bits, -index)``
        (fp32 bits of a non-negative float order like the float) that orders blocks as the
        reference does (forced first, then by P, ties to the lower index); the rule keeps a prefix
        of that order (the first ``budget``, or those with mass before them < ``cum_prob``), which
        is every key >= a threshold found bit by bit (radix select: no sort, so compile time and
        registers stay small and the kernel needs nothing newer than Triton 3.0);
      threshold: ``P > threshold``; given (MODE 3): the ``MaskIn`` blocks (layout "mask").
    Forced blocks and dense rows apply as in the reference. Output: the kept blocks in ascending
    order, padded with -1 (``BlockIdx`` int32 ``[B, Hkv, nQB, nKB]``), their number (``BlockCount``),
    optionally the bool mask (``BlockMask`` uint8 ``[B, Hkv, nQB, nKB]``) and, with ``RECTIFY``,
    per query head R = Σ_kept P (``RectMass``) and Σ_{available, not kept} P_j·V̄_j (``RectRest``).

Parameter order follows TensorRT's AOT launch convention (inputs, scalars, outputs, constants);
the floats (``sm_scale``, ``threshold``, ``cum_prob``) are compiled in for TensorRT (``aot.py``).
"""

from __future__ import annotations

import triton
import triton.language as tl

LOG2E: tl.constexpr = tl.constexpr(1.4426950408889634)


@triton.jit
def _pool_rows(base, stride_m, lo, hi, offs_d, ROWS: tl.constexpr, HEAD_DIM: tl.constexpr, POOL: tl.constexpr):
    """Mean (0), max (1) or min (2) over rows [lo, hi) of a [L, HEAD_DIM] slab, in fp32."""
    offs_r = tl.arange(0, ROWS)
    if POOL == 0:
        acc = tl.zeros([HEAD_DIM], tl.float32)
    elif POOL == 1:
        acc = tl.full([HEAD_DIM], float("-inf"), tl.float32)
    else:
        acc = tl.full([HEAD_DIM], float("inf"), tl.float32)
    for r0 in range(lo, hi, ROWS):
        rows = r0 + offs_r
        ok = rows[:, None] < hi
        x = tl.load(base + rows[:, None].to(tl.int64) * stride_m + offs_d[None, :], mask=ok, other=0.0)
        x = x.to(tl.float32)
        if POOL == 0:
            acc += tl.sum(x, 0)
        elif POOL == 1:
            acc = tl.maximum(acc, tl.max(tl.where(ok, x, float("-inf")), 0))
        else:
            acc = tl.minimum(acc, tl.min(tl.where(ok, x, float("inf")), 0))
    if POOL == 0:
        acc = acc / tl.maximum(hi - lo, 1).to(tl.float32)
    return acc


@triton.jit(do_not_specialize=["num_q_heads", "num_kv_heads", "q_len", "kv_len", "front", "n_q_blocks", "n_kv_blocks"])
def block_pool_fwd(
    Q, K, V,
    stride_qb, stride_qh, stride_qm,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    num_q_heads, num_kv_heads, q_len, kv_len, front, n_q_blocks, n_kv_blocks,
    QBar, KBarT, VBarT,
    HEAD_DIM: tl.constexpr, BLOCK: tl.constexpr, ROWS: tl.constexpr, KEY_POOL: tl.constexpr,
    POOL_Q: tl.constexpr, POOL_V: tl.constexpr,
):  # fmt: skip
    """``front``: rows before query row 0 in its block (``offset - first_block·BLOCK``).
    Without ``POOL_Q`` (query_pool "rows") the grid starts at the key blocks."""
    pid = tl.program_id(0)
    off_b = tl.program_id(1).to(tl.int64)
    offs_d = tl.arange(0, HEAD_DIM)
    if POOL_Q:
        n_qp = n_q_blocks * num_q_heads
    else:
        n_qp = 0
    n_kp = n_kv_blocks * num_kv_heads
    if pid >= n_qp:  # key (then value) blocks; the Q branch is compiled only with POOL_Q
        pk = pid - n_qp
        if pk < n_kp:
            h = pk // n_kv_blocks
            j = pk % n_kv_blocks
            base = K + off_b * stride_kb + h.to(tl.int64) * stride_kh
            x = _pool_rows(base, stride_kn, j * BLOCK, tl.minimum(j * BLOCK + BLOCK, kv_len), offs_d, ROWS, HEAD_DIM,
                           KEY_POOL)  # fmt: skip
            tl.store(KBarT + ((off_b * num_kv_heads + h) * HEAD_DIM + offs_d) * n_kv_blocks + j, x)
        elif POOL_V:
            h = (pk - n_kp) // n_kv_blocks
            j = (pk - n_kp) % n_kv_blocks
            base = V + off_b * stride_vb + h.to(tl.int64) * stride_vh
            x = _pool_rows(base, stride_vn, j * BLOCK, tl.minimum(j * BLOCK + BLOCK, kv_len), offs_d, ROWS, HEAD_DIM, 0)
            tl.store(VBarT + ((off_b * num_kv_heads + h) * HEAD_DIM + offs_d) * n_kv_blocks + j, x)
    elif POOL_Q:
        h = pid // n_q_blocks
        t = pid % n_q_blocks
        lo = tl.maximum(t * BLOCK - front, 0)
        hi = tl.minimum(t * BLOCK + BLOCK - front, q_len)
        base = Q + off_b * stride_qb + h.to(tl.int64) * stride_qh
        x = _pool_rows(base, stride_qm, lo, hi, offs_d, ROWS, HEAD_DIM, 0)
        tl.store(QBar + ((off_b * num_q_heads + h) * n_q_blocks + t) * HEAD_DIM + offs_d, x)


@triton.jit
def _row_scores(q_rows, row_ok, k_cols, n, n_kv_blocks, avail, qk_scale, BLOCK: tl.constexpr, HEAD_DIM: tl.constexpr,
                DC: tl.constexpr):  # fmt: skip
    """scale·log2(e)·q_r·k̄_j for the block's rows and a chunk of key blocks, -inf where unavailable:
    fp32 (IEEE) dots over ``DC`` channels at a time (Q rows re-read from cache, few registers)."""
    offs_dc = tl.arange(0, DC)
    s = tl.zeros([BLOCK, n.shape[0]], tl.float32)
    for d0 in range(0, HEAD_DIM, DC):
        q = tl.load(q_rows + d0 + offs_dc[None, :], mask=row_ok[:, None], other=0.0).to(tl.float32)
        kt = tl.load(k_cols + (d0 + offs_dc[:, None]) * n_kv_blocks + n[None, :], mask=n[None, :] < n_kv_blocks,
                     other=0.0)  # fmt: skip
        s = tl.dot(q, kt, s, input_precision="ieee")
    return tl.where(avail, s * qk_scale, float("-inf"))


@triton.jit(do_not_specialize=["num_q_heads", "num_kv_heads", "q_len", "front", "first_block", "n_q_blocks",
                               "n_kv_blocks"])  # fmt: skip
def block_row_probs_fwd(
    Q, KBarT,
    sm_scale,
    stride_qb, stride_qh, stride_qm,
    num_q_heads, num_kv_heads, q_len, front, first_block, n_q_blocks, n_kv_blocks,
    Probs,
    HEAD_DIM: tl.constexpr, BLOCK: tl.constexpr, KC: tl.constexpr, CAUSAL: tl.constexpr,
):  # fmt: skip
    """query_pool "rows": grid ``(n_q_blocks, B·Hq)``; Probs fp32 ``[B, Hq, nQB, nKB]`` = the mean over
    the block's query rows of each row's softmax of scale·q_r·k̄ over the available key blocks.
    Two passes over the key blocks in chunks of ``KC`` (running max/sum per row, then the mean of the
    normalised rows), fp32 (IEEE) dots against the fp32 pooled keys."""
    DC: tl.constexpr = 32 if HEAD_DIM >= 32 else HEAD_DIM
    t = tl.program_id(0)
    pid_bh = tl.program_id(1)
    off_b = (pid_bh // num_q_heads).to(tl.int64)
    h = pid_bh % num_q_heads
    kvh = h // (num_q_heads // num_kv_heads)
    offs_r = tl.arange(0, BLOCK)
    offs_c = tl.arange(0, KC)
    rows = t * BLOCK + offs_r - front
    row_ok = (rows >= 0) & (rows < q_len)
    q_rows = Q + off_b * stride_qb + h.to(tl.int64) * stride_qh + rows[:, None].to(tl.int64) * stride_qm
    k_cols = KBarT + (off_b * num_kv_heads + kvh) * HEAD_DIM * n_kv_blocks
    qk_scale = sm_scale * LOG2E
    last = n_kv_blocks
    if CAUSAL:
        last = tl.minimum(first_block + t + 1, n_kv_blocks)
    m_i = tl.full([BLOCK], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK], tl.float32)
    for c0 in range(0, last, KC):
        n = c0 + offs_c
        s = _row_scores(q_rows, row_ok, k_cols, n, n_kv_blocks, n[None, :] < last, qk_scale, BLOCK, HEAD_DIM, DC)
        m_new = tl.maximum(m_i, tl.max(s, 1))
        l_i = l_i * tl.math.exp2(m_i - m_new) + tl.sum(tl.math.exp2(s - m_new[:, None]), 1)
        m_i = m_new
    inv = tl.where(row_ok, 1.0 / l_i, 0.0) / tl.sum(row_ok.to(tl.float32), 0)
    out = Probs + ((off_b * num_q_heads + h) * n_q_blocks + t) * n_kv_blocks
    for c0 in range(0, n_kv_blocks, KC):
        n = c0 + offs_c
        s = _row_scores(q_rows, row_ok, k_cols, n, n_kv_blocks, n[None, :] < last, qk_scale, BLOCK, HEAD_DIM, DC)
        p = tl.math.exp2(s - m_i[:, None]) * inv[:, None]
        tl.store(out + n, tl.sum(p, 0), mask=n < n_kv_blocks)


@triton.jit
def _kept_threshold(key, p, budget, cum_prob, BY_MASS: tl.constexpr):
    """Per row of ``key`` (unique int64 >= 0 per candidate block, -1 for the others), the smallest
    key the rule keeps, found bit by bit (radix select: no sort, 55 masked reductions per row).

    topk: the ``budget``-th largest key (the largest t with at least ``budget`` keys >= t; 0 when
    fewer candidates). cumprob: one above the largest t whose mass of keys > t is still
    >= ``cum_prob`` (a block is kept iff the mass before it in key order is < cum_prob; 0 when the
    whole mass is below cum_prob).
    """
    t = tl.min(key, 1) * 0
    bit = tl.full([], 1 << 54, tl.int64)
    for _ in range(55):
        cand = t | bit
        if BY_MASS:
            ok = tl.sum(tl.where(key > cand[:, None], p, 0.0), 1) >= cum_prob
        else:
            ok = tl.sum((key >= cand[:, None]).to(tl.int32), 1) >= budget
        t = tl.where(ok, cand, t)
        bit = bit >> 1
    if BY_MASS:
        t = tl.where(tl.sum(tl.where(key >= 0, p, 0.0), 1) >= cum_prob, t + 1, 0)
    return t


@triton.jit(do_not_specialize=["num_kv_heads", "kv_group", "q_len", "first_block", "n_q_blocks", "n_kv_blocks", "budget",
                               "local_blocks", "sink_blocks", "dense_last_rows", "dense_decode"])  # fmt: skip
def block_select_fwd(
    QBar, KBarT, Probs, VBarT, MaskIn, DenseHeads,
    sm_scale, threshold, cum_prob,
    num_kv_heads, kv_group, q_len, first_block, n_q_blocks, n_kv_blocks,
    budget, local_blocks, sink_blocks, dense_last_rows, dense_decode,
    BlockIdx, BlockCount, BlockMask, RectMass, RectRest,
    HEAD_DIM: tl.constexpr, GROUP_P2: tl.constexpr, BT: tl.constexpr, NKB_P2: tl.constexpr,
    MODE: tl.constexpr, GROUP_REDUCE: tl.constexpr, CAUSAL: tl.constexpr, RECTIFY: tl.constexpr,
    STORE_MASK: tl.constexpr, USE_DENSE_HEADS: tl.constexpr, PROBS_IN: tl.constexpr = False,
):  # fmt: skip
    """MODE 0 topk, 1 threshold, 2 cumprob, 3 given (``MaskIn`` uint8 ``[B, Hkv, nQB, nKB]``);
    GROUP_REDUCE 0 mean, 1 max. ``DenseHeads`` int32 ``[Hkv]``: nonzero = every available block.
    ``PROBS_IN`` (query_pool "rows"): the per-head block probabilities come from ``Probs``
    (``block_row_probs_fwd``) instead of the pooled queries ``QBar``."""
    pid_t = tl.program_id(0)
    pid_bh = tl.program_id(1)
    off_b = pid_bh // num_kv_heads
    kvh = pid_bh % num_kv_heads
    num_q_heads = num_kv_heads * kv_group
    offs_n = tl.arange(0, NKB_P2)
    col_ok = offs_n < n_kv_blocks

    # Per query block (the selection) ...
    t_b = pid_t * BT + tl.arange(0, BT)
    blk_ok = t_b < n_q_blocks
    T_b = first_block + t_b
    if CAUSAL:
        avail = col_ok[None, :] & (offs_n[None, :] <= T_b[:, None])
    else:
        avail = col_ok[None, :] & (t_b[:, None] >= 0)
    # ... and per (query block, query head of the group) row (the scores).
    ROWS: tl.constexpr = BT * GROUP_P2
    offs_r = tl.arange(0, ROWS)
    g = offs_r % GROUP_P2
    t_r = pid_t * BT + offs_r // GROUP_P2
    row_ok = (g < kv_group) & (t_r < n_q_blocks)
    head = kvh * kv_group + g
    if CAUSAL:
        avail_r = col_ok[None, :] & (offs_n[None, :] <= (first_block + t_r)[:, None])
    else:
        avail_r = col_ok[None, :] & (t_r[:, None] >= 0)

    NEED_PROBS: tl.constexpr = (MODE != 3) or RECTIFY
    if PROBS_IN:
        p_ptrs = Probs + ((off_b * num_q_heads + head).to(tl.int64) * n_q_blocks + t_r)[:, None] * n_kv_blocks
        probs = tl.load(p_ptrs + offs_n[None, :], mask=row_ok[:, None] & col_ok[None, :], other=0.0)
    elif NEED_PROBS:
        # s = q̄·k̄ for every (row, key block): one channel at a time (an outer product), fp32.
        s = tl.zeros([ROWS, NKB_P2], tl.float32)
        q_row = QBar + ((off_b * num_q_heads + head).to(tl.int64) * n_q_blocks + t_r) * HEAD_DIM
        k_row = KBarT + (off_b * num_kv_heads + kvh).to(tl.int64) * HEAD_DIM * n_kv_blocks
        for d in range(HEAD_DIM):
            qd = tl.load(q_row + d, mask=row_ok, other=0.0)
            kd = tl.load(k_row + d * n_kv_blocks + offs_n, mask=col_ok, other=0.0)
            s += qd[:, None] * kd[None, :]
        # Softmax over the available blocks, per query head (exp2 domain).
        s = tl.where(avail_r, s * (sm_scale * LOG2E), float("-inf"))
        m = tl.max(s, 1)
        p = tl.math.exp2(s - tl.where(m == float("-inf"), 0.0, m)[:, None])
        denom = tl.sum(p, 1)
        probs = p / tl.where(denom == 0.0, 1.0, denom)[:, None]  # [ROWS, NKB_P2], >= +0

    if MODE == 3:
        mask_ptrs = MaskIn + ((off_b * num_kv_heads + kvh) * n_q_blocks + t_b)[:, None].to(tl.int64) * n_kv_blocks
        chosen = tl.load(mask_ptrs + offs_n[None, :], mask=blk_ok[:, None] & col_ok[None, :], other=0) != 0
        sel = chosen & avail
    else:
        # Group the query heads of this key/value head: mean or max of their probabilities.
        p3 = tl.reshape(probs, [BT, GROUP_P2, NKB_P2])
        head_ok = (tl.arange(0, GROUP_P2) < kv_group)[None, :, None]
        if GROUP_REDUCE == 0:
            pg = tl.sum(tl.where(head_ok, p3, 0.0), 1) / kv_group
        else:
            pg = tl.max(tl.where(head_ok, p3, 0.0), 1)
        # Forced blocks: local (ending at the diagonal) and sinks, when available.
        if CAUSAL:
            local = (offs_n[None, :] <= T_b[:, None]) & (offs_n[None, :] > T_b[:, None] - local_blocks)
        else:
            dist = offs_n[None, :] - T_b[:, None]
            local = (dist < local_blocks) & (dist > -local_blocks)
        forced = (local | (offs_n[None, :] < sink_blocks)) & avail
        if MODE == 1:
            chosen = pg > threshold
        else:
            # Unique keys in the reference's order: forced first, then by P (fp32 bits of a
            # non-negative float order like the float), equal P to the lower block index.
            pg = tl.where(pg > 0.0, pg, 0.0)
            p_bits = pg.to(tl.int32, bitcast=True).to(tl.int64)
            key = forced.to(tl.int64) * (1 << 54) + (1 << 53) + p_bits * (1 << 22) + ((1 << 22) - 1 - offs_n[None, :])
            key = tl.where(avail, key, -1)
            chosen = key >= _kept_threshold(key, pg, budget, cum_prob, MODE == 2)[:, None]
        sel = (chosen | forced) & avail
        dense = t_b >= n_q_blocks - dense_last_rows
        dense = dense | ((dense_decode != 0) & (q_len == 1))
        sel = sel | (dense[:, None] & avail)
    if USE_DENSE_HEADS:
        sel = sel | ((tl.load(DenseHeads + kvh) != 0) & avail)

    # The kept blocks, ascending, then -1: slot = rank among the kept, or count + rank among the rest.
    sel_i = sel.to(tl.int32)
    count = tl.sum(sel_i, 1)
    inclusive = tl.cumsum(sel_i, 1)
    slot = tl.where(sel, inclusive - 1, count[:, None] + offs_n[None, :] - inclusive)
    list_row = ((off_b * num_kv_heads + kvh) * n_q_blocks + t_b).to(tl.int64)
    store_ok = blk_ok[:, None] & col_ok[None, :]
    tl.store(BlockIdx + list_row[:, None] * n_kv_blocks + slot, tl.where(sel, offs_n[None, :], -1), mask=store_ok)
    tl.store(BlockCount + list_row, count, mask=blk_ok)
    if STORE_MASK:
        tl.store(BlockMask + list_row[:, None] * n_kv_blocks + offs_n[None, :], sel.to(tl.int8), mask=store_ok)

    if RECTIFY:
        # Per query head: R = Σ_kept P; Rest = Σ_{available, not kept} P_j·V̄_j (a channel at a time).
        sel_r = tl.reshape(tl.broadcast_to(sel[:, None, :], [BT, GROUP_P2, NKB_P2]), [ROWS, NKB_P2])
        mass = tl.sum(tl.where(sel_r, probs, 0.0), 1)
        rest_w = tl.where(avail_r & (sel_r == 0), probs, 0.0)
        rect_row = (off_b * num_q_heads + head).to(tl.int64) * n_q_blocks + t_r
        tl.store(RectMass + rect_row, mass, mask=row_ok)
        v_row = VBarT + (off_b * num_kv_heads + kvh).to(tl.int64) * HEAD_DIM * n_kv_blocks
        for d in range(HEAD_DIM):
            vd = tl.load(v_row + d * n_kv_blocks + offs_n, mask=col_ok, other=0.0)
            tl.store(RectRest + rect_row * HEAD_DIM + d, tl.sum(rest_w * vd[None, :], 1), mask=row_ok)
