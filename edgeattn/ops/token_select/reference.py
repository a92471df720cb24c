"""PyTorch reference of edgeattn.TokenSelect: each rule written plainly, one image at a time."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

QUOTA_SLACK = 1e-3  # a chunk quota short of an integer by less than this is rounded up


def token_select_reference(
    scores: torch.Tensor,
    features: torch.Tensor,
    num_tokens: torch.Tensor | int | None = None,
    keys: torch.Tensor | None = None,
    *,
    k: int = 64,
    mode: str = "topk",
    prefix: int = 0,
    keep_prefix: int = 0,
    regions: int = 16,
    alpha: float = 0.09,
    attention_scale: float = 1000.0,
    important_ratio: float = 0.5,
    dedup_step: int = 8,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(selected [B, k, D], kept_indices [B, k] int64 ascending)."""
    import torch

    count = int(num_tokens) if num_tokens is not None else int(k)
    candidates = features[:, prefix:]
    n = candidates.shape[1]
    if not 1 <= count <= n:
        raise ValueError(f"k = {count} is outside 1..{n}")
    keys = candidates if keys is None else keys
    rows = []
    for b in range(scores.shape[0]):
        s, z = scores[b].float(), keys[b].float()
        if mode == "topk":
            chosen = order_desc(s)[:count]
        elif mode == "regions":
            chosen = select_regions(s, z, count, regions, alpha, attention_scale)
        elif mode == "diversity":
            chosen = select_diversity(s, z, count, important_ratio, dedup_step)
        elif mode == "maxmin":
            chosen = select_maxmin(s, z, count)
        else:
            raise ValueError(f"unknown mode {mode!r}")
        rows.append(torch.sort(chosen).values)
    indices = torch.stack(rows).to(torch.int64)
    gathered = torch.gather(candidates, 1, indices.unsqueeze(-1).expand(-1, -1, candidates.shape[-1]))
    if keep_prefix and prefix:
        gathered = torch.cat([features[:, :prefix], gathered], dim=1)
    return gathered, indices


def order_desc(values: torch.Tensor) -> torch.Tensor:
    """Positions by decreasing value, ties by increasing position."""
    import torch

    return torch.sort(values, descending=True, stable=True).indices


def cosine(z: torch.Tensor, other: torch.Tensor | None = None) -> torch.Tensor:
    """Cosine similarities; within DUPLICATE_SNAP of 1 they are exactly 1 (duplicates tie exactly)."""
    import torch

    from edgeattn.ops.token_nodes import DUPLICATE_SNAP

    zn = torch.nn.functional.normalize(z, dim=-1)
    on = zn if other is None else torch.nn.functional.normalize(other, dim=-1)
    cos = zn @ on.T
    return torch.where(cos > 1 - DUPLICATE_SNAP, torch.ones_like(cos), cos)


def chunk_ids(n: int, regions: int) -> list[int]:
    """Chunk of each position: `regions` contiguous chunks, the first n mod regions one longer."""
    parts = min(regions, n)
    base, extra = divmod(n, parts)
    ids: list[int] = []
    for p in range(parts):
        ids += [p] * (base + (1 if p < extra else 0))
    return ids


def select_regions(a, z, k: int, regions: int, alpha: float, attention_scale: float):
    """HoloV: chunk budgets from attention + similarity variance, top attention inside each chunk."""
    import torch

    n = a.shape[0]
    cid = torch.tensor(chunk_ids(n, regions))
    parts = int(cid.max()) + 1
    cos = cosine(z)
    others = (cid[:, None] == cid[None, :]) & ~torch.eye(n, dtype=torch.bool)  # same chunk, not itself
    count = others.sum(1).to(cos.dtype)
    mean = (cos * others).sum(1) / count.clamp_min(1)
    variance = (((cos - mean[:, None]) * others) ** 2).sum(1) / (count - 1).clamp_min(1)  # unbiased; 0 if < 2
    scaled = attention_scale * a
    ratio = scaled.abs().mean() / variance.abs().mean().clamp_min(1e-12)
    s = (scaled + alpha * variance * ratio).double()
    sizes = torch.bincount(cid, minlength=parts)
    weight = torch.stack([s[cid == p].mean() for p in range(parts)])
    total = weight.sum()
    if total <= 0:
        weight, total = torch.ones(parts, dtype=torch.float64), torch.tensor(float(parts), dtype=torch.float64)
    quota = torch.minimum(torch.floor(k * weight / total + QUOTA_SLACK).long(), sizes)
    heaviest = order_desc(weight)
    chunk_rank = torch.empty(parts, dtype=torch.long)
    chunk_rank[heaviest] = torch.arange(parts)
    key = torch.empty(n)
    for p in range(parts):
        members = torch.nonzero(cid == p).flatten()
        for rank, index in enumerate(members[order_desc(a[members])]):
            behind = rank - int(quota[p])
            key[index] = 1.0 if behind < 0 else -float(behind * parts + int(chunk_rank[p]))
    return order_desc(key)[:k]


def select_diversity(s, z, k: int, important_ratio: float, dedup_step: int):
    """VisPruner/FlashVLM: top scores, then iterative bipartite de-duplication of the rest."""
    import torch

    important = int(k * important_ratio)
    diverse = k - important
    order = order_desc(s)
    kept, residual = order[:important], order[important:]
    while True:
        excess = residual.shape[0] - diverse
        r = min(dedup_step, excess)
        if r <= 0:
            break
        even, odd = residual[0::2], residual[1::2]
        best = cosine(z[even], z[odd]).amax(-1)
        survivors = order_desc(best)[r:]
        residual = torch.cat([even[survivors], odd])
    return torch.cat([kept, residual])


def select_maxmin(s, z, k: int):
    """ZOO-Prune SADS: greedy max of sensitivity x min cosine distance to the kept tokens."""
    import torch

    low, high = s.min(), s.max()
    weight = (s - low) / (high - low + 1e-8) if high > low else torch.ones_like(s)
    dist = 1.0 - cosine(z)
    chosen = [int(torch.argmax(weight))]
    nearest = dist[chosen[0]].clone()
    taken = torch.zeros_like(s, dtype=torch.bool)
    taken[chosen[0]] = True
    for _ in range(k - 1):
        score = (nearest * weight).masked_fill(taken, float("-inf"))
        index = int(torch.argmax(score))
        chosen.append(index)
        taken[index] = True
        nearest = torch.minimum(nearest, dist[index])
    return torch.tensor(chosen)
