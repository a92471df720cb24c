"""PyTorch reference of edgeattn.BlockSparseAttention.

    Y = softmax(scale·QKᵀ + mask + causal, restricted to the visible keys) V

Which keys are visible to query row i (position p_i, blocks as in BlockSelect's reference):
- layout "select": key j is visible iff its block is selected for (i's query block, i's key/value
  head) by BlockSelect with the op's selection attributes (computed from Q and K);
- layout "mask": iff block_mask[b, kv head, i's query block, j // block] (the block_mask input,
  bool [B, Hkv or 1, nQB, nKB]);
- layout "window": iff p_i - window < j (causal; |p_i - j| < window without causal), or j < sinks.
With `heads` set, only the listed key/value heads (and their query heads) follow the layout; the
others see every key (a dense head keeps every block, also for rectify).
Then the causal rule (keys j > p_i are hidden) and the mask input apply as in edgeattn.Attention.
A row that sees no key outputs zeros.

rectify = 1 (Rectified SpaAttn, layouts select and mask): per query head and query block, with P the
block probabilities of BlockSelect's reference (per query head), R = Σ P over the kept blocks and
V̄_j the mean of V over key block j: Y ← Y·R + Σ_{available j not kept} P_j·V̄_j.

The optional second output is the density: the (query, key) pairs computed over the pairs the
causal rule and the mask leave visible, over the whole call.
"""

from __future__ import annotations

import math

import torch

from edgeattn.errors import EdgeAttnError
from edgeattn.ops.block_select.reference import (
    Geometry,
    available_blocks,
    block_geometry,
    block_probabilities,
    check_selection,
    group_probabilities,
    row_blocks,
    select_blocks,
    split_heads,
)

LAYOUTS = ("select", "mask", "window")


def chosen_blocks(
    geo: Geometry, layout: str, block_mask: torch.Tensor | None, attrs: dict, probs: torch.Tensor | None,
    batch: int, kv_heads: int,
) -> torch.Tensor:
    """[B, Hkv, nQB, nKB] bool: the blocks a block layout (select or mask) keeps."""
    if layout == "select":
        check_selection({k_: attrs[k_] for k_ in ("mode", "keep", "keep_blocks", "cum_prob", "local_blocks",
                                                   "sink_blocks", "dense_last_rows")})
        grouped = group_probabilities(probs, kv_heads, attrs["group_reduce"])
        return select_blocks(grouped, geo, **{k_: attrs[k_] for k_ in (
            "mode", "keep", "keep_blocks", "threshold", "cum_prob", "local_blocks", "sink_blocks",
            "dense_last_rows", "dense_decode")})
    if layout == "mask":
        if block_mask is None:
            raise EdgeAttnError("layout 'mask' needs the block_mask input")
        return block_mask.to(torch.bool).expand(batch, kv_heads, geo.n_q_blocks, geo.n_kv_blocks)
    raise EdgeAttnError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")


def window_visible(geo: Geometry, window: int, sinks: int) -> torch.Tensor:
    """[Lq, Lkv] bool: the window and sink keys of each query (before the causal rule)."""
    if window < 1 or sinks < 0:
        raise EdgeAttnError(f"window must be >= 1 and sinks >= 0, got {window} and {sinks}")
    pos = geo.offset + torch.arange(geo.q_len)[:, None]
    keys = torch.arange(geo.kv_len)[None, :]
    near = (keys > pos - window) if geo.causal else (keys - pos).abs() < window
    return near | (keys < sinks)


def tokens_of_blocks(chosen: torch.Tensor, geo: Geometry, group: int) -> torch.Tensor:
    """[B, Hkv, nQB, nKB] -> [B, Hq, Lq, Lkv]: each query head reads its key/value head's blocks."""
    rows = row_blocks(geo)
    cols = torch.arange(geo.kv_len) // geo.block
    return chosen.repeat_interleave(group, dim=1)[:, :, rows][:, :, :, cols]


def dense_heads(heads: tuple[int, ...] | list[int], kv_heads: int) -> torch.Tensor:
    """[Hkv] bool: key/value heads outside `heads` (all False when `heads` is empty)."""
    if any(h >= kv_heads or h < 0 for h in heads):
        raise EdgeAttnError(f"heads {list(heads)} name key/value heads the model lacks (it has {kv_heads})")
    dense = torch.ones(kv_heads, dtype=torch.bool) if heads else torch.zeros(kv_heads, dtype=torch.bool)
    dense[list(heads)] = False
    return dense


def causal_visible(geo: Geometry) -> torch.Tensor:
    pos = geo.offset + torch.arange(geo.q_len)[:, None]
    keys = torch.arange(geo.kv_len)[None, :]
    return keys <= pos if geo.causal else torch.ones(geo.q_len, geo.kv_len, dtype=torch.bool)


def block_sparse_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    block_mask: torch.Tensor | None = None,
    *,
    scale: float = 0.0,
    causal: int = 0,
    q_num_heads: int = 0,
    kv_num_heads: int = 0,
    softmax_precision: int = 0,
    layout: str = "select",
    block_size: int = 64,
    mode: str = "topk",
    keep: float = 0.25,
    keep_blocks: int = 0,
    threshold: float = 0.01,
    cum_prob: float = 0.9,
    query_pool: str = "mean",
    key_pool: str = "mean",
    group_reduce: str = "mean",
    local_blocks: int = 1,
    sink_blocks: int = 1,
    dense_last_rows: int = 0,
    dense_decode: int = 1,
    window: int = 256,
    sinks: int = 4,
    heads: tuple[int, ...] | list[int] = (),
    rectify: int = 0,
    compute_dtype: torch.dtype | None = torch.float64,
    with_density: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Y (and the density when `with_density`), computed in `compute_dtype`, returned in Q's type."""
    out_dtype = q.dtype
    rank = q.dim()
    if rank == 3:
        kv_heads = kv_num_heads or q_num_heads
        q, k, v = split_heads(q, q_num_heads), split_heads(k, kv_heads), split_heads(v, kv_heads)
    if compute_dtype is not None:
        q, k, v = q.to(compute_dtype), k.to(compute_dtype), v.to(compute_dtype)
    attrs = dict(mode=mode, keep=keep, keep_blocks=keep_blocks, threshold=threshold, cum_prob=cum_prob,
                 group_reduce=group_reduce, local_blocks=local_blocks, sink_blocks=sink_blocks,
                 dense_last_rows=dense_last_rows, dense_decode=dense_decode, window=window, sinks=sinks)
    geo = block_geometry(q.shape[2], k.shape[2], block_size, causal)
    group = q.shape[1] // k.shape[1]
    factor = scale if scale > 0 else 1.0 / math.sqrt(q.shape[-1])
    probs = chosen = None
    if layout == "window":
        layout_visible = window_visible(geo, window, sinks)[None, None]
    else:
        probs = block_probabilities(q, k, geo, scale, key_pool, query_pool) if layout == "select" or rectify else None
        chosen = chosen_blocks(geo, layout, block_mask, attrs, probs, q.shape[0], k.shape[1])
        chosen = chosen | dense_heads(heads, k.shape[1])[None, :, None, None]
        layout_visible = tokens_of_blocks(chosen, geo, group)
    if layout == "window":
        layout_visible = layout_visible | dense_heads(heads, k.shape[1]).repeat_interleave(group)[None, :, None, None]
    scores = torch.matmul(q, k.repeat_interleave(group, dim=1).transpose(-1, -2)) * factor
    allowed = causal_visible(geo)[None, None]
    if mask is not None:
        if mask.dtype == torch.bool:
            allowed = allowed & mask
        else:
            scores = scores + mask.to(scores.dtype)
            allowed = allowed & (mask > -math.inf)
    visible = allowed & layout_visible
    probs_tok = torch.softmax(scores.masked_fill(~visible, -math.inf), dim=-1)
    probs_tok = torch.nan_to_num(probs_tok, nan=0.0)
    out = torch.matmul(probs_tok, v.repeat_interleave(group, dim=1))
    if rectify and chosen is not None:
        out = _rectify(out, probs, chosen.repeat_interleave(group, dim=1), v, geo, group)
    density = visible.expand_as(scores).sum() / torch.clamp(allowed.expand_as(scores).sum(), min=1)
    if rank == 3:
        out = out.transpose(1, 2).reshape(out.shape[0], out.shape[2], -1)
    out = out.to(out_dtype)
    return (out, density.to(torch.float32)) if with_density else out


def _rectify(out: torch.Tensor, probs: torch.Tensor, kept: torch.Tensor, v: torch.Tensor, geo: Geometry,
             group: int) -> torch.Tensor:
    """Y·R + Σ_{available, not kept} P_j·V̄_j per query head and query block."""
    available = available_blocks(geo)
    kept = kept & available
    mass = (probs * kept).sum(-1, keepdim=True)  # [B, Hq, nQB, 1]
    padded_len = geo.n_kv_blocks * geo.block
    v_pad = torch.zeros(v.shape[0], v.shape[1], padded_len, v.shape[3], dtype=v.dtype)
    v_pad[:, :, : geo.kv_len] = v
    counts = torch.clamp(geo.kv_len - torch.arange(geo.n_kv_blocks) * geo.block, max=geo.block).to(v.dtype)
    v_bar = v_pad.view(v.shape[0], v.shape[1], geo.n_kv_blocks, geo.block, -1).sum(3) / counts[:, None]
    v_bar = v_bar.repeat_interleave(group, dim=1)  # [B, Hq, nKB, dv]
    rest = torch.matmul(probs * (~kept & available), v_bar)  # [B, Hq, nQB, dv]
    rows = row_blocks(geo)
    return out * mass[:, :, rows] + rest[:, :, rows]
