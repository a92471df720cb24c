"""PyTorch reference of edgeattn.Attention: the definition the function body and kernels are tested against
(`edgeattn.ops.attention.spec` states it; it is the ONNX `Attention` contract)."""

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
    past_key: torch.Tensor | None = None,
    past_value: torch.Tensor | None = None,
    nonpad_kv_seqlen: torch.Tensor | None = None,
    *,
    scale: float = 0.0,
    causal: int = 0,
    q_num_heads: int = 0,
    kv_num_heads: int = 0,
    softmax_precision: int = 0,
    softcap: float = 0.0,
    left_window_size: int = -1,
    right_window_size: int = -1,
    qk_matmul_output_mode: int = 0,
    zero_nan_rows: int = 0,
    compute_dtype: torch.dtype | None = None,
    all_outputs: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Y = softmax(softcap(scale·QKᵀ) + bias) V. With `compute_dtype` (e.g. torch.float64) everything is
    computed and returned in that type; otherwise in the inputs' type, softmax in `softmax_precision`.
    With `all_outputs`: (Y, present_key, present_value, qk_matmul_output)."""
    import torch

    rank = q.dim()
    if rank == 3:
        q, k, v = _split_heads(q, k, v, q_num_heads, kv_num_heads)
    if (past_key is None) != (past_value is None):
        raise ValueError("past_key and past_value come together")
    if past_key is not None:
        k, v = torch.cat([past_key, k], dim=2), torch.cat([past_value, v], dim=2)
    present_key, present_value = k, v
    if compute_dtype is not None:
        q, k, v = q.to(compute_dtype), k.to(compute_dtype), v.to(compute_dtype)
        if mask is not None and mask.dtype != torch.bool:
            mask = mask.to(compute_dtype)
    group = q.shape[1] // k.shape[1]
    if group > 1:
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    factor = scale if scale > 0 else 1.0 / math.sqrt(q.shape[-1])
    scores = torch.matmul(q, k.transpose(-1, -2)) * factor
    stages = [scores]  # qk_matmul_output by mode: scaled, soft-capped, biased, probabilities
    if softcap > 0:
        scores = softcap * torch.tanh(scores / softcap)
    stages.append(scores)
    past = past_key.shape[2] if past_key is not None else 0
    bias = _bias(scores, mask, causal, left_window_size, right_window_size, past, nonpad_kv_seqlen)
    if bias is not None:
        scores = scores + bias
    stages.append(scores)
    if softmax_precision and compute_dtype is None:
        scores = scores.to(getattr(torch, _TORCH_DTYPES[softmax_precision]))
    probs = torch.softmax(scores, dim=-1)
    if bias is not None:  # a row no key may attend outputs zeros (decided on the bias, not the scores)
        fully_masked = torch.isneginf(bias.amax(dim=-1, keepdim=True))
        probs = torch.where(fully_masked, torch.zeros((), dtype=probs.dtype), probs)
    if zero_nan_rows:  # the IsNaN/Where guard of SDPA decompositions
        probs = torch.where(torch.isnan(probs), torch.zeros((), dtype=probs.dtype), probs)
    probs = probs.to(v.dtype)
    stages.append(probs)
    out = torch.matmul(probs, v)
    if rank == 3:
        out = out.transpose(1, 2).reshape(out.shape[0], out.shape[2], -1)
    if not all_outputs:
        return out
    return out, present_key, present_value, stages[qk_matmul_output_mode].to(q.dtype)


def _split_heads(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_heads: int, kv_heads: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if q_heads <= 0:
        raise ValueError("3-D attention needs q_num_heads > 0")
    kv_heads = kv_heads or q_heads

    def split(x: torch.Tensor, heads: int) -> torch.Tensor:
        return x.reshape(x.shape[0], x.shape[1], heads, -1).transpose(1, 2)

    return split(q, q_heads), split(k, kv_heads), split(v, kv_heads)


def _bias(scores: torch.Tensor, mask: torch.Tensor | None, causal: int, left: int, right: int, past: int,
          nonpad: torch.Tensor | None) -> torch.Tensor | None:
    """The additive bias (0 or -inf, plus an additive mask) broadcastable to the scores, None when nothing
    is masked."""
    import torch

    q_len, kv_len = scores.shape[-2], scores.shape[-1]
    minus_inf = torch.tensor(float("-inf"), dtype=scores.dtype)
    zero = torch.zeros((), dtype=scores.dtype)
    parts = []
    if mask is not None:
        parts.append(torch.where(mask, zero, minus_inf) if mask.dtype == torch.bool else mask.to(scores.dtype))
    rows = torch.arange(q_len).unsqueeze(-1)
    cols = torch.arange(kv_len).unsqueeze(0)
    # the position of query i: offset + i (offset: the cache length, or nonpad - Sq per batch entry)
    position = rows + (past if nonpad is None else (nonpad.to(torch.int64) - q_len).reshape(-1, 1, 1, 1))
    blocked = []
    if causal == 1:
        blocked.append(cols > position)
    elif causal == 2:
        blocked.append(cols > rows + kv_len - q_len)
    if left >= 0:
        blocked.append(cols < position - left)
    if right >= 0:
        blocked.append(cols > position + right)
    if nonpad is not None:
        blocked.append(cols >= nonpad.to(torch.int64).reshape(-1, 1, 1, 1))
    if blocked:
        any_blocked = blocked[0]
        for more in blocked[1:]:
            any_blocked = any_blocked | more
        parts.append(torch.where(any_blocked, minus_inf, zero))
    if not parts:
        return None
    total = parts[0]
    for part in parts[1:]:
        total = total + part
    return total
