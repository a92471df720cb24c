"""Block geometry and block lists of the block-sparse kernels (plain torch: no triton needed).

The geometry is BlockSelect's (``plugins/block_select/reference.py``): blocks aligned to positions,
query row i at position ``offset + i`` (``offset = Lkv - Lq`` when causal = 2, else 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ...errors import EdgeAttnError
from .geometry import BUDGET_SLACK, BlockGeometry, block_geometry, budget_of

__all__ = ["BUDGET_SLACK", "BlockGeometry", "BlockList", "block_geometry", "budget_of", "visible_pairs"]

@dataclass(frozen=True)
class BlockList:
    """The key blocks each (batch, key/value head, query block) attends."""

    indices: torch.Tensor
    """int32 [B, Hkv, nQB, nKB]: the kept block indices in ascending order, then -1."""
    counts: torch.Tensor
    """int32 [B, Hkv, nQB]: kept blocks per row."""
    geometry: BlockGeometry
    mask: torch.Tensor | None = None
    """bool [B, Hkv, nQB, nKB] (BlockSelect's output), when asked for."""
    rect_mass: torch.Tensor | None = None
    """Rectified SpaAttn, fp32 [B, Hq, nQB]: probability mass of the kept blocks per query head."""
    rect_rest: torch.Tensor | None = None
    """Rectified SpaAttn, fp32 [B, Hq, nQB, D]: Σ over available, dropped blocks of P_j·mean(V_j)."""

    def dense_mask(self) -> torch.Tensor:
        """bool [B, Hkv, nQB, nKB] rebuilt from the list (for checks; the kernels never need it)."""
        n_kv = self.geometry.n_kv_blocks
        idx = self.indices.long()
        out = torch.zeros(*idx.shape[:-1], n_kv + 1, dtype=torch.bool, device=idx.device)
        out.scatter_(-1, torch.where(idx < 0, n_kv, idx), True)
        return out[..., :n_kv]

    def density(self, q_heads: int | None = None) -> float:
        """Computed (query, key) pairs over the causally visible pairs, as the reference's density
        output (no token mask): every kept block counts its visible pairs."""
        pairs = visible_pairs(self.geometry, self.indices.device)  # [nQB, nKB]
        kept = (self.dense_mask().to(pairs.dtype) * pairs).sum()
        total = pairs.sum() * self.indices.shape[0] * self.indices.shape[1]
        return float(kept / total.clamp_min(1))


def visible_pairs(geo: BlockGeometry, device: torch.device | str = "cpu") -> torch.Tensor:
    """float64 [nQB, nKB]: (query row, key) pairs of each block pair that the causal rule leaves."""
    t = torch.arange(geo.n_q_blocks, device=device)
    r = torch.arange(geo.block, device=device)
    pos = (geo.first_block + t)[:, None] * geo.block + r[None, :]  # [nQB, b]
    row_ok = (pos >= geo.offset) & (pos < geo.offset + geo.q_len)
    j0 = torch.arange(geo.n_kv_blocks, device=device) * geo.block
    j1 = torch.clamp(j0 + geo.block, max=geo.kv_len)  # exclusive end of each key block
    if geo.causal:
        hi = torch.minimum(pos[:, :, None] + 1, j1[None, None, :])
        n = torch.clamp(hi - j0[None, None, :], min=0)
    else:
        n = (j1 - j0)[None, None, :].expand(geo.n_q_blocks, geo.block, -1)
    return (n * row_ok[:, :, None]).sum(1).to(torch.float64)
