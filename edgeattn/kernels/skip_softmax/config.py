"""Launch settings of the skip-softmax kernels (plain Python: shared by ``ops`` and ``aot``)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DECODE_MAX_QUERY_ROWS", "MAX_GROUP_ROWS", "KernelConfig", "auto_num_splits", "default_config", "kernel_block_m"]

DECODE_MAX_QUERY_ROWS = 16
"""With ``num_splits=None``, calls with at most this many query rows are split over the KV length."""

MAX_GROUP_ROWS = 64
"""Largest GQA group the grouped decode kernel stacks into one tile (larger groups run per head)."""


@dataclass(frozen=True)
class KernelConfig:
    """Launch settings that change speed, never results."""

    num_warps: int
    num_stages: int
    v_load: int
    """Where skip mode reads V (dense mode always loads it with K): 0 with K, 1 only for processed
    tiles (skipped tiles save the bandwidth; the load is not prefetched), 2 one tile ahead into
    registers (latency hidden; every visited tile is read)."""
    two_pass: bool = False
    """Skip-mode prefill (one split) in two kernels: the skip votes (``QKᵀ`` row maxima only), then
    attention over the kept tiles (``two_pass.py``). Same skip set, same output."""
    grouped_decode: bool = False
    """One-row decode with one program per KV head and split that serves every query head of the
    GQA group from one read of each K/V tile (``decode.py``). Same skip set, same output."""


def default_config(head_dim: int, block_m: int, block_n: int, *, decode: bool, arch: int = 90) -> KernelConfig:
    """Settings for an H100/H200-class GPU (``arch`` 90), kept inside the shared memory of sm_87/89.

    Prefill is compute-bound: 8 warps for 128-row tiles (two Hopper warpgroups), 3 stages (2 when a
    128-wide head would overflow the 99 KB of sm_86/89). Skip mode reads V only for processed tiles
    in prefill too: on an H200 (``benchmarks/gpu_skip_ablation.py``, L = 16384, ~75 % of tiles
    skipped) that ran 1.27x (d = 128) and 1.11x (d = 64) faster than prefetching V one tile ahead.
    Decode (a few query rows) is bandwidth-bound: 4 warps, V read only for processed tiles.
    """
    if decode:
        return KernelConfig(num_warps=4, num_stages=3 if arch >= 90 else 2, v_load=1)
    warps = 8 if block_m >= 128 else 4
    tile_bytes = 2 * head_dim * (block_m + 2 * block_n)  # Q + one stage of K and V, 16-bit
    stages = 3 if arch in (80, 87, 90) or tile_bytes * 2 <= 64 * 1024 else 2
    return KernelConfig(num_warps=warps, num_stages=stages, v_load=1)


def kernel_block_m(q_len: int, block_m: int) -> int:
    """Rows per kernel query tile: ``block_m``, or fewer when the whole query fits in one tile.

    A single query tile holds the same rows whatever its padded height, so the skip decisions are
    those of ``block_m``; decode (a few rows) then runs 16-row tiles instead of 128.
    """
    if q_len >= block_m:
        return block_m
    return min(block_m, max(16, 1 << max(q_len - 1, 0).bit_length()))


def auto_num_splits(programs: int, kv_len: int, block_n: int, num_sms: int, *, min_tiles: int = 4) -> int:
    """Splits over the KV length so that about four programs per SM are in flight (decode streams
    K/V from memory and needs many loads outstanding to reach full bandwidth).

    ``programs`` is the unsplit program count (query tiles x batch x heads); each split keeps at
    least ``min_tiles`` key tiles. The count changes which tiles are skipped (each split restarts its
    running max): pass an explicit ``num_splits`` wherever results must be reproducible.
    """
    n_tiles = -(-kv_len // block_n)
    wanted = -(-4 * num_sms // max(programs, 1))
    return max(1, min(wanted, n_tiles // min_tiles))
