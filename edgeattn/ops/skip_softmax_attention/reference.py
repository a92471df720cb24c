"""The op-level reference of edgeattn.SkipSoftmaxAttention, on top of the tile-walk reference.

`edgeattn.kernels.skip_softmax.reference` defines the skip rule (tile walk, λ = scale_factor / Lkv,
counts). This adapter gives it the op's signature: 3-D or 4-D layouts, the site's scale and causal
mode, a mask input, and (Y, fraction of visited tiles skipped) as outputs.

A mask reaches the tile walk as follows: a key-only mask (broadcastable to [B, 1, 1, Lkv], what a
padding mask is) is folded into one extra channel of Q and K (q' = [q, 1/scale], k' = [k, m_j]), so
scale·q'·k' = scale·q·k + m_j and a hidden key scores -inf, which the walk treats as a key the row
cannot see. The walk has no mask argument for masks that vary per query row, so those raise here
(the function body defines them the same way: masked keys are invalid keys).
"""

from __future__ import annotations

import math

import torch

from edgeattn.errors import EdgeAttnError
from edgeattn.kernels.skip_softmax.reference import skip_softmax_attention_reference


def _split(x: torch.Tensor, heads: int) -> torch.Tensor:
    return x.reshape(x.shape[0], x.shape[1], heads, -1).transpose(1, 2)


def _key_mask(mask: torch.Tensor, batch: int, kv_len: int, dtype: torch.dtype) -> torch.Tensor:
    """An additive [B, Lkv] mask from a mask broadcastable to [B, 1, 1, Lkv]."""
    if mask.dim() != 4 or mask.shape[1] != 1 or mask.shape[2] != 1:
        raise EdgeAttnError(
            f"the skip-softmax reference folds only key masks of shape [B, 1, 1, Lkv] into the tile walk, "
            f"got {tuple(mask.shape)}"
        )
    if mask.dtype == torch.bool:
        additive = torch.where(mask, 0.0, -math.inf).to(dtype)
    else:
        additive = mask.to(dtype)
    return additive.expand(batch, 1, 1, kv_len)[:, 0, 0]


def skip_softmax_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    scale: float = 0.0,
    causal: int = 0,
    q_num_heads: int = 0,
    kv_num_heads: int = 0,
    softmax_precision: int = 0,
    scale_factor: float = 0.0,
    block_m: int = 128,
    block_n: int = 64,
    num_splits: int = 1,
    compute_dtype: torch.dtype | None = torch.float64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(Y in Q's layout and type, skipped/visited tiles as a float32 scalar)."""
    out_dtype, rank = q.dtype, q.dim()
    if rank == 3:
        kv_heads = kv_num_heads or q_num_heads
        q, k, v = _split(q, q_num_heads), _split(k, kv_heads), _split(v, kv_heads)
    if compute_dtype is not None:
        q, k, v = q.to(compute_dtype), k.to(compute_dtype), v.to(compute_dtype)
    q_len, kv_len = q.shape[2], k.shape[2]
    if causal == 1 and q_len != kv_len:
        raise EdgeAttnError("causal = 1 (upper-left) with Lq != Lkv has no tile-walk reference; use causal = 2")
    factor = scale if scale > 0 else 1.0 / math.sqrt(q.shape[-1])
    if mask is not None:
        keys = _key_mask(mask, q.shape[0], kv_len, q.dtype)
        q = torch.cat([q, torch.full_like(q[..., :1], 1.0 / factor)], dim=-1)
        k = torch.cat([k, keys[:, None, :, None].expand(-1, k.shape[1], -1, 1)], dim=-1)
        v = torch.cat([v, torch.zeros_like(v[..., :1])], dim=-1)
    result = skip_softmax_attention_reference(
        q, k, v, scale=factor, causal=bool(causal), scale_factor=scale_factor,
        block_m=block_m, block_n=block_n, num_splits=num_splits,
    )
    out = result.out[..., : v.shape[-1] - (1 if mask is not None else 0)]
    if rank == 3:
        out = out.transpose(1, 2).reshape(out.shape[0], out.shape[2], -1)
    ratio = torch.tensor(result.skip_ratio, dtype=torch.float32)
    return out.to(out_dtype), ratio
