"""PyTorch reference of edgeattn.TokenScore (float32, or float64 with `compute_dtype`)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def token_score_reference(
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    prior: torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
    valid: torch.Tensor | None = None,
    *,
    source: str = "cls",
    scale: float = 0.0,
    q_num_heads: int = 0,
    kv_num_heads: int = 0,
    query: int = 0,
    skip: int = 1,
    head_reduce: str = "mean",
    eta: float = 0.5,
    text_temperature: float = 0.05,
    relevance_temperature: float = 0.01,
    power: float = 2.5,
    quantile: float = 0.995,
    damping: float = 0.1,
    step: float = 0.01,
    compute_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Scores [B, N]; see `edgeattn.ops.token_score.spec` for the definition of every source."""
    import torch

    dtype = compute_dtype or torch.float32
    x = x.to(dtype)
    y = y.to(dtype) if y is not None else None
    if source in ("cls", "mean_received"):
        rows = _attention_rows(x, y, source, scale, q_num_heads, kv_num_heads, query)
        rows = rows[..., skip:]
        scores = rows.mean(1) if head_reduce == "mean" else rows.amax(1)
    elif source == "text":
        if y is None:
            raise ValueError("source text needs the prompt embeddings Y")
        prior_t = prior.to(dtype) if prior is not None else None
        scores = text_relevance(x, y, prior_t, eta, text_temperature, relevance_temperature, power, quantile, damping)
    elif source == "sensitivity":
        if y is None:
            raise ValueError("source sensitivity needs M(x - h·u) as Y")
        scores = (x - y).norm(dim=-1).mean(-1) / (2.0 * step)
    else:
        raise ValueError(f"unknown source {source!r}")
    if weights is not None:
        scores = scores * weights.to(dtype)
    if valid is not None:
        scores = scores * (valid != 0).to(dtype)
    return scores


def _attention_rows(x, y, source, scale, q_heads, kv_heads, query):
    """[B, H, S]: the [CLS] row or the column mean of each head's attention."""
    import torch

    if y is None:
        probs = x
    else:
        q, k = _four_dims(x, q_heads), _four_dims(y, kv_heads or q_heads)
        group = q.shape[1] // k.shape[1]
        k = k.repeat_interleave(group, dim=1)
        factor = scale if scale > 0 else 1.0 / math.sqrt(q.shape[-1])
        if source == "cls":
            q = q[:, :, query : query + 1]
        probs = torch.softmax(torch.matmul(q, k.transpose(-1, -2)) * factor, dim=-1)
        if source == "cls":
            return probs[:, :, 0]
    return probs[:, :, query] if source == "cls" else probs.mean(2)


def _four_dims(value, heads: int):
    if value.dim() == 4:
        return value
    if heads <= 0:
        raise ValueError("3-D Q/K need the head counts")
    return value.reshape(value.shape[0], value.shape[1], heads, -1).transpose(1, 2)


def minmax(value, dim: int = -1):
    low = value.amin(dim, keepdim=True)
    high = value.amax(dim, keepdim=True)
    return (value - low) / (high - low).clamp_min(1e-12)


def text_relevance(z, e, prior, eta, text_temperature, relevance_temperature, power, quantile, damping):
    """FlashVLM's relevance t of each image token to the prompt, fused with an attention prior."""
    import torch

    zn = torch.nn.functional.normalize(z, dim=-1)
    en = torch.nn.functional.normalize(e, dim=-1)
    sim = zn @ en.transpose(-1, -2)  # [B, N, T]
    relevance = (torch.softmax(sim / text_temperature, dim=-1) * sim).sum(-1)
    t = minmax(torch.softmax(relevance / relevance_temperature, dim=-1) ** power)
    threshold = torch.quantile(t, quantile, dim=-1, keepdim=True)
    t = minmax(torch.where(t < threshold, t * damping, t))
    if prior is None:
        return t
    return minmax(minmax(prior) ** (1.0 - eta) * t**eta)
