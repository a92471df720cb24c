"""PyTorch reference for ``edgeattn.SkipSoftmaxAttention`` (BLASST skip-softmax attention).

The reference walks the (query tile, key tile) grid in flash-attention order, exactly as the Triton
kernels do, and counts the tiles it skips. It runs in float64 when given float64 tensors (float32
for every other dtype) and returns the output in the input dtype.

Shapes and positions
    q ``[B, Hq, Lq, D]``, k and v ``[B, Hkv, Lkv, D]``; ``Hq % Hkv == 0`` and query head ``h`` reads
    key/value head ``h // (Hq // Hkv)`` (MHA, GQA and MQA). Query row ``i`` sits at absolute position
    ``Lkv - Lq + i`` (the KV cache holds the past), so with ``causal=True`` it may attend key ``j``
    iff ``j <= Lkv - Lq + i``. A row with no key it may attend (``Lq > Lkv``, causal) outputs zeros.

Tiles
    Query tile ``t`` holds rows ``[t*block_m, min((t+1)*block_m, Lq))``; key tile ``j`` holds keys
    ``[j*block_n, min((j+1)*block_n, Lkv))``. Key tiles are split into ``num_splits`` contiguous
    ranges of ``ceil(n_key_tiles / num_splits)`` tiles (split-K / flash-decoding; the last ranges
    may be short or empty). Each (query tile, split) runs its own online softmax; the splits are
    merged at the end by log-sum-exp. ``num_splits=1`` is plain flash attention.

    A tile is *visited* when it lies in the query tile's key range: every key tile when not causal;
    when causal, key tile ``j`` is visited iff ``j*block_n <= Lkv - Lq + last_row`` (its first key is
    visible to the tile's last row). Tiles entirely above the causal diagonal are neither visited nor
    counted. ``tiles_total`` counts visited tiles, ``tiles_skipped`` the visited tiles skipped.

Skip rule (all in the softmax-logit domain, ``s = scale * q.k``)
    For a visited tile, ``m~_r`` is the max of ``s`` over row ``r``'s valid keys in the tile (keys
    ``< Lkv`` and, if causal, visible to the row), ``-inf`` if it has none; ``m_r`` is the running max
    over the tiles processed before it in the same split (``-inf`` before the first). With
    ``lambda = scale_factor / Lkv`` (``Lkv`` the full key length, not the split's or the causal
    prefix's), the tile is skipped iff it is not the first visited tile of its split and every row
    agrees: ``m~_r - m_r < ln(lambda)`` (BLASST's ``exp(m~ - m) < lambda``), where a row with no valid
    key in the tile (or a padding row past ``Lq``) always agrees and a row with a valid key but
    ``m_r = -inf`` never does.
    ``scale_factor = 0`` gives ``ln(lambda) = -inf``: nothing is skipped (dense attention).
    A skipped tile contributes nothing: no exponentials, no row-sum update, no ``P @ V``, and the
    running max is left as it was. The output is therefore exactly softmax attention over the keys
    of the processed tiles.

Margins
    :func:`skip_margins` returns, per visited tile, ``max_r (m~_r - m_r)`` (``-inf`` for the rows that
    always agree, ``+inf`` for a split's first tile), from a dense walk. For ``lambda <= 1`` a skipped tile can
    never have raised the running max, so the tile is skipped at ``lambda`` iff its margin is
    ``< ln(lambda)``: one dense walk gives the skip count for every threshold (calibration, and
    tests that keep thresholds away from rounding ties).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from ...errors import EdgeAttnError

__all__ = [
    "SkipSoftmaxResult",
    "kv_tiles_per_split",
    "skip_margins",
    "skip_softmax_attention_reference",
    "visited_tiles",
]


class SkipSoftmaxResult(NamedTuple):
    """Output of the op: attention output and per-(batch, query head, query tile) tile counts."""

    out: torch.Tensor
    """``[B, Hq, Lq, D]`` in the query dtype."""
    tiles_skipped: torch.Tensor | None
    """``[B, Hq, n_query_tiles]`` int64 (None when the kernel was asked not to count)."""
    tiles_total: torch.Tensor
    """``[B, Hq, n_query_tiles]`` int64: visited tiles, summed over splits."""

    @property
    def skip_ratio(self) -> float:
        """Skipped / visited tiles over the whole call (0.0 when nothing was visited)."""
        if self.tiles_skipped is None:
            raise EdgeAttnError("this result has no skip counts: call with count_skips=True")
        total = int(self.tiles_total.sum())
        return float(self.tiles_skipped.sum()) / total if total else 0.0


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def kv_tiles_per_split(kv_len: int, block_n: int, num_splits: int) -> int:
    """Key tiles in each split range: ``ceil(ceil(kv_len / block_n) / num_splits)`` (at least 1)."""
    if num_splits < 1:
        raise EdgeAttnError(f"num_splits must be >= 1, got {num_splits}")
    return max(1, _cdiv(_cdiv(kv_len, block_n), num_splits))


def visited_tiles(
    q_len: int, kv_len: int, *, causal: bool, block_m: int, block_n: int, device: torch.device | str | None = None
) -> torch.Tensor:
    """Visited key tiles per query tile (int64 ``[n_query_tiles]``), the same for any split count."""
    n_q_tiles, n_kv_tiles = _cdiv(q_len, block_m), _cdiv(kv_len, block_n)
    if not causal:
        return torch.full((n_q_tiles,), n_kv_tiles, dtype=torch.int64, device=device)
    last_row = torch.clamp(torch.arange(1, n_q_tiles + 1, device=device) * block_m, max=q_len) - 1
    last_pos = kv_len - q_len + last_row
    return torch.where(last_pos >= 0, torch.clamp(last_pos // block_n + 1, max=n_kv_tiles), 0)


def _check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_m: int, block_n: int) -> None:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise EdgeAttnError(
            f"q, k, v must be [B, H, L, D]; got shapes {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if k.shape != v.shape or q.shape[0] != k.shape[0] or q.shape[3] != k.shape[3]:
        raise EdgeAttnError(
            f"k and v must be [B, Hkv, Lkv, D] with q's B and D; got q {tuple(q.shape)}, "
            f"k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    if k.shape[1] == 0 or q.shape[1] % k.shape[1]:
        raise EdgeAttnError(f"query heads ({q.shape[1]}) must be a multiple of key/value heads ({k.shape[1]})")
    if k.shape[2] == 0:
        raise EdgeAttnError("the key/value length is 0: attention over no keys is undefined")
    for name, size in (("block_m", block_m), ("block_n", block_n)):
        if size < 1:
            raise EdgeAttnError(f"{name} must be >= 1, got {size}")


def _ln_lambda(scale_factor: float, kv_len: int) -> float:
    if scale_factor < 0 or not math.isfinite(scale_factor):
        raise EdgeAttnError(f"scale_factor must be finite and >= 0, got {scale_factor}")
    return math.log(scale_factor / kv_len) if scale_factor > 0 else -math.inf


class _Walk(NamedTuple):
    out: torch.Tensor
    skipped: torch.Tensor
    total: torch.Tensor
    margins: torch.Tensor


def _walk(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: float | None,
    causal: bool,
    ln_lambda: float,
    block_m: int,
    block_n: int,
    num_splits: int,
) -> _Walk:
    """Flash-attention tile walk shared by the reference and :func:`skip_margins`."""
    _check_inputs(q, k, v, block_m, block_n)
    batch, q_heads, q_len, head_dim = q.shape
    kv_heads, kv_len = k.shape[1], k.shape[2]
    cdtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    scale = 1.0 / math.sqrt(head_dim) if scale is None else float(scale)
    n_q_tiles, n_kv_tiles = _cdiv(q_len, block_m), _cdiv(kv_len, block_n)
    per_split = kv_tiles_per_split(kv_len, block_n, num_splits)
    dev = q.device

    # Expand key/value heads to query heads (GQA: head h reads kv head h // group).
    group = q_heads // kv_heads
    kx = k.to(cdtype).repeat_interleave(group, dim=1)
    vx = v.to(cdtype).repeat_interleave(group, dim=1)
    # Query rows padded to whole tiles: [B, H, n_q_tiles, block_m, D].
    qp = torch.zeros(batch, q_heads, n_q_tiles * block_m, head_dim, dtype=cdtype, device=dev)
    qp[:, :, :q_len] = q.to(cdtype)
    qp = qp.view(batch, q_heads, n_q_tiles, block_m, head_dim)

    rows = torch.arange(n_q_tiles * block_m, device=dev).view(n_q_tiles, block_m)
    row_valid = rows < q_len
    row_pos = kv_len - q_len + rows  # absolute position of each query row
    n_visited = visited_tiles(q_len, kv_len, causal=causal, block_m=block_m, block_n=block_n, device=dev)

    neg_inf = torch.tensor(-math.inf, dtype=cdtype, device=dev)
    state_shape = (batch, q_heads, n_q_tiles, block_m)
    skipped = torch.zeros(batch, q_heads, n_q_tiles, dtype=torch.int64, device=dev)
    total = torch.zeros_like(skipped)
    margins = torch.full((batch, q_heads, n_q_tiles, n_kv_tiles), math.nan, dtype=torch.float64, device=dev)
    partial_out, partial_lse = [], []
    m = l = acc = None

    for j in range(n_kv_tiles):
        first = j % per_split == 0
        if first:
            if m is not None:
                partial_out.append(_normalise(acc, l))
                partial_lse.append(_lse(m, l))
            m = torch.full(state_shape, -math.inf, dtype=cdtype, device=dev)
            l = torch.zeros(state_shape, dtype=cdtype, device=dev)
            acc = torch.zeros(*state_shape, head_dim, dtype=cdtype, device=dev)
        keys = torch.arange(j * block_n, min((j + 1) * block_n, kv_len), device=dev)
        valid = row_valid[:, :, None].expand(-1, -1, keys.numel())  # [n_q_tiles, block_m, n_keys]
        if causal:
            valid = valid & (keys[None, None, :] <= row_pos[:, :, None])
        visited = j < n_visited  # [n_q_tiles]

        s = torch.einsum("bhtmd,bhnd->bhtmn", qp, kx[:, :, keys]) * scale
        s = torch.where(valid, s, neg_inf)
        m_tile = s.amax(dim=-1)
        # Row log-ratio m~ - m: -inf for rows without a valid key (they always agree).
        diff = torch.where(m_tile == -math.inf, neg_inf, m_tile - m)
        margin = torch.full_like(skipped, math.inf, dtype=torch.float64) if first else diff.amax(-1).double()
        margins[..., j] = torch.where(visited, margin, math.nan)
        skip = visited & (margin < ln_lambda)
        process = visited & ~skip
        total += visited
        skipped += skip

        m, l, acc = _online_softmax(s, m_tile, vx[:, :, keys], m, l, acc, process)

    partial_out.append(_normalise(acc, l))
    partial_lse.append(_lse(m, l))
    out = _merge(partial_out, partial_lse)
    out = out.reshape(batch, q_heads, n_q_tiles * block_m, head_dim)[:, :, :q_len]
    return _Walk(out, skipped, total, margins)


def _online_softmax(
    s: torch.Tensor,
    m_tile: torch.Tensor,
    v_tile: torch.Tensor,
    m: torch.Tensor,
    l: torch.Tensor,
    acc: torch.Tensor,
    process: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One tile of the online softmax, applied where ``process`` ([B, H, n_q_tiles]) is set.
    Rows without a valid key so far keep ``m = -inf``; exponents use 0 in its place (no NaN)."""
    m_new = torch.maximum(m, m_tile)
    m_use = torch.where(m_new == -math.inf, 0.0, m_new)
    p = torch.exp(s - m_use[..., None])
    alpha = torch.exp(m - m_use)
    upd = process[..., None]  # [B, H, n_q_tiles, 1]
    l = torch.where(upd, l * alpha + p.sum(-1), l)
    acc = torch.where(upd[..., None], acc * alpha[..., None] + p @ v_tile[:, :, None], acc)
    return torch.where(upd, m_new, m), l, acc


def _normalise(acc: torch.Tensor, l: torch.Tensor) -> torch.Tensor:
    return acc / torch.where(l > 0, l, 1.0)[..., None]  # rows with nothing processed stay 0


def _lse(m: torch.Tensor, l: torch.Tensor) -> torch.Tensor:
    return torch.where(l > 0, m + torch.log(torch.where(l > 0, l, 1.0)), -math.inf)


def _merge(partial_out: list[torch.Tensor], partial_lse: list[torch.Tensor]) -> torch.Tensor:
    """Log-sum-exp merge of per-split results: split ``s`` (normalised output ``o_s``,
    ``lse_s = m_s + ln l_s``) gets weight ``exp(lse_s - max_s lse_s)``. Rows with no processed key
    in any split give zeros."""
    lse = torch.stack(partial_lse)  # [S, ...rows]
    top = lse.amax(0)
    top = torch.where(top == -math.inf, 0.0, top)
    w = torch.exp(lse - top)  # 0 for empty splits
    num = (w[..., None] * torch.stack(partial_out)).sum(0)
    den = w.sum(0)
    return num / torch.where(den > 0, den, 1.0)[..., None]


def skip_softmax_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: float | None = None,
    causal: bool = False,
    scale_factor: float = 0.0,
    block_m: int = 128,
    block_n: int = 64,
    num_splits: int = 1,
) -> SkipSoftmaxResult:
    """BLASST skip-softmax attention, tile by tile (see the module docstring for every rule).

    ``scale`` defaults to ``1/sqrt(D)``; ``scale_factor`` gives ``lambda = scale_factor / Lkv``
    (0 = dense). Returns ``(out, tiles_skipped, tiles_total)`` with counts per
    ``[B, Hq, n_query_tiles]`` summed over splits.
    """
    walk = _walk(
        q,
        k,
        v,
        scale=scale,
        causal=causal,
        ln_lambda=_ln_lambda(scale_factor, k.shape[2]),
        block_m=block_m,
        block_n=block_n,
        num_splits=num_splits,
    )
    return SkipSoftmaxResult(walk.out.to(q.dtype), walk.skipped, walk.total)


def skip_margins(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: float | None = None,
    causal: bool = False,
    block_m: int = 128,
    block_n: int = 64,
    num_splits: int = 1,
) -> torch.Tensor:
    """Per-tile skip margins ``[B, Hq, n_query_tiles, n_kv_tiles]`` (float64) from a dense walk.

    NaN marks tiles not visited, ``+inf`` a split's first tile. For ``scale_factor <= Lkv`` a tile
    is skipped iff ``margin < ln(scale_factor / Lkv)``.
    """
    return _walk(
        q, k, v, scale=scale, causal=causal, ln_lambda=-math.inf, block_m=block_m, block_n=block_n,
        num_splits=num_splits,
    ).margins
