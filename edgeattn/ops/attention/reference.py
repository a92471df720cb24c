"""PyTorch reference of edgeattn.Attention: the definition the function body and kernels are tested against."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# ONNX element type -> torch dtype name, for softmax_precision.
_TORCH_DTYPES = {1: "float32", 10: "float16", 11: "float64", 16: "bfloat16"}


def attention_reference(
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
    compute_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Y = softmax(scale·QKᵀ + mask + causal) V. With `compute_dtype` (e.g. torch.float64) everything
    is computed and returned in that type; otherwise in the inputs' type, softmax in `softmax_precision`."""
    import torch

    rank = q.dim()
    if rank == 3:
        q, k, v = _split_heads(q, k, v, q_num_heads, kv_num_heads)
    if compute_dtype is not None:
        q, k, v = q.to(compute_dtype), k.to(compute_dtype), v.to(compute_dtype)
        if mask is not None and mask.dtype != torch.bool:
            mask = mask.to(compute_dtype)
    group = q.shape[1] // k.shape[1]
    if group > 1:
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    factor = scale if scale > 0 else 1.0 / math.sqrt(q.shape[-1])
    scores = torch.matmul(q, k.transpose(-1, -2)) * factor
    scores = _apply_masks(scores, mask, causal)
    if softmax_precision and compute_dtype is None:
        scores = scores.to(getattr(torch, _TORCH_DTYPES[softmax_precision]))
    probs = torch.softmax(scores, dim=-1)
    probs = torch.where(torch.isnan(probs), torch.zeros_like(probs), probs)
    out = torch.matmul(probs.to(v.dtype), v)
    if rank == 3:
        out = out.transpose(1, 2).reshape(out.shape[0], out.shape[2], -1)
    return out


def _split_heads(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_heads: int, kv_heads: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if q_heads <= 0:
        raise ValueError("3-D attention needs q_num_heads > 0")
    kv_heads = kv_heads or q_heads

    def split(x: torch.Tensor, heads: int) -> torch.Tensor:
        return x.reshape(x.shape[0], x.shape[1], heads, -1).transpose(1, 2)

    return split(q, q_heads), split(k, kv_heads), split(v, kv_heads)


def _apply_masks(scores: torch.Tensor, mask: torch.Tensor | None, causal: int) -> torch.Tensor:
    import torch

    if mask is not None:
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, float("-inf"))
        else:
            scores = scores + mask
    if causal:
        q_len, kv_len = scores.shape[-2], scores.shape[-1]
        offset = 0 if causal == 1 else kv_len - q_len
        rows = torch.arange(q_len).unsqueeze(-1)
        cols = torch.arange(kv_len).unsqueeze(0)
        scores = scores.masked_fill(cols > rows + offset, float("-inf"))
    return scores
