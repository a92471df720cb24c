"""Block geometry of the block-sparse kernels, in plain Python (no torch, no triton): what the torch-facing
calls and a TensorRT plugin's launch both compute from the shapes."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ...errors import EdgeAttnError

__all__ = ["BUDGET_SLACK", "BlockGeometry", "block_geometry", "budget_of"]

BUDGET_SLACK = 1e-4  # as the reference: keep·nKB within this of an integer rounds down to it


@dataclass(frozen=True)
class BlockGeometry:
    """Blocks aligned to positions, as BlockSelect's reference defines them."""

    q_len: int
    kv_len: int
    block: int
    causal: int
    """0: none; 1: query i at position i; 2: query i at position kv_len - q_len + i (a KV cache)."""
    offset: int
    first_block: int
    n_q_blocks: int
    n_kv_blocks: int

    @property
    def front(self) -> int:
        """Rows before query row 0 in its block."""
        return self.offset - self.first_block * self.block


def block_geometry(q_len: int, kv_len: int, block: int, causal: int) -> BlockGeometry:
    if block < 1:
        raise EdgeAttnError(f"block_size must be >= 1, got {block}")
    if q_len < 1 or kv_len < 1:
        raise EdgeAttnError(f"block attention needs at least one query and one key (got {q_len} and {kv_len})")
    if causal not in (0, 1, 2):
        raise EdgeAttnError(f"causal must be 0, 1 or 2, got {causal}")
    offset = kv_len - q_len if causal == 2 else 0
    if offset < 0:
        raise EdgeAttnError(f"causal attention with {q_len} queries over {kv_len} keys: more queries than keys")
    first, last = offset // block, (offset + q_len - 1) // block
    return BlockGeometry(q_len, kv_len, block, causal, offset, first, last - first + 1, -(-kv_len // block))


def budget_of(keep: float, n_kv_blocks: int) -> int:
    """topk budget: max(1, ceil(keep·nKB - 1e-4)), the product in float32 (as the reference)."""
    product = float(np.float32(keep) * np.float32(n_kv_blocks))
    return max(1, math.ceil(product - BUDGET_SLACK))
