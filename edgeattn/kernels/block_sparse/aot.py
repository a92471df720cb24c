"""Ahead-of-time builds of the block-sparse kernels for TensorRT (sm_87, sm_89, sm_90).

A TensorRT AOT plugin launches PTX with ``(input pointers..., int32 scalars..., output pointers...)``
and cannot pass floats, so each build compiles the op's float attributes (softmax scale, threshold,
cum_prob) and its static choices (head size, dtype, causal, block size, layout, mode, pooling, GQA
group, the longest key axis, rectify) into the kernels, and records every launch: PTX entry, block
size, shared memory, grid and every runtime parameter in order with the formula that computes it
from the op's shapes (``B, Hq, Hkv, Lq, Lkv, D``; tensors contiguous ``[B, H, L, D]``) and
attributes. Geometry symbols: ``off = Lkv - Lq`` when causal = 2 else 0, ``first = off // b``,
``nQB = (off + Lq - 1) // b - first + 1``, ``nKB = cdiv(Lkv, b)``, ``front = off - first·b``.

Layout select / mask: ``block_pool_fwd`` (pooled Q, K and, with rectify, V; skipped for mask
without rectify) -> [``block_row_probs_fwd`` with query_pool "rows"] -> ``block_select_fwd`` (the
block list) -> ``block_sparse_attn_fwd``; the
intermediate tensors (pools, list, counts, rectify terms) are plugin workspace, listed under
``tensors``. Layout window: ``block_sparse_attn_fwd`` alone.

Run ``python -m edgeattn.kernels.block_sparse.aot --out DIR`` in a process where
``TRITON_INTERPRET`` is unset: it writes ``<variant>.sm<arch>.json`` and one ``.ptx`` per kernel.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

from ..triton_aot import DEFAULT_ARCHS, TARGETS, AotBuildError, KernelParam, build_all, write_build, compile_fitting
from .config import attention_config, next_power_of_two, pool_rows, select_config

__all__ = ["BlockSparseBuild", "build", "main", "parameter_order", "write"]

OP_NAME = "edgeattn.BlockSparseAttention"
_MODES = {"topk": 0, "threshold": 1, "cumprob": 2}
_POOLS = {"mean": 0, "max": 1, "min": 2}


@dataclass(frozen=True)
class BlockSparseBuild:
    """The compile-time attributes of one AOT variant."""

    head_dim: int = 128
    dtype: Literal["fp16", "bf16"] = "fp16"
    causal: int = 2
    block_size: int = 64
    layout: Literal["select", "mask", "window"] = "select"
    mode: Literal["topk", "threshold", "cumprob"] = "topk"
    query_pool: Literal["mean", "rows"] = "mean"
    key_pool: Literal["mean", "max", "min"] = "mean"
    group_reduce: Literal["mean", "max"] = "mean"
    kv_group: int = 4
    """Query heads per key/value head (static per model)."""
    max_kv_len: int = 32768
    """Longest key axis the engine serves: sets the selection tile (``cdiv(max_kv_len, block)``
    key blocks, rounded up to a power of two)."""
    rectify: bool = False
    threshold: float = 0.01
    cum_prob: float = 0.9
    sm_scale: float | None = None
    dense_heads: bool = False
    """Whether a ``DenseHeads`` int32 [Hkv] input marks heads outside the op's ``heads``."""
    select_only: bool = False
    """The selection alone (BlockSelect): its block mask ``BlockMask`` is the output, no attention runs."""
    key_bias: bool = False
    """Whether a ``KeyBias`` input ``[B or 1, Lkv]`` (an additive key mask, Q's type) is added to the scores."""

    @property
    def name(self) -> str:
        parts = [self.layout]
        if self.layout != "window":
            parts += [self.mode, f"q{self.query_pool}", f"k{self.key_pool}", f"g{self.group_reduce}"]
        parts += [f"d{self.head_dim}", self.dtype, f"c{self.causal}", f"b{self.block_size}", f"grp{self.kv_group}"]
        if self.layout != "window":
            parts.append(f"kv{self.max_kv_len}")
        if self.rectify:
            parts.append("rect")
        if self.dense_heads:
            parts.append("dh")
        if self.key_bias:
            parts.append("kbias")
        if self.select_only:
            parts.append("maskout")
        return "_".join(parts)

    @property
    def scale(self) -> float:
        return self.sm_scale if self.sm_scale else 1.0 / math.sqrt(self.head_dim)


def _i32(name: str, value: str, div: bool = False) -> KernelParam:
    return KernelParam(name, "i32", "scalar", div, value)


def _ptr(name: str, type_: str, role: str) -> KernelParam:
    return KernelParam(name, type_, role, True)  # type: ignore[arg-type]


def _needs_pool(b: BlockSparseBuild) -> bool:
    return b.layout == "select" or (b.layout == "mask" and b.rectify)


def _rows(b: BlockSparseBuild) -> bool:
    """Whether block probabilities come from every query row (a third launch) rather than pooled Q."""
    return _needs_pool(b) and b.query_pool == "rows"


def _pool(b: BlockSparseBuild) -> tuple[list[KernelParam], dict[str, Any]]:
    dt = f"*{b.dtype}"
    pool_q = not _rows(b)
    params = ([_ptr("Q", dt, "input")] if pool_q else []) + [_ptr("K", dt, "input")]
    if b.rectify:
        params.append(_ptr("V", dt, "input"))
    strides = ([("q", "Hq")] if pool_q else []) + [("k", "Hkv")] + ([("v", "Hkv")] if b.rectify else [])
    for t, h in strides:
        length = "Lq" if t == "q" else "Lkv"
        params += [_i32(f"stride_{t}b", f"{h}*{length}*D", True), _i32(f"stride_{t}h", f"{length}*D", True),
                   _i32(f"stride_{t}{'m' if t == 'q' else 'n'}", "D", True)]  # fmt: skip
    params += [_i32("num_q_heads", "Hq"), _i32("num_kv_heads", "Hkv"), _i32("q_len", "Lq"), _i32("kv_len", "Lkv"),
               _i32("front", "front"), _i32("n_q_blocks", "nQB"), _i32("n_kv_blocks", "nKB")]  # fmt: skip
    params += ([_ptr("QBar", "*fp32", "output")] if pool_q else []) + [_ptr("KBarT", "*fp32", "output")]
    consts: dict[str, Any] = {"HEAD_DIM": b.head_dim, "BLOCK": b.block_size, "ROWS": pool_rows(b.block_size),
                              "KEY_POOL": _POOLS[b.key_pool], "POOL_Q": pool_q, "POOL_V": b.rectify}  # fmt: skip
    if not pool_q:
        consts |= {"Q": None, "stride_qb": 0, "stride_qh": 0, "stride_qm": 0, "QBar": None}
    if b.rectify:
        params.append(_ptr("VBarT", "*fp32", "output"))
    else:
        consts |= {"V": None, "stride_vb": 0, "stride_vh": 0, "stride_vn": 0, "VBarT": None}
    return params, consts


def _row_probs(b: BlockSparseBuild) -> tuple[list[KernelParam], dict[str, Any]]:
    params = [_ptr("Q", f"*{b.dtype}", "input"), _ptr("KBarT", "*fp32", "input"),
              _i32("stride_qb", "Hq*Lq*D", True), _i32("stride_qh", "Lq*D", True), _i32("stride_qm", "D", True),
              _i32("num_q_heads", "Hq"), _i32("num_kv_heads", "Hkv"), _i32("q_len", "Lq"), _i32("front", "front"),
              _i32("first_block", "first"), _i32("n_q_blocks", "nQB"), _i32("n_kv_blocks", "nKB"),
              _ptr("Probs", "*fp32", "output")]  # fmt: skip
    n_kv_blocks = -(-b.max_kv_len // b.block_size)
    consts = {"sm_scale": b.scale, "HEAD_DIM": b.head_dim, "BLOCK": b.block_size,
              "KC": min(64, max(16, next_power_of_two(n_kv_blocks))), "CAUSAL": b.causal > 0}  # fmt: skip
    return params, consts


def _select(b: BlockSparseBuild) -> tuple[list[KernelParam], dict[str, Any], int, int]:
    probs = b.layout == "select" or b.rectify
    rows = _rows(b)
    params: list[KernelParam] = []
    consts: dict[str, Any] = {"sm_scale": b.scale, "threshold": float(b.threshold), "cum_prob": float(b.cum_prob)}
    for name, on in (("QBar", probs and not rows), ("KBarT", probs and not rows), ("Probs", rows),
                     ("VBarT", b.rectify), ("MaskIn", b.layout == "mask"), ("DenseHeads", b.dense_heads)):  # fmt: skip
        if on:
            params.append(_ptr(name, "*i8" if name == "MaskIn" else "*i32" if name == "DenseHeads" else "*fp32", "input"))
        else:
            consts[name] = None
    # topk: keep_blocks, or max(1, ceil(keep·nKB - 1e-4)) (geometry.budget_of): a launcher computes it
    budget = "budget" if b.mode == "topk" and b.layout == "select" else "1"
    params += [_i32("num_kv_heads", "Hkv"), _i32("kv_group", "Hq/Hkv"), _i32("q_len", "Lq"),
               _i32("first_block", "first"), _i32("n_q_blocks", "nQB"), _i32("n_kv_blocks", "nKB"),
               _i32("budget", budget), _i32("local_blocks", "local_blocks"), _i32("sink_blocks", "sink_blocks"),
               _i32("dense_last_rows", "dense_last_rows"), _i32("dense_decode", "dense_decode")]  # fmt: skip
    params += [_ptr("BlockIdx", "*i32", "output"), _ptr("BlockCount", "*i32", "output")]
    if b.select_only:
        params.append(_ptr("BlockMask", "*i8", "output"))
    else:
        consts["BlockMask"] = None
    if b.rectify:
        params += [_ptr("RectMass", "*fp32", "output"), _ptr("RectRest", "*fp32", "output")]
    else:
        consts |= {"RectMass": None, "RectRest": None}
    n_kv_blocks = -(-b.max_kv_len // b.block_size)
    cfg = select_config(n_kv_blocks, n_kv_blocks, b.kv_group)
    if cfg is None:
        raise AotBuildError(f"{n_kv_blocks} key blocks x group {b.kv_group} exceed the selection tile")
    consts |= {"HEAD_DIM": b.head_dim, "GROUP_P2": cfg.group_p2, "BT": cfg.bt, "NKB_P2": cfg.nkb_p2,
               "MODE": 3 if b.layout == "mask" else _MODES[b.mode], "GROUP_REDUCE": 0 if b.group_reduce == "mean" else 1,
               "CAUSAL": b.causal > 0, "RECTIFY": b.rectify, "STORE_MASK": b.select_only, "USE_DENSE_HEADS": b.dense_heads,
               "PROBS_IN": rows}  # fmt: skip
    return params, consts, cfg.bt, cfg.num_warps


def _attention(b: BlockSparseBuild) -> tuple[list[KernelParam], dict[str, Any], int, Any]:
    dt = f"*{b.dtype}"
    cfg = attention_config(b.head_dim, b.block_size, b.kv_group)
    params = [_ptr("Q", dt, "input"), _ptr("K", dt, "input"), _ptr("V", dt, "input")]
    consts: dict[str, Any] = {"sm_scale": b.scale}
    if b.key_bias:
        params.append(_ptr("KeyBias", dt, "input"))
    else:
        consts |= {"KeyBias": None, "stride_biasb": 0, "stride_biasn": 0}
    if b.layout == "window":
        consts |= {"BlockIdx": None, "BlockCount": None}
    else:
        params += [_ptr("BlockIdx", "*i32", "input"), _ptr("BlockCount", "*i32", "input")]
    if b.rectify:
        params += [_ptr("RectMass", "*fp32", "input"), _ptr("RectRest", "*fp32", "input")]
    else:
        consts |= {"RectMass": None, "RectRest": None}
    for t, h, length in (("q", "Hq", "Lq"), ("k", "Hkv", "Lkv"), ("v", "Hkv", "Lkv"), ("o", "Hq", "Lq")):
        params += [_i32(f"stride_{t}b", f"{h}*{length}*D", True), _i32(f"stride_{t}h", f"{length}*D", True),
                   _i32(f"stride_{t}{'m' if t in 'qo' else 'n'}", "D", True)]  # fmt: skip
        if t == "v" and b.key_bias:  # the key mask's strides (0 where it broadcasts)
            params += [_i32("stride_biasb", "KBS"), _i32("stride_biasn", "KNS")]
    params += [_i32("num_q_heads", "Hq"), _i32("num_kv_heads", "Hkv"), _i32("q_len", "Lq"), _i32("kv_len", "Lkv"),
               _i32("offset", "off"), _i32("first_block", "first"), _i32("n_q_blocks", "nQB")]  # fmt: skip
    if b.layout == "window":
        params += [_i32("window", "window"), _i32("sinks", "sinks")]
    else:
        consts |= {"window": 1, "sinks": 0}
    params.append(_ptr("Out", dt, "output"))
    consts |= {"HEAD_DIM": b.head_dim, "BLOCK": b.block_size, "BLOCK_N": cfg.block_n, "HEADS": cfg.heads,
               "CAUSAL": b.causal > 0, "LAYOUT": 1 if b.layout == "window" else 0, "RECTIFY": b.rectify,
               "UPCAST_DOT": False, "KEY_BIAS": b.key_bias}  # fmt: skip
    return params, consts, cfg.heads, cfg


def _plan(b: BlockSparseBuild) -> list[tuple[str, list[KernelParam], dict[str, Any], list[str], int, int]]:
    """(kernel, params, constexprs, grid, warps, stages) of every launch, in order."""
    if b.layout not in ("select", "mask", "window") or b.causal not in (0, 1, 2):
        raise AotBuildError(f"unknown layout {b.layout!r} or causal {b.causal}")
    if b.select_only and (b.layout != "select" or b.rectify or b.key_bias):
        raise AotBuildError("a selection-only build takes layout select, without rectify or a key mask")
    plan = []
    if b.layout != "window":
        if _needs_pool(b):
            p, c = _pool(b)
            grid = ("" if _rows(b) else "nQB*Hq+") + f"nKB*Hkv*{2 if b.rectify else 1}"
            plan.append(("block_pool_fwd", p, c, [grid, "B", "1"], 4, 1))
        if _rows(b):
            p, c = _row_probs(b)
            warps = 8 if b.block_size * b.head_dim >= 8192 else 4
            plan.append(("block_row_probs_fwd", p, c, ["nQB", "B*Hq", "1"], warps, 1))
        p, c, bt, warps = _select(b)
        plan.append(("block_select_fwd", p, c, [f"cdiv(nQB,{bt})", "B*Hkv", "1"], warps, 1))
    if b.select_only:
        return plan
    p, c, heads, cfg = _attention(b)
    plan.append(("block_sparse_attn_fwd", p, c, ["nQB", f"B*Hq/{heads}", "1"], cfg.num_warps, cfg.num_stages))
    return plan


def parameter_order(b: BlockSparseBuild) -> dict[str, list[KernelParam]]:
    """Runtime parameters of each kernel of a build, in launch order, without compiling anything."""
    return {name: params for name, params, *_ in _plan(b)}


def _tensors(b: BlockSparseBuild) -> dict[str, str]:
    tensors = {"Q": "[B,Hq,Lq,D]", "K": "[B,Hkv,Lkv,D]", "V": "[B,Hkv,Lkv,D]", "Out": "[B,Hq,Lq,D]"}
    if b.key_bias:
        tensors["KeyBias"] = "[B or 1,Lkv or 1] (additive key mask; strides KBS, KNS)"
    if b.layout == "window":
        return tensors
    if _needs_pool(b):
        tensors["KBarT"] = "[B,Hkv,D,nKB] fp32 workspace"
        if _rows(b):
            tensors["Probs"] = "[B,Hq,nQB,nKB] fp32 workspace"
        else:
            tensors["QBar"] = "[B,Hq,nQB,D] fp32 workspace"
    if b.rectify:
        tensors |= {"VBarT": "[B,Hkv,D,nKB] fp32 workspace", "RectMass": "[B,Hq,nQB] fp32 workspace",
                    "RectRest": "[B,Hq,nQB,D] fp32 workspace"}  # fmt: skip
    if b.layout == "mask":
        tensors["MaskIn"] = "[B,Hkv,nQB,nKB] uint8 (block_mask, expanded)"
    if b.dense_heads:
        tensors["DenseHeads"] = "[Hkv] int32, 1 = key/value head outside `heads`"
    tensors |= {"BlockIdx": "[B,Hkv,nQB,nKB] int32 workspace", "BlockCount": "[B,Hkv,nQB] int32 workspace"}
    if b.select_only:
        tensors["BlockMask"] = "[B,Hkv,nQB,nKB] bool (the output)"
        del tensors["Out"]
    return tensors


def build(b: BlockSparseBuild, arch: int, *, ptx_version: int | None = None) -> dict[str, Any]:
    """Compile one variant for ``sm_{arch}``; returns its launch signature with the PTX texts."""
    from . import attention, selection

    fns = {"block_pool_fwd": selection.block_pool_fwd, "block_row_probs_fwd": selection.block_row_probs_fwd,
           "block_select_fwd": selection.block_select_fwd,
           "block_sparse_attn_fwd": attention.block_sparse_attn_fwd}  # fmt: skip
    kernels = []
    for name, params, consts, grid, warps, stages in _plan(b):
        k = compile_fitting(fns[name], params, consts, arch, warps, stages, ptx_version)
        kernels.append(k.launch_signature(grid) | {"ptx": k.ptx})
    requires = ["tensors contiguous [B, H, L, D]; pointers 16-byte aligned (compiled with divisibility hints)",
                "every tensor below 2**31 elements (int32 offsets inside a head)"]  # fmt: skip
    if b.layout != "window":
        n_kv_blocks = -(-b.max_kv_len // b.block_size)
        requires.append(f"Lkv <= {b.max_kv_len} (nKB <= {next_power_of_two(n_kv_blocks)} for the selection tile)")
    return {"op": OP_NAME, "variant": b.name, "attributes": asdict(b), "tensors": _tensors(b), "requires": requires,
            "kernels": kernels}  # fmt: skip


def write(b: BlockSparseBuild, arch: int, out_dir: Path, *, ptx_version: int | None = None) -> Path:
    """Build and write ``<variant>.sm<arch>.json`` plus one ``.ptx`` per kernel; returns the JSON path."""
    return write_build(build(b, arch, ptx_version=ptx_version), b.name, arch, out_dir)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edgeattn.kernels.block_sparse.aot",
                                     description=__doc__.split("\n")[0])  # fmt: skip
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--arch", type=int, nargs="+", default=list(DEFAULT_ARCHS), choices=sorted(TARGETS))
    parser.add_argument("--head-dim", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--dtype", nargs="+", default=["fp16"], choices=["fp16", "bf16"])
    parser.add_argument("--layout", nargs="+", default=["select", "window"], choices=["select", "mask", "window"])
    parser.add_argument("--mode", default="topk", choices=sorted(_MODES))
    parser.add_argument("--causal", type=int, default=2, choices=[0, 1, 2])
    parser.add_argument("--block-size", type=int, default=64)
    parser.add_argument("--kv-group", type=int, default=4)
    parser.add_argument("--max-kv-len", type=int, default=32768)
    parser.add_argument("--rectify", action="store_true")
    parser.add_argument("--ptx-version", type=int, default=None, help="cap the PTX ISA, e.g. 85 for CUDA 12.6 drivers")
    args = parser.parse_args(argv)
    base = BlockSparseBuild(mode=args.mode, causal=args.causal, block_size=args.block_size, kv_group=args.kv_group,
                            max_kv_len=args.max_kv_len, rectify=args.rectify)  # fmt: skip
    builds = [
        (arch, replace(base, head_dim=d, dtype=dtype, layout=layout, rectify=args.rectify and layout != "window"))
        for arch in args.arch for layout in args.layout for d in args.head_dim for dtype in args.dtype
    ]
    return build_all(builds, write, args.out, args.ptx_version)


if __name__ == "__main__":
    sys.exit(main())
