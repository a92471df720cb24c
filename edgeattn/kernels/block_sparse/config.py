"""Launch settings of the block-sparse kernels (plain Python: shared by ``ops`` and ``aot``)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "MAX_SCORE_TILE",
    "AttentionConfig",
    "SelectConfig",
    "attention_config",
    "next_power_of_two",
    "pool_rows",
    "select_config",
]

MAX_ROWS = 128
"""Most stacked query rows (``heads · block``) per attention program: one 128-row tile, as flash
attention uses on Hopper (two warpgroups) and Ampere."""

MAX_SCORE_TILE = 32768
"""Most elements of the selection kernel's score tile (``BT · GROUP_P2 · NKB_P2``, fp32 in registers):
16 warps x 64 per thread. With one query block per program this allows 4096 key blocks for groups of
up to 8 query heads (256k keys at block 64)."""


def next_power_of_two(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


@dataclass(frozen=True)
class AttentionConfig:
    """Launch settings that change speed, never results."""

    heads: int
    """Query heads of one key/value head stacked into one program (they share the block list, so
    K/V tiles are read once for all of them); divides the GQA group size."""
    block_n: int
    """Keys per tile; divides the block size (a kept block is walked in block / block_n tiles)."""
    num_warps: int
    num_stages: int


def attention_config(head_dim: int, block: int, kv_group: int, *, arch: int = 90) -> AttentionConfig:
    """Settings for an H100/H200-class GPU (``arch`` 90), kept inside the shared memory of sm_87/89.

    Query heads of a GQA group are stacked up to 128 rows (a 64-block with 2 heads is the
    128 x 64 tile of flash attention); keys go in tiles of at most 64; 8 warps for 128 rows.
    Three pipeline stages where shared memory allows (sm_80/87/90), two on sm_86/89 for large tiles.
    """
    heads = 1
    while kv_group % (2 * heads) == 0 and 2 * heads * block <= MAX_ROWS:
        heads *= 2
    rows = heads * block
    block_n = min(block, 64)
    warps = 8 if rows >= 128 else 4
    tile_bytes = 2 * head_dim * (rows + 2 * block_n)  # Q + one stage of K and V, 16-bit
    stages = 3 if arch in (80, 87, 90) or tile_bytes * 2 <= 64 * 1024 else 2
    return AttentionConfig(heads=heads, block_n=block_n, num_warps=warps, num_stages=stages)


@dataclass(frozen=True)
class SelectConfig:
    """Tile of the selection kernel: ``bt`` query blocks x ``group_p2`` heads x ``nkb_p2`` key blocks."""

    bt: int
    group_p2: int
    nkb_p2: int
    num_warps: int

    @property
    def rows(self) -> int:
        return self.bt * self.group_p2


def select_config(n_q_blocks: int, n_kv_blocks: int, kv_group: int) -> SelectConfig | None:
    """About 8192 scores per program (several query blocks when the key axis is short); warps grow
    with the tile so that each thread holds about 64 fp32 scores. None: the key axis is too long
    (more than :data:`MAX_SCORE_TILE` scores for one query block)."""
    group_p2 = next_power_of_two(kv_group)
    nkb_p2 = max(16, next_power_of_two(n_kv_blocks))
    if group_p2 * nkb_p2 > MAX_SCORE_TILE:
        return None
    bt = max(1, min(next_power_of_two(n_q_blocks), 8192 // (group_p2 * nkb_p2)))
    warps = min(16, max(4, bt * group_p2 * nkb_p2 // 2048))
    return SelectConfig(bt=bt, group_p2=group_p2, nkb_p2=nkb_p2, num_warps=warps)


def pool_rows(block: int) -> int:
    """Rows the pooling kernel reads per step."""
    return min(block, 32)
