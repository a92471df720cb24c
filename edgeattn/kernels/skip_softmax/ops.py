"""Torch-facing calls of the skip-softmax kernels.

CUDA tensors run the compiled kernels; CPU tensors run the same kernels in the Triton interpreter
(slow: for tests at small sizes), which needs ``TRITON_INTERPRET=1`` set before triton is first
imported (Triton fixes the mode of a whole process then). The result is a
:class:`~.reference.SkipSoftmaxResult`, the same triple the reference returns, and the tile sizes
mean the same thing: with equal ``block_m``/``block_n``/``num_splits`` the kernel skips exactly
the tiles the reference skips (up to fp32-vs-fp64 rounding of scores that fall on the threshold).

This module imports torch, triton and the standard library only (plus ``edgeattn.errors``), so
``benchmarks/gpu_attention.py`` can load it on a machine where nothing else of edgeattn installs.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from types import ModuleType

import torch

from ...errors import EdgeAttnError
from ..triton_aot import check_interpreter, check_kernel_device, check_tile, last_dim_contiguous, upcast_dot
from .config import DECODE_MAX_QUERY_ROWS, MAX_GROUP_ROWS, KernelConfig, auto_num_splits, default_config, kernel_block_m
from .reference import SkipSoftmaxResult, _check_inputs, _ln_lambda, kv_tiles_per_split, visited_tiles

__all__ = ["KernelConfig", "skip_softmax_attention"]

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _kernels(device: torch.device) -> ModuleType:
    check_kernel_device(device, "skip_softmax_attention runs")
    from . import kernel

    check_interpreter(device, kernel.skip_softmax_attn_fwd)
    return kernel


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_m: int, block_n: int) -> None:
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in _DTYPES:
        raise EdgeAttnError(f"q, k, v must share one dtype of fp16/bf16/fp32; got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise EdgeAttnError(f"q, k, v must be on one device; got {q.device}, {k.device}, {v.device}")
    check_tile("head size", q.shape[-1], "")
    check_tile("block_m", block_m)
    check_tile("block_n", block_n)


def _arch(x: torch.Tensor) -> int:
    if x.device.type != "cuda":
        return 90  # the interpreter: any settings do
    major, minor = torch.cuda.get_device_capability(x.device)
    return 10 * major + minor


def _auto_splits(x: torch.Tensor, programs: int, kv_len: int, block_n: int) -> int:
    """``num_splits=None``: split decode-sized calls on a GPU so that its SMs fill; else 1."""
    if x.shape[2] > DECODE_MAX_QUERY_ROWS or x.device.type != "cuda":
        return 1
    sms = torch.cuda.get_device_properties(x.device).multi_processor_count
    return auto_num_splits(programs, kv_len, block_n, sms)


def _key_bias(bias: torch.Tensor | None, batch: int, kv_len: int,
              device: torch.device) -> tuple[torch.Tensor | None, tuple[int, int]]:
    """(the key bias as the kernels read it, its strides) from an optional tensor broadcastable to [B, Lkv]."""
    if bias is None:
        return None, (0, 0)
    if bias.dim() != 2 or bias.shape[0] not in (1, batch) or bias.shape[1] not in (1, kv_len) or \
            not bias.is_floating_point():
        raise EdgeAttnError(f"key_bias must be a float tensor broadcastable to [{batch}, {kv_len}], got "
                            f"{bias.dtype} {tuple(bias.shape)}")
    if bias.device != device:
        raise EdgeAttnError(f"key_bias must be on {device}, got {bias.device}")
    bias = bias.expand(batch, kv_len)
    return bias, (bias.stride(0), bias.stride(1))


def _two_pass(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None,
              bias_strides: tuple[int, int], out: torch.Tensor, scalars: tuple[float, float], *, causal: bool,
              bm: int, block_n: int, upcast: bool, config: KernelConfig) -> torch.Tensor:
    """Skip votes, then attention over the kept tiles (``two_pass.py``); returns the kept-tile
    count per (batch x query head, query tile), int32 ``[B * Hq, n_q_tiles]``."""
    from .two_pass import skip_softmax_attend_listed, skip_softmax_tile_votes

    batch, q_heads, q_len, head_dim = q.shape
    kv_heads, kv_len = k.shape[1], k.shape[2]
    n_q_tiles, n_kv_tiles = -(-q_len // bm), -(-kv_len // block_n)
    tiles = torch.empty(batch * q_heads, n_q_tiles, n_kv_tiles, dtype=torch.int32, device=q.device)
    count = torch.empty(batch * q_heads, n_q_tiles, 2, dtype=torch.int32, device=q.device)
    grid = (n_q_tiles, batch * q_heads)
    shape = (q_heads, q_heads // kv_heads, q_len, kv_len, n_kv_tiles)
    consts = dict(HEAD_DIM=head_dim, BLOCK_M=bm, BLOCK_N=block_n, CAUSAL=causal, UPCAST_DOT=upcast,
                  KEY_BIAS=bias is not None, num_warps=config.num_warps, num_stages=config.num_stages)  # fmt: skip
    skip_softmax_tile_votes[grid](
        q, k, bias, *scalars, q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        *bias_strides, *shape, tiles, count, **consts,
    )  # fmt: skip
    skip_softmax_attend_listed[grid](
        q, k, v, bias, tiles, count, scalars[0],
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), *bias_strides, out.stride(0), out.stride(1), out.stride(2),
        *shape, out, **consts,
    )  # fmt: skip
    return count[..., 1]


def skip_softmax_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: float | None = None,
    causal: bool = False,
    scale_factor: float = 0.0,
    block_m: int = 128,
    block_n: int = 64,
    num_splits: int | None = 1,
    count_skips: bool = False,
    out: torch.Tensor | None = None,
    config: KernelConfig | None = None,
    key_bias: torch.Tensor | None = None,
) -> SkipSoftmaxResult:
    """BLASST skip-softmax attention with the Triton kernels (same semantics as the reference).

    q ``[B, Hq, Lq, D]``, k/v ``[B, Hkv, Lkv, D]``; fp16/bf16 (fp32 accumulation) or fp32 (IEEE, no TF32).
    ``num_splits``: KV splits (flash-decoding); ``None`` picks one from the GPU size for calls with
    at most :data:`DECODE_MAX_QUERY_ROWS` query rows (1 otherwise). ``out``: an optional
    ``[B, Hq, Lq, D]`` tensor to write into. ``count_skips`` fills ``tiles_skipped``. ``key_bias``: an
    additive key mask broadcastable to ``[B, Lkv]`` (0 keeps a key, -inf hides it), added to every query row's scores.
    """
    _check_inputs(q, k, v, block_m, block_n)
    _check(q, k, v, block_m, block_n)
    batch, q_heads, q_len, head_dim = q.shape
    kv_heads, kv_len = k.shape[1], k.shape[2]
    ln_lambda = _ln_lambda(scale_factor, kv_len)
    sm_scale = 1.0 / math.sqrt(head_dim) if scale is None else float(scale)
    if not sm_scale > 0:
        raise EdgeAttnError(f"scale must be > 0, got {scale}")
    q, k, v = (last_dim_contiguous(x) for x in (q, k, v))
    bias_arg, bias_strides = _key_bias(key_bias, batch, kv_len, q.device)
    if out is None:
        out = torch.empty_like(q)
    elif out.shape != q.shape or out.dtype != q.dtype or out.device != q.device or out.stride(-1) != 1:
        raise EdgeAttnError(f"out must be a {tuple(q.shape)} {q.dtype} tensor on {q.device} with a contiguous last dim")
    if q_len == 0 or batch * q_heads == 0:
        empty = torch.zeros(batch, q_heads, 0, dtype=torch.int64, device=q.device)
        return SkipSoftmaxResult(out, empty if count_skips else None, empty)

    bm = kernel_block_m(q_len, block_m)
    n_q_tiles = -(-q_len // bm)
    if num_splits is None:
        num_splits = _auto_splits(q, batch * q_heads * n_q_tiles, kv_len, block_n)
    per_split = kv_tiles_per_split(kv_len, block_n, num_splits)
    n_kv_tiles = -(-kv_len // block_n)
    splits = -(-n_kv_tiles // per_split)  # trailing empty splits dropped
    if config is None:
        config = default_config(head_dim, bm, block_n, decode=q_len <= DECODE_MAX_QUERY_ROWS, arch=_arch(q))

    dev = q.device
    dummy = torch.empty(1, dtype=torch.int32, device=dev)
    counts = torch.zeros(batch * q_heads, splits, n_q_tiles, 2, dtype=torch.int32, device=dev) if count_skips else dummy
    if splits == 1:  # the kernel writes the output directly
        target, lse, o_strides = out, dummy, (out.stride(0), out.stride(1), 0, out.stride(2))
    else:  # fp32 partials and log-sum-exps per split, merged into out
        target = torch.empty(batch, q_heads, splits, q_len, head_dim, dtype=torch.float32, device=dev)
        lse = torch.empty(batch * q_heads, splits, q_len, dtype=torch.float32, device=dev)
        o_strides = (target.stride(0), target.stride(1), target.stride(2), target.stride(3))

    kernels = _kernels(dev)
    use_skip = ln_lambda != -math.inf
    upcast = upcast_dot(q.dtype, kernels.skip_softmax_attn_fwd)
    scalars = (sm_scale, math.log2(scale_factor) if use_skip else 0.0)
    with torch.cuda.device(dev) if dev.type == "cuda" else nullcontext():
        if config.grouped_decode and q_len == 1 and q_heads // kv_heads <= MAX_GROUP_ROWS:
            from .decode import skip_softmax_decode_grouped

            group = q_heads // kv_heads
            skip_softmax_decode_grouped[(batch * kv_heads, splits)](
                q, k, v, bias_arg, *scalars,
                q.stride(0), q.stride(1),
                k.stride(0), k.stride(1), k.stride(2),
                v.stride(0), v.stride(1), v.stride(2),
                *bias_strides, *o_strides[:3],
                kv_heads, group, kv_len, per_split,
                target, lse, counts,
                HEAD_DIM=head_dim, GROUP_ROWS=max(16, 1 << (group - 1).bit_length()), BLOCK_N=block_n,
                USE_SKIP=use_skip, STORE_LSE=splits > 1, COUNT_SKIPS=count_skips, UPCAST_DOT=upcast,
                KEY_BIAS=bias_arg is not None, num_warps=config.num_warps, num_stages=config.num_stages,
            )  # fmt: skip
        elif config.two_pass and use_skip and splits == 1:
            kept = _two_pass(q, k, v, bias_arg, bias_strides, out, scalars, causal=bool(causal), bm=bm,
                             block_n=block_n, upcast=upcast, config=config)  # fmt: skip
            if count_skips:
                visited = visited_tiles(q_len, kv_len, causal=causal, block_m=bm, block_n=block_n, device=dev)
                counts[..., 1] = visited.to(torch.int32)
                counts[..., 0] = visited.to(torch.int32) - kept.reshape(batch * q_heads, 1, n_q_tiles)
        else:
            kernels.skip_softmax_attn_fwd[(n_q_tiles, batch * q_heads, splits)](
                q, k, v, bias_arg, *scalars,
                q.stride(0), q.stride(1), q.stride(2),
                k.stride(0), k.stride(1), k.stride(2),
                v.stride(0), v.stride(1), v.stride(2),
                *bias_strides,
                *o_strides,
                q_heads, q_heads // kv_heads, q_len, kv_len, per_split,
                target, lse, counts,
                HEAD_DIM=head_dim, BLOCK_M=bm, BLOCK_N=block_n,
                CAUSAL=bool(causal), USE_SKIP=use_skip, V_LOAD=config.v_load,
                STORE_LSE=splits > 1, COUNT_SKIPS=count_skips,
                UPCAST_DOT=upcast, KEY_BIAS=bias_arg is not None,
                num_warps=config.num_warps, num_stages=config.num_stages,
            )  # fmt: skip
        if splits > 1:
            rows = min(4, 1 << (q_len - 1).bit_length())  # one row per program for decode
            kernels.skip_softmax_merge_splits[(-(-q_len // rows), batch * q_heads)](
                target, lse, q_heads, q_len, splits, out.stride(0), out.stride(1), out.stride(2), out,
                HEAD_DIM=head_dim, BLOCK_R=rows, BLOCK_S=min(8, 1 << (splits - 1).bit_length()), num_warps=4,
            )  # fmt: skip

    if count_skips:
        per_tile = counts.view(batch, q_heads, splits, n_q_tiles, 2).sum(2, dtype=torch.int64)
        return SkipSoftmaxResult(out, per_tile[..., 0], per_tile[..., 1])
    total = visited_tiles(q_len, kv_len, causal=causal, block_m=bm, block_n=block_n, device=dev)
    return SkipSoftmaxResult(out, None, total.expand(batch, q_heads, n_q_tiles))

