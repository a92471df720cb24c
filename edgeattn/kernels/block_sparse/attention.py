"""Block-sparse flash attention over a list of key blocks per (batch, key/value head, query block).

Semantics: ``edgeattn.BlockSparseAttention`` (``plugins/block_sparse_attention/reference.py``) for the
block layouts (select, mask: a block list) and the window layout; of the token ``mask`` input, the
key-only form (a padding mask, ``[B or 1, 1, 1, Lkv]``) as an additive ``KeyBias``.
This file imports only triton.

Geometry (as in the reference): query row i sits at position ``offset + i``; blocks of ``BLOCK``
positions are aligned to positions, so query block ``T`` holds the rows with ``pos // BLOCK == T``
(the first block may start before row 0: ``first_block = offset // BLOCK``) and key block ``j`` the
keys ``[j·BLOCK, (j+1)·BLOCK) ∩ [0, kv_len)``. Causal: key ``j`` is visible to the row at ``pos``
iff ``j <= pos``.

``block_sparse_attn_fwd`` — one program per (query block, batch x ``HEADS`` query heads):
    the Q rows of ``HEADS`` query heads of one key/value head (GQA: they share the block list)
    are stacked into one ``HEADS·BLOCK``-row tile that stays in registers; the program walks only
    the kept key blocks — ``LAYOUT`` 0 reads them from ``BlockIdx`` (``BlockCount`` entries, any
    order, padding never read), ``LAYOUT`` 1 computes the window + sinks blocks from the geometry —
    each in ``BLOCK // BLOCK_N`` key tiles: K, V tile -> QK^T (fp32 accumulate) -> online softmax in
    the exp2 domain -> P @ V. A tile gets the element mask (kv tail, causal diagonal, window edge)
    only when some key of it is hidden from some row; every other tile pays for no compare.
    ``RECTIFY`` adds Rectified SpaAttn's correction in the epilogue: ``out·R + Rest``, both
    precomputed per (query head, query block) by the selection kernel.

Rows that see no key write 0 (then ``+ Rest`` with ``RECTIFY``), as the reference does.
Parameter order follows TensorRT's AOT launch convention: input pointers, scalars, output pointers,
then compile-time constants; the float ``sm_scale`` is a runtime argument for torch callers and a
compiled-in constant for TensorRT (``aot.py``).
"""

from __future__ import annotations

import triton
import triton.language as tl

LOG2E: tl.constexpr = tl.constexpr(1.4426950408889634)


@triton.jit(do_not_specialize=["num_q_heads", "num_kv_heads", "q_len", "kv_len", "offset", "first_block", "n_q_blocks",
                               "window", "sinks"])  # fmt: skip
def block_sparse_attn_fwd(
    Q, K, V, KeyBias, BlockIdx, BlockCount, RectMass, RectRest,
    sm_scale,
    stride_qb, stride_qh, stride_qm,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_biasb, stride_biasn,
    stride_ob, stride_oh, stride_om,
    num_q_heads, num_kv_heads, q_len, kv_len, offset, first_block, n_q_blocks, window, sinks,
    Out,
    HEAD_DIM: tl.constexpr, BLOCK: tl.constexpr, BLOCK_N: tl.constexpr, HEADS: tl.constexpr,
    CAUSAL: tl.constexpr, LAYOUT: tl.constexpr, RECTIFY: tl.constexpr, UPCAST_DOT: tl.constexpr = False,
    KEY_BIAS: tl.constexpr = False,
):  # fmt: skip
    """Grid ``(n_q_blocks, B * num_q_heads / HEADS)``; ``HEADS`` divides the GQA group size.

    Q ``[B, Hq, q_len, D]``, K/V ``[B, Hkv, kv_len, D]``, Out like Q (last dim contiguous, any other
    strides). ``LAYOUT`` 0: BlockIdx int32 ``[B, Hkv, n_q_blocks, W]`` (W = cdiv(kv_len, BLOCK)),
    BlockCount int32 ``[B, Hkv, n_q_blocks]``. ``LAYOUT`` 1: the keys ``pos - window < j`` (causal;
    ``|pos - j| < window`` otherwise) and ``j < sinks``. ``RECTIFY``: RectMass fp32
    ``[B, Hq, n_q_blocks]``, RectRest fp32 ``[B, Hq, n_q_blocks, D]``. ``KEY_BIAS``: KeyBias,
    broadcast to ``[B, kv_len]`` by its strides (``stride_biasb``, ``stride_biasn``), is added to the
    scores of every row: the op's key-only (padding) mask, 0 keeps a key and -inf hides it.
    """
    pid_t = tl.program_id(0)
    pid_bh = tl.program_id(1)
    if CAUSAL:
        t = n_q_blocks - 1 - pid_t  # the longest rows first: better tail balance
    else:
        t = pid_t
    programs_per_batch = num_q_heads // HEADS
    off_b = pid_bh // programs_per_batch
    h0 = (pid_bh % programs_per_batch) * HEADS
    kvh = h0 // (num_q_heads // num_kv_heads)
    T = first_block + t

    # HEADS stacked row blocks: row r is row r % BLOCK of the block, for query head h0 + r // BLOCK.
    ROWS: tl.constexpr = HEADS * BLOCK
    offs_r = tl.arange(0, ROWS)
    head = h0 + offs_r // BLOCK
    pos = T * BLOCK + offs_r % BLOCK
    row = pos - offset
    row_ok = (row >= 0) & (row < q_len)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    q_ptrs = (Q + off_b.to(tl.int64) * stride_qb + head[:, None].to(tl.int64) * stride_qh
              + row[:, None].to(tl.int64) * stride_qm + offs_d[None, :])  # fmt: skip
    q = tl.load(q_ptrs, mask=row_ok[:, None], other=0.0)  # padding rows read as 0
    k_base = K + off_b.to(tl.int64) * stride_kb + kvh.to(tl.int64) * stride_kh
    v_base = V + off_b.to(tl.int64) * stride_vb + kvh.to(tl.int64) * stride_vh
    qk_scale = sm_scale * LOG2E
    if KEY_BIAS:
        bias_base = KeyBias + off_b.to(tl.int64) * stride_biasb

    # Positions of the block's real rows: a tile wholly visible to both ends needs no mask.
    p_lo = tl.maximum(T * BLOCK, offset)
    p_hi = tl.minimum(T * BLOCK + BLOCK - 1, offset + q_len - 1)
    n_kv_blocks = tl.cdiv(kv_len, BLOCK)
    if LAYOUT == 0:
        list_row = (off_b * num_kv_heads + kvh) * n_q_blocks + t
        list_ptr = BlockIdx + list_row.to(tl.int64) * n_kv_blocks
        count = tl.load(BlockCount + list_row)
        n_sink = 0
        win_lo = 0
    else:
        # Window + sinks as a block walk: the sink blocks, then the window blocks after them.
        if CAUSAL:
            last = tl.minimum(T, n_kv_blocks - 1)
            win_hi = last
        else:
            last = n_kv_blocks - 1
            win_hi = tl.minimum(last, (p_hi + window - 1) // BLOCK)
        n_sink = tl.minimum(tl.cdiv(sinks, BLOCK), last + 1)
        win_lo = tl.maximum(tl.maximum(p_lo - window + 1, 0) // BLOCK, n_sink)
        count = n_sink + tl.maximum(win_hi - win_lo + 1, 0)

    SUB: tl.constexpr = BLOCK // BLOCK_N
    m_i = tl.full([ROWS], float("-inf"), tl.float32)
    l_i = tl.zeros([ROWS], tl.float32)
    acc = tl.zeros([ROWS, HEAD_DIM], tl.float32)
    for e in range(0, count * SUB):
        entry = e // SUB
        if LAYOUT == 0:
            blk = tl.load(list_ptr + entry)
        else:
            blk = tl.where(entry < n_sink, entry, win_lo + entry - n_sink)
        c0 = blk * BLOCK + (e % SUB) * BLOCK_N
        cols = c0 + offs_n
        # Keys at or past kv_len (tail tile) read as 0; their scores are masked to -inf below.
        kv_ok = cols[:, None] < kv_len
        k = tl.load(k_base + cols[:, None].to(tl.int64) * stride_kn + offs_d[None, :], mask=kv_ok, other=0.0)
        v = tl.load(v_base + cols[:, None].to(tl.int64) * stride_vn + offs_d[None, :], mask=kv_ok, other=0.0)
        if UPCAST_DOT:
            qk = tl.dot(q.to(tl.float32), tl.trans(k.to(tl.float32)), input_precision="ieee")
        else:
            qk = tl.dot(q, tl.trans(k))
        if KEY_BIAS:  # in raw-score units: scale·(qk + m/scale) = scale·qk + m (exact for m = -inf)
            bias = tl.load(bias_base + cols * stride_biasn, mask=cols < kv_len, other=0.0)
            qk = qk + bias.to(tl.float32)[None, :] / sm_scale
        # Does some key of the tile hide from some row? (kv tail, causal diagonal, window edges)
        c1 = c0 + BLOCK_N - 1
        partial = c1 >= kv_len
        if CAUSAL:
            partial = partial | (c1 > p_lo)
        if LAYOUT == 1:
            if CAUSAL:
                inside = c0 > p_hi - window
            else:
                inside = (c0 > p_hi - window) & (c1 < p_lo + window)
            partial = partial | ((c1 >= sinks) & (inside == 0))
        if partial:
            valid = cols[None, :] < kv_len
            if CAUSAL:
                valid = valid & (cols[None, :] <= pos[:, None])
            if LAYOUT == 1:
                if CAUSAL:
                    near = cols[None, :] > pos[:, None] - window
                else:
                    near = (cols[None, :] > pos[:, None] - window) & (cols[None, :] < pos[:, None] + window)
                valid = valid & (near | (cols[None, :] < sinks))
            qk = tl.where(valid, qk, float("-inf"))
        # Online softmax. A row with no visible key yet keeps m = -inf; the exponents use 0 in its
        # place so that exp2(-inf - (-inf)) never makes NaN.
        m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.math.exp2(qk * qk_scale - m_use[:, None])
        alpha = tl.math.exp2(m_i - m_use)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        if UPCAST_DOT:
            acc = tl.dot(p, v.to(tl.float32), acc, input_precision="ieee")
        else:
            acc = tl.dot(p.to(v.dtype), v, acc)  # P @ V in the input precision, fp32 accumulation
        m_i = m_new

    out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]  # rows without a visible key: 0
    if RECTIFY:
        rect_row = (off_b * num_q_heads + head).to(tl.int64) * n_q_blocks + t
        mass = tl.load(RectMass + rect_row, mask=row_ok, other=1.0)
        rest = tl.load(RectRest + rect_row[:, None] * HEAD_DIM + offs_d[None, :], mask=row_ok[:, None], other=0.0)
        out = out * mass[:, None] + rest
    o_ptrs = (Out + off_b.to(tl.int64) * stride_ob + head[:, None].to(tl.int64) * stride_oh
              + row[:, None].to(tl.int64) * stride_om + offs_d[None, :])  # fmt: skip
    tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=row_ok[:, None])
