"""Torch-facing calls of the block-sparse kernels (``edgeattn.BlockSelect``, ``edgeattn.BlockSparseAttention``).

CUDA tensors run the compiled kernels; CPU tensors run the same kernels in the Triton interpreter
(slow: for tests at small sizes), which needs ``TRITON_INTERPRET=1`` set before triton is first
imported. Attribute names and meanings are those of the registry references
(``plugins/block_select/reference.py``, ``plugins/block_sparse_attention/reference.py``):

- :func:`select_blocks` — BlockSelect: pooled scores and the selection, as a :class:`BlockList`
  (kept key blocks per (batch, key/value head, query block), ascending, padded with -1, a count
  per row; optionally the bool mask and the Rectified SpaAttn terms). Two launches (three with
  query_pool "rows").
- :func:`attend_blocks` — attention over a :class:`BlockList` (work proportional to the kept blocks).
- :func:`attend_window` — the window + sinks layout (no list: the blocks follow from the geometry).
- :func:`block_sparse_attention` — the whole op, with the reference's signature and attributes.

Differences from the references (by design; ``ops`` refuses what it cannot do rather than guess):
the attention's token ``mask`` input is refused and ``softmax_precision`` is ignored (the kernels
take no token mask and always accumulate in fp32); ``heads`` (dense key/value heads) is supported
for the block layouts, refused for "window"; selection runs in fp32 where the reference runs in
float64, so a block whose probability (or cumulative mass, or threshold margin) lies within ~1e-6
of a decision boundary may be decided the other way; ties are broken as the reference breaks them
(forced blocks first, then by probability, equal probabilities to the lower block index).
Head sizes and block sizes are powers of two in [16, 256]; the selection tile holds at most
``config.MAX_SCORE_TILE`` scores per query block (4096 key blocks for groups of up to 8 heads).

This module imports torch, triton and the standard library only (plus ``edgeattn.errors`` and
``..triton_aot``), so ``benchmarks/gpu_attention.py`` can load it without the rest of edgeattn.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from types import ModuleType
from typing import Any

import torch

from ...errors import EdgeAttnError
from ..triton_aot import check_interpreter, check_kernel_device, check_tile, last_dim_contiguous, upcast_dot
from .blocks import BlockGeometry, BlockList, block_geometry, budget_of, visible_pairs
from .config import AttentionConfig, attention_config, pool_rows, select_config

__all__ = [
    "AttentionConfig",
    "BlockGeometry",
    "BlockList",
    "attend_blocks",
    "attend_window",
    "block_geometry",
    "block_sparse_attention",
    "budget_of",
    "select_blocks",
    "visible_pairs",
]

MODES = {"topk": 0, "threshold": 1, "cumprob": 2, "mask": 3}
QUERY_POOLS = ("mean", "rows")
KEY_POOLS = {"mean": 0, "max": 1, "min": 2}
GROUP_REDUCES = {"mean": 0, "max": 1}
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


# --------------------------------------------------------------------------------------- checks


def _kernels(device: torch.device) -> tuple[ModuleType, ModuleType]:
    check_kernel_device(device, "block-sparse kernels run")
    from . import attention, selection

    check_interpreter(device, attention.block_sparse_attn_fwd)
    return attention, selection


def _check_qk(q: torch.Tensor, k: torch.Tensor, block: int) -> None:
    if q.dim() != 4 or k.dim() != 4:
        raise EdgeAttnError(f"q and k must be [B, H, L, D]; got {tuple(q.shape)} and {tuple(k.shape)}")
    if q.dtype != k.dtype or q.dtype not in _DTYPES:
        raise EdgeAttnError(f"q and k must share one dtype of fp16/bf16/fp32; got {q.dtype}, {k.dtype}")
    if q.device != k.device:
        raise EdgeAttnError(f"q and k must be on one device; got {q.device}, {k.device}")
    if q.shape[0] != k.shape[0] or q.shape[3] != k.shape[3]:
        raise EdgeAttnError(f"q {tuple(q.shape)} and k {tuple(k.shape)} differ in batch or head size")
    if k.shape[1] == 0 or q.shape[1] % k.shape[1]:
        raise EdgeAttnError(f"query heads ({q.shape[1]}) must be a multiple of key/value heads ({k.shape[1]})")
    check_tile("head size", q.shape[-1], "")
    check_tile("block_size", block)


def _scale(scale: float, head_dim: int) -> float:
    return float(scale) if scale and scale > 0 else 1.0 / math.sqrt(head_dim)


def _device_ctx(x: torch.Tensor) -> Any:
    return torch.cuda.device(x.device) if x.device.type == "cuda" else nullcontext()


def _arch(x: torch.Tensor) -> int:
    if x.device.type != "cuda":
        return 90
    major, minor = torch.cuda.get_device_capability(x.device)
    return 10 * major + minor


# ------------------------------------------------------------------------------------ selection


def select_blocks(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor | None = None,
    block_mask: torch.Tensor | None = None,
    *,
    scale: float = 0.0,
    causal: int = 0,
    block_size: int = 64,
    mode: str = "topk",
    keep: float = 0.25,
    keep_blocks: int = 0,
    threshold: float = 0.01,
    cum_prob: float = 0.9,
    query_pool: str = "mean",
    key_pool: str = "mean",
    group_reduce: str = "mean",
    local_blocks: int = 1,
    sink_blocks: int = 1,
    dense_last_rows: int = 0,
    dense_decode: int = 1,
    dense_heads: tuple[int, ...] | list[int] = (),
    rectify: bool = False,
    store_mask: bool = False,
) -> BlockList:
    """BlockSelect on the GPU: q ``[B, Hq, Lq, D]``, k ``[B, Hkv, Lkv, D]`` -> :class:`BlockList`.

    ``mode`` "mask" takes the blocks from ``block_mask`` (bool ``[B or 1, Hkv or 1, nQB, nKB]``; no
    forced blocks or dense rows, as the reference's layout "mask"). ``rectify`` (needs ``v``) also
    computes the Rectified SpaAttn terms. ``dense_heads``: key/value heads that keep every
    available block (BlockSparseAttention's ``heads`` complement). ``store_mask`` fills ``mask``.
    ``query_pool`` "rows" scores every query row (a third launch, O(Lq·nKB·D) fp32 work) where
    "mean" scores the block's mean query.
    """
    _check_qk(q, k, block_size)
    if (mode not in MODES or key_pool not in KEY_POOLS or group_reduce not in GROUP_REDUCES
            or query_pool not in QUERY_POOLS):  # fmt: skip
        raise EdgeAttnError(f"unknown mode/query_pool/key_pool/group_reduce: {mode!r}, {query_pool!r}, {key_pool!r}, "
                            f"{group_reduce!r}")  # fmt: skip
    if local_blocks < 0 or sink_blocks < 0 or dense_last_rows < 0 or keep_blocks < 0:
        raise EdgeAttnError("local_blocks, sink_blocks, dense_last_rows and keep_blocks must be >= 0")
    if mode == "topk" and keep_blocks == 0 and not 0.0 < keep <= 1.0:
        raise EdgeAttnError(f"keep must be in (0, 1], got {keep}")
    if mode == "cumprob" and not 0.0 < cum_prob <= 1.0:
        raise EdgeAttnError(f"cum_prob must be in (0, 1], got {cum_prob}")
    if rectify and v is None:
        raise EdgeAttnError("rectify needs v (the block means of V)")
    batch, q_heads, q_len, head_dim = q.shape
    kv_heads, kv_len = k.shape[1], k.shape[2]
    geo = block_geometry(q_len, kv_len, block_size, causal)
    cfg = select_config(geo.n_q_blocks, geo.n_kv_blocks, q_heads // kv_heads)
    if cfg is None:
        raise EdgeAttnError(
            f"{geo.n_kv_blocks} key blocks with {q_heads // kv_heads} query heads per key/value head do not fit the "
            f"selection kernel's score tile; use a larger block_size"
        )
    dev = q.device
    q, k = last_dim_contiguous(q), last_dim_contiguous(k)
    n_qb, n_kb = geo.n_q_blocks, geo.n_kv_blocks
    f32 = dict(dtype=torch.float32, device=dev)
    dummy = torch.empty(1, dtype=torch.int32, device=dev)
    mask_in = dummy
    if mode == "mask":
        if block_mask is None:
            raise EdgeAttnError("mode 'mask' needs block_mask")
        mask_in = block_mask.to(device=dev, dtype=torch.uint8).expand(batch, kv_heads, n_qb, n_kb).contiguous()
    need_probs = mode != "mask" or rectify
    rows = need_probs and query_pool == "rows"
    q_bar = torch.empty(batch, q_heads, n_qb, head_dim, **f32) if need_probs and not rows else dummy
    probs = torch.empty(batch, q_heads, n_qb, n_kb, **f32) if rows else dummy
    k_bar_t = torch.empty(batch, kv_heads, head_dim, n_kb, **f32) if need_probs else dummy
    v_bar_t = torch.empty(batch, kv_heads, head_dim, n_kb, **f32) if rectify else dummy
    dense = dummy
    if dense_heads:
        if any(not 0 <= h < kv_heads for h in dense_heads):
            raise EdgeAttnError(f"dense_heads {list(dense_heads)} name key/value heads the model lacks ({kv_heads})")
        dense = torch.zeros(kv_heads, dtype=torch.int32, device=dev)
        dense[list(dense_heads)] = 1

    indices = torch.empty(batch, kv_heads, n_qb, n_kb, dtype=torch.int32, device=dev)
    counts = torch.empty(batch, kv_heads, n_qb, dtype=torch.int32, device=dev)
    mask = torch.empty(batch, kv_heads, n_qb, n_kb, dtype=torch.uint8, device=dev) if store_mask else dummy
    rect_mass = torch.empty(batch, q_heads, n_qb, **f32) if rectify else dummy
    rect_rest = torch.empty(batch, q_heads, n_qb, head_dim, **f32) if rectify else dummy
    budget = keep_blocks if keep_blocks > 0 else (budget_of(keep, n_kb) if mode == "topk" else 1)

    attention_mod, selection = _kernels(dev)
    del attention_mod
    with _device_ctx(q):
        if need_probs:
            if rectify:
                v = last_dim_contiguous(v)
                v_strides = (v.stride(0), v.stride(1), v.stride(2))
            else:
                v, v_strides = k, (0, 0, 0)
            programs = (0 if rows else n_qb * q_heads) + n_kb * kv_heads * (2 if rectify else 1)
            selection.block_pool_fwd[(programs, batch)](
                q, k, v,
                q.stride(0), q.stride(1), q.stride(2),
                k.stride(0), k.stride(1), k.stride(2),
                *v_strides,
                q_heads, kv_heads, q_len, kv_len, geo.front, n_qb, n_kb,
                q_bar, k_bar_t, v_bar_t,
                HEAD_DIM=head_dim, BLOCK=block_size, ROWS=pool_rows(block_size), KEY_POOL=KEY_POOLS[key_pool],
                POOL_Q=not rows, POOL_V=bool(rectify), num_warps=4,
            )  # fmt: skip
        if rows:
            selection.block_row_probs_fwd[(n_qb, batch * q_heads)](
                q, k_bar_t, _scale(scale, head_dim), q.stride(0), q.stride(1), q.stride(2),
                q_heads, kv_heads, q_len, geo.front, geo.first_block, n_qb, n_kb, probs,
                HEAD_DIM=head_dim, BLOCK=block_size, KC=min(64, cfg.nkb_p2), CAUSAL=bool(causal),
                num_warps=8 if block_size * head_dim >= 8192 else 4,
            )  # fmt: skip
        selection.block_select_fwd[(-(-n_qb // cfg.bt), batch * kv_heads)](
            q_bar, k_bar_t, probs, v_bar_t, mask_in, dense,
            _scale(scale, head_dim), float(threshold), float(cum_prob),
            kv_heads, q_heads // kv_heads, q_len, geo.first_block, n_qb, n_kb,
            budget, local_blocks, sink_blocks, dense_last_rows, int(bool(dense_decode)),
            indices, counts, mask, rect_mass, rect_rest,
            HEAD_DIM=head_dim, GROUP_P2=cfg.group_p2, BT=cfg.bt, NKB_P2=cfg.nkb_p2, MODE=MODES[mode],
            GROUP_REDUCE=GROUP_REDUCES[group_reduce], CAUSAL=bool(causal), RECTIFY=bool(rectify),
            STORE_MASK=bool(store_mask), USE_DENSE_HEADS=bool(dense_heads), PROBS_IN=rows, num_warps=cfg.num_warps,
        )  # fmt: skip
    return BlockList(
        indices=indices,
        counts=counts,
        geometry=geo,
        mask=mask.bool() if store_mask else None,
        rect_mass=rect_mass if rectify else None,
        rect_rest=rect_rest if rectify else None,
    )


# ------------------------------------------------------------------------------------ attention


def _check_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block: int, out: torch.Tensor | None) -> None:
    _check_qk(q, k, block)
    if v.shape != k.shape or v.dtype != k.dtype or v.device != k.device:
        raise EdgeAttnError(f"v must match k: {tuple(v.shape)} {v.dtype} vs {tuple(k.shape)} {k.dtype}")
    if out is not None and (out.shape != q.shape or out.dtype != q.dtype or out.device != q.device
                            or out.stride(-1) != 1):  # fmt: skip
        raise EdgeAttnError(f"out must be a {tuple(q.shape)} {q.dtype} tensor on {q.device} with a contiguous last dim")


def _launch_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, geo: BlockGeometry, *, scale: float,
    layout: int, blocks: BlockList | None, window: int, sinks: int, config: AttentionConfig | None,
) -> torch.Tensor:  # fmt: skip
    batch, q_heads, _, head_dim = q.shape
    kv_heads = k.shape[1]
    group = q_heads // kv_heads
    cfg = config or attention_config(head_dim, geo.block, group, arch=_arch(q))
    if group % cfg.heads or geo.block % cfg.block_n or cfg.block_n < 16:
        raise EdgeAttnError(f"config {cfg} does not fit block {geo.block} and GQA group {group}")
    q, k, v = (last_dim_contiguous(x) for x in (q, k, v))
    dummy = torch.empty(1, dtype=torch.int32, device=q.device)
    idx = cnt = mass = rest = dummy
    rectify = False
    if blocks is not None:
        idx, cnt = blocks.indices, blocks.counts
        rectify = blocks.rect_mass is not None
        if rectify:
            mass, rest = blocks.rect_mass, blocks.rect_rest
    attention, _ = _kernels(q.device)
    upcast = upcast_dot(q.dtype, attention.block_sparse_attn_fwd)
    with _device_ctx(q):
        attention.block_sparse_attn_fwd[(geo.n_q_blocks, batch * q_heads // cfg.heads)](
            q, k, v, None, idx, cnt, mass, rest,
            _scale(scale, head_dim),
            q.stride(0), q.stride(1), q.stride(2),
            k.stride(0), k.stride(1), k.stride(2),
            v.stride(0), v.stride(1), v.stride(2),
            0, 0,
            out.stride(0), out.stride(1), out.stride(2),
            q_heads, kv_heads, geo.q_len, geo.kv_len, geo.offset, geo.first_block, geo.n_q_blocks, window, sinks,
            out,
            HEAD_DIM=head_dim, BLOCK=geo.block, BLOCK_N=cfg.block_n, HEADS=cfg.heads, CAUSAL=bool(geo.causal),
            LAYOUT=layout, RECTIFY=rectify, UPCAST_DOT=upcast, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        )  # fmt: skip
    return out


def attend_blocks(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    blocks: BlockList,
    *,
    scale: float = 0.0,
    out: torch.Tensor | None = None,
    config: AttentionConfig | None = None,
) -> torch.Tensor:
    """Attention of each query block over the key blocks of ``blocks`` (and the causal rule of its
    geometry); with the Rectified SpaAttn terms in ``blocks``, the rectified output.

    The list may hold any blocks in any order (a user's static layout: indices, -1 padding, counts);
    blocks the causal rule hides cost their tiles but contribute nothing.
    """
    geo = blocks.geometry
    _check_attention(q, k, v, geo.block, out)
    batch, q_heads, q_len, head_dim = q.shape
    kv_heads, kv_len = k.shape[1], k.shape[2]
    if (q_len, kv_len) != (geo.q_len, geo.kv_len):
        raise EdgeAttnError(f"blocks were made for Lq={geo.q_len}, Lkv={geo.kv_len}; got {q_len}, {kv_len}")
    want = (batch, kv_heads, geo.n_q_blocks, geo.n_kv_blocks)
    if tuple(blocks.indices.shape) != want or tuple(blocks.counts.shape) != want[:3]:
        raise EdgeAttnError(f"block list must be int32 {want} with counts {want[:3]}; got "
                            f"{tuple(blocks.indices.shape)}, {tuple(blocks.counts.shape)}")  # fmt: skip
    if blocks.indices.dtype != torch.int32 or blocks.counts.dtype != torch.int32 or not blocks.indices.is_contiguous():
        raise EdgeAttnError("block indices and counts must be contiguous int32 tensors")
    if blocks.rect_mass is not None and (blocks.rect_rest is None or blocks.rect_rest.shape[-1] != head_dim
                                         or blocks.rect_mass.shape != (batch, q_heads, geo.n_q_blocks)):  # fmt: skip
        raise EdgeAttnError("the Rectified SpaAttn terms do not match q (select the blocks with these q, k, v)")
    out = torch.empty_like(q) if out is None else out
    return _launch_attention(q, k, v, out, geo, scale=scale, layout=0, blocks=blocks, window=1, sinks=0, config=config)


def attend_window(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: float = 0.0,
    causal: int = 0,
    block_size: int = 64,
    window: int = 256,
    sinks: int = 4,
    out: torch.Tensor | None = None,
    config: AttentionConfig | None = None,
) -> torch.Tensor:
    """The window layout: keys ``p - window < j`` (causal; ``|p - j| < window`` without) and ``j < sinks``."""
    _check_attention(q, k, v, block_size, out)
    if window < 1 or sinks < 0:
        raise EdgeAttnError(f"window must be >= 1 and sinks >= 0, got {window} and {sinks}")
    geo = block_geometry(q.shape[2], k.shape[2], block_size, causal)
    out = torch.empty_like(q) if out is None else out
    return _launch_attention(q, k, v, out, geo, scale=scale, layout=1, blocks=None, window=window, sinks=sinks,
                             config=config)  # fmt: skip


# ------------------------------------------------------------------------------------------- op


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    return x.reshape(x.shape[0], x.shape[1], heads, -1).transpose(1, 2)


_SELECT_KEYS = ("mode", "keep", "keep_blocks", "threshold", "cum_prob", "query_pool", "key_pool", "group_reduce",
                "local_blocks", "sink_blocks", "dense_last_rows", "dense_decode")  # fmt: skip


def block_sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    block_mask: torch.Tensor | None = None,
    *,
    scale: float = 0.0,
    causal: int = 0,
    q_num_heads: int = 0,
    kv_num_heads: int = 0,
    softmax_precision: int = 0,
    layout: str = "select",
    block_size: int = 64,
    window: int = 256,
    sinks: int = 4,
    heads: tuple[int, ...] | list[int] = (),
    rectify: int = 0,
    return_blocks: bool = False,
    config: AttentionConfig | None = None,
    **selection: Any,
) -> torch.Tensor | tuple[torch.Tensor, BlockList | None]:
    """``edgeattn.BlockSparseAttention`` with the kernels: the reference's inputs and attributes
    (selection attributes as keywords: mode, keep, keep_blocks, threshold, cum_prob, query_pool,
    key_pool, group_reduce, local_blocks, sink_blocks, dense_last_rows, dense_decode).

    4-D ``[B, H, L, D]`` or 3-D ``[B, L, H·D]`` (with the head counts) tensors; the output has Q's
    layout and dtype. The token ``mask`` input is refused; ``softmax_precision`` is accepted and
    ignored (softmax always accumulates in fp32). ``return_blocks`` also returns the
    :class:`BlockList` (None for the window layout).
    """
    del softmax_precision
    if mask is not None:
        raise EdgeAttnError("the block-sparse kernels take no token mask; run the reference (or fold the mask "
                            "into the block layout)")  # fmt: skip
    unknown = set(selection) - set(_SELECT_KEYS)
    if unknown:
        raise EdgeAttnError(f"unknown attributes {sorted(unknown)}; selection attributes are {list(_SELECT_KEYS)}")
    rank = q.dim()
    if rank == 3:
        kv_h = kv_num_heads or q_num_heads
        if q_num_heads <= 0:
            raise EdgeAttnError("3-D q/k/v need q_num_heads")
        out3 = torch.empty_like(q)
        q, k, v = _split_heads(q, q_num_heads), _split_heads(k, kv_h), _split_heads(v, kv_h)
        out = _split_heads(out3, q_num_heads)
    else:
        out3, out = None, None
    kv_heads = k.shape[1]
    if any(not 0 <= h < kv_heads for h in heads) or len(set(heads)) != len(heads):
        raise EdgeAttnError(f"heads {list(heads)} must be distinct key/value heads of the model (it has {kv_heads})")
    dense_heads = tuple(h for h in range(kv_heads) if h not in set(heads)) if heads else ()
    blocks = None
    if layout == "window":
        if dense_heads:
            raise EdgeAttnError("the window kernel applies to every head; `heads` is supported for block layouts")
        result = attend_window(q, k, v, scale=scale, causal=causal, block_size=block_size, window=window,
                               sinks=sinks, out=out, config=config)  # fmt: skip
    elif layout in ("select", "mask"):
        opts = dict(selection)
        if layout == "mask":
            opts["mode"] = "mask"
        elif opts.get("mode") == "mask":
            raise EdgeAttnError("mode 'mask' belongs to layout 'mask'")
        blocks = select_blocks(q, k, v if rectify else None, block_mask, scale=scale, causal=causal,
                               block_size=block_size, dense_heads=dense_heads, rectify=bool(rectify), **opts)  # fmt: skip
        result = attend_blocks(q, k, v, blocks, scale=scale, out=out, config=config)
    else:
        raise EdgeAttnError(f"layout must be one of select, mask, window; got {layout!r}")
    if rank == 3:
        result = out3
    return (result, blocks) if return_blocks else result
