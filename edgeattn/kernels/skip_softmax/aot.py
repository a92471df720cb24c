"""Ahead-of-time builds of the skip-softmax kernels for TensorRT (sm_87, sm_89, sm_90).

A TensorRT AOT plugin launches PTX with ``(input pointers..., int32 scalars..., output pointers...)``
and cannot pass floats, so each build compiles the op's float attributes (softmax scale,
``scale_factor``) and its static choices (head size, dtype, causal, tile sizes, counting) into the
kernel, and records the launch in a *launch signature*: the PTX entry name, block size, shared
memory, grid and every runtime parameter in order, with the formula that computes it from the
op's shapes (``B, Hq, Hkv, Lq, Lkv, D``; tensors contiguous ``[B, H, L, D]``).

Prefill is one kernel (``skip_softmax_attn_fwd`` with one split). Decode is two: the split kernel
writes fp32 partials, log-sum-exps (and counts) that the adapter declares as extra plugin outputs
or workspace, and ``skip_softmax_merge_splits`` combines them. ``NUM_SPLITS`` is a build attribute;
the per-split tile count is computed at run time, matching ``num_splits`` in the reference.

Run ``python -m edgeattn.kernels.skip_softmax.aot --out DIR`` in a process where
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

from ..triton_aot import DEFAULT_ARCHS, TARGETS, AotBuildError, KernelParam, build_all, compile_aot, write_build, compile_fitting
from .config import default_config

__all__ = ["SkipSoftmaxBuild", "build", "main", "parameter_order", "write"]

OP_NAME = "edgeattn.SkipSoftmaxAttention"
_ONE_SPLIT = 1 << 30  # prefill: one split holds every key tile


@dataclass(frozen=True)
class SkipSoftmaxBuild:
    """The compile-time attributes of one AOT variant."""

    head_dim: int = 128
    dtype: Literal["fp16", "bf16"] = "fp16"
    mode: Literal["prefill", "decode"] = "prefill"
    causal: bool = True
    scale_factor: float = 0.0
    sm_scale: float | None = None
    block_m: int = 128
    block_n: int = 64
    num_splits: int = 16
    """Decode only: KV splits (grid z), a build attribute."""
    decode_block_m: int = 16
    """Decode only: rows per query tile (<= block_m; one tile must hold every query row)."""
    count_skips: bool = False
    key_bias: bool = False
    """Whether a ``KeyBias`` input ``[B or 1, Lkv]`` (an additive key mask, Q's type) is added to the scores."""

    @property
    def name(self) -> str:
        sf = "dense" if self.scale_factor == 0 else f"sf{self.scale_factor:g}"
        parts = [self.mode, f"d{self.head_dim}", self.dtype, "causal" if self.causal else "full", sf,
                 f"m{self.block_m}n{self.block_n}"]  # fmt: skip
        if self.mode == "decode":
            parts.append(f"s{self.num_splits}")
        if self.count_skips:
            parts.append("count")
        if self.key_bias:
            parts.append("kbias")
        return "_".join(parts)


def _fwd_params(b: SkipSoftmaxBuild) -> list[KernelParam]:
    dt = f"*{b.dtype}"
    out_type = dt if b.mode == "prefill" else "*fp32"
    s = "S" if b.mode == "decode" else "1"
    scalars = [
        ("stride_qb", "Hq*Lq*D"), ("stride_qh", "Lq*D"), ("stride_qm", "D"),
        ("stride_kb", "Hkv*Lkv*D"), ("stride_kh", "Lkv*D"), ("stride_kn", "D"),
        ("stride_vb", "Hkv*Lkv*D"), ("stride_vh", "Lkv*D"), ("stride_vn", "D"),
    ]  # fmt: skip
    tail = [("stride_ob", f"Hq*{s}*Lq*D"), ("stride_oh", f"{s}*Lq*D")]
    if b.mode == "decode":
        tail.append(("stride_os", "Lq*D"))
    tail.append(("stride_om", "D"))
    params = [KernelParam(n, dt, "input", True) for n in ("Q", "K", "V")]
    if b.key_bias:
        params.append(KernelParam("KeyBias", dt, "input", True))
    params += [KernelParam(n, "i32", "scalar", True, f) for n, f in scalars]
    if b.key_bias:  # the key mask's strides (0 where it broadcasts)
        params += [KernelParam("stride_biasb", "i32", "scalar", False, "KBS"),
                   KernelParam("stride_biasn", "i32", "scalar", False, "KNS")]
    params += [KernelParam(n, "i32", "scalar", True, f) for n, f in tail]
    params += [
        KernelParam("num_q_heads", "i32", "scalar", False, "Hq"),
        KernelParam("kv_group", "i32", "scalar", False, "Hq/Hkv"),
        KernelParam("q_len", "i32", "scalar", False, "Lq"),
        KernelParam("kv_len", "i32", "scalar", False, "Lkv"),
    ]
    if b.mode == "decode":
        params.append(KernelParam("tiles_per_split", "i32", "scalar", False, f"cdiv(cdiv(Lkv,{b.block_n}),S)"))
    params.append(KernelParam("Out", out_type, "output", True))
    if b.mode == "decode":
        params.append(KernelParam("Lse", "*fp32", "output", True))
    if b.count_skips:
        params.append(KernelParam("Counts", "*i32", "output", True))
    return params


def _fwd_constexprs(b: SkipSoftmaxBuild) -> dict[str, Any]:
    use_skip = b.scale_factor > 0
    consts: dict[str, Any] = {
        "sm_scale": b.sm_scale if b.sm_scale is not None else 1.0 / math.sqrt(b.head_dim),
        "log2_scale_factor": math.log2(b.scale_factor) if use_skip else 0.0,
        "HEAD_DIM": b.head_dim,
        "BLOCK_M": b.decode_block_m if b.mode == "decode" else b.block_m,
        "BLOCK_N": b.block_n,
        "CAUSAL": b.causal,
        "USE_SKIP": use_skip,
        "V_LOAD": 1,  # V read only for processed tiles (config.default_config: measured fastest)
        "STORE_LSE": b.mode == "decode",
        "COUNT_SKIPS": b.count_skips,
        "UPCAST_DOT": False,
        "KEY_BIAS": b.key_bias,
    }
    if not b.key_bias:
        consts.update(KeyBias=None, stride_biasb=0, stride_biasn=0)
    if b.mode == "prefill":
        consts.update(stride_os=0, tiles_per_split=_ONE_SPLIT, Lse=None)
    if not b.count_skips:
        consts["Counts"] = None
    return consts


def _merge_params(b: SkipSoftmaxBuild) -> list[KernelParam]:
    return [
        KernelParam("Partial", "*fp32", "input", True),
        KernelParam("PartialLse", "*fp32", "input", True),
        KernelParam("num_q_heads", "i32", "scalar", False, "Hq"),
        KernelParam("q_len", "i32", "scalar", False, "Lq"),
        KernelParam("num_splits", "i32", "scalar", False, "S"),
        KernelParam("stride_ob", "i32", "scalar", True, "Hq*Lq*D"),
        KernelParam("stride_oh", "i32", "scalar", True, "Lq*D"),
        KernelParam("stride_om", "i32", "scalar", True, "D"),
        KernelParam("Out", f"*{b.dtype}", "output", True),
    ]


def parameter_order(b: SkipSoftmaxBuild) -> dict[str, list[KernelParam]]:
    """Runtime parameters of each kernel of a build, in launch order, without compiling anything."""
    order = {"skip_softmax_attn_fwd": _fwd_params(b)}
    if b.mode == "decode":
        order["skip_softmax_merge_splits"] = _merge_params(b)
    return order


def build(b: SkipSoftmaxBuild, arch: int, *, ptx_version: int | None = None) -> dict[str, Any]:
    """Compile one variant for ``sm_{arch}``; returns its launch signature with the PTX texts."""
    from . import kernel

    if b.mode == "decode" and b.decode_block_m > b.block_m:
        raise AotBuildError(f"decode_block_m ({b.decode_block_m}) must be <= block_m ({b.block_m})")
    bm = b.decode_block_m if b.mode == "decode" else b.block_m
    cfg = default_config(b.head_dim, bm, b.block_n, decode=b.mode == "decode", arch=arch)
    fwd = compile_fitting(kernel.skip_softmax_attn_fwd, _fwd_params(b), _fwd_constexprs(b), arch,
                           cfg.num_warps, cfg.num_stages, ptx_version)  # fmt: skip
    kernels = [(fwd, [f"cdiv(Lq,{bm})", "B*Hq", "S" if b.mode == "decode" else "1"])]
    if b.mode == "decode":
        merge_consts = {"HEAD_DIM": b.head_dim, "BLOCK_R": 1, "BLOCK_S": min(8, 1 << (b.num_splits - 1).bit_length())}
        merge = compile_aot(kernel.skip_softmax_merge_splits, params=_merge_params(b), constexprs=merge_consts,
                            arch=arch, num_warps=4, num_stages=1, ptx_version=ptx_version)  # fmt: skip
        kernels.append((merge, ["Lq", "B*Hq", "1"]))
    n_q_tiles = f"cdiv(Lq,{bm})"
    s = "S" if b.mode == "decode" else "1"
    tensors = {"Q": "[B,Hq,Lq,D]", "K": "[B,Hkv,Lkv,D]", "V": "[B,Hkv,Lkv,D]", "Out": "[B,Hq,Lq,D]"}
    if b.key_bias:
        tensors["KeyBias"] = "[B or 1,Lkv or 1] (additive key mask; strides KBS, KNS)"
    requires = [
        "tensors contiguous [B, H, L, D]; pointers 16-byte aligned (compiled with divisibility hints)",
        "every tensor below 2**31 elements (int32 strides)",
    ]
    if b.mode == "decode":
        tensors |= {"Partial": "[B,Hq,S,Lq,D] fp32", "Lse": "[B*Hq,S,Lq] fp32"}
        requires.append(f"Lq <= {b.decode_block_m} (one query tile; then the skips are those of block_m)")
    if b.count_skips:
        tensors["Counts"] = f"[B*Hq,{s},{n_q_tiles},2] int32 (tiles skipped, tiles visited)"
    return {
        "op": OP_NAME,
        "variant": b.name,
        "attributes": asdict(b),
        "symbols": {"S": b.num_splits if b.mode == "decode" else 1},
        "tensors": tensors,
        "requires": requires,
        "kernels": [k.launch_signature(grid) | {"ptx": k.ptx} for k, grid in kernels],
    }


def _params(dtype: str, inputs: Sequence[str], scalars: Sequence[tuple[str, str, bool]],
            outputs: Sequence[tuple[str, str]]) -> list[KernelParam]:
    return ([KernelParam(n, f"*{dtype}" if n in "QKV" else "*i32", "input", True) for n in inputs]
            + [KernelParam(n, "i32", "scalar", div, f) for n, f, div in scalars]
            + [KernelParam(n, t, "output", True) for n, t in outputs])  # fmt: skip


_Q_STRIDES = [("stride_qb", "Hq*Lq*D", True), ("stride_qh", "Lq*D", True), ("stride_qm", "D", True)]
_KV_STRIDES = [(f"stride_{t}{s}", f, True) for t in "kv" for s, f in (("b", "Hkv*Lkv*D"), ("h", "Lkv*D"), ("n", "D"))]
_SHAPE = [("num_q_heads", "Hq", False), ("kv_group", "Hq/Hkv", False), ("q_len", "Lq", False),
          ("kv_len", "Lkv", False)]  # fmt: skip


def candidate_kernels(b: SkipSoftmaxBuild, arch: int, *, ptx_version: int | None = None) -> dict[str, Any]:
    """Compile the kernels of the two other designs measured against the fused one (issue 17):
    the two-pass prefill (``two_pass.py``: votes, then attention over the kept tiles) and the
    grouped decode (``decode.py``), for ``b``'s head size, dtype, causality, tiles and scale factor
    (no key mask, no counts). Not yet launched by the TensorRT plugins: the GPU benchmark decides."""
    from . import decode, two_pass

    sm_scale = b.sm_scale if b.sm_scale is not None else 1.0 / math.sqrt(b.head_dim)
    log2_sf = math.log2(b.scale_factor) if b.scale_factor > 0 else 0.0
    common = {"KeyBias": None, "stride_biasb": 0, "stride_biasn": 0, "HEAD_DIM": b.head_dim, "BLOCK_N": b.block_n,
              "UPCAST_DOT": False, "KEY_BIAS": False}  # fmt: skip
    prefill = common | {"BLOCK_M": b.block_m, "CAUSAL": b.causal, "sm_scale": sm_scale}
    n_kv = ("n_kv_tiles", f"cdiv(Lkv,{b.block_n})", False)
    cfg = default_config(b.head_dim, b.block_m, b.block_n, decode=False, arch=arch)
    votes = compile_fitting(
        two_pass.skip_softmax_tile_votes,
        _params(b.dtype, "QK", [*_Q_STRIDES, *_KV_STRIDES[:3], *_SHAPE, n_kv], [("TileList", "*i32"), ("TileCount", "*i32")]),
        prefill | {"log2_scale_factor": log2_sf}, arch, cfg.num_warps, cfg.num_stages, ptx_version)  # fmt: skip
    out_strides = [("stride_ob", "Hq*Lq*D", True), ("stride_oh", "Lq*D", True), ("stride_om", "D", True)]
    listed = compile_fitting(
        two_pass.skip_softmax_attend_listed,
        _params(b.dtype, ["Q", "K", "V", "TileList", "TileCount"], [*_Q_STRIDES, *_KV_STRIDES, *out_strides, *_SHAPE, n_kv],
                [("Out", f"*{b.dtype}")]),
        prefill, arch, cfg.num_warps, cfg.num_stages, ptx_version)  # fmt: skip
    dcfg = default_config(b.head_dim, 16, b.block_n, decode=True, arch=arch)
    grouped = compile_fitting(
        decode.skip_softmax_decode_grouped,
        _params(b.dtype, "QKV", [("stride_qb", "Hq*D", True), ("stride_qh", "D", True), *_KV_STRIDES,
                                 ("stride_ob", "Hq*S*D", True), ("stride_oh", "S*D", True), ("stride_os", "D", True),
                                 ("num_kv_heads", "Hkv", False), ("kv_group", "Hq/Hkv", False), ("kv_len", "Lkv", False),
                                 ("tiles_per_split", f"cdiv(cdiv(Lkv,{b.block_n}),S)", False)],
                [("Out", "*fp32"), ("Lse", "*fp32")]),
        common | {"sm_scale": sm_scale, "log2_scale_factor": log2_sf, "GROUP_ROWS": 16, "USE_SKIP": b.scale_factor > 0,
                  "STORE_LSE": True, "COUNT_SKIPS": False, "Counts": None},
        arch, dcfg.num_warps, dcfg.num_stages, ptx_version)  # fmt: skip
    return {"two_pass_votes": votes, "two_pass_attend": listed, "decode_grouped": grouped}


def write(b: SkipSoftmaxBuild, arch: int, out_dir: Path, *, ptx_version: int | None = None) -> Path:
    """Build and write ``<variant>.sm<arch>.json`` plus one ``.ptx`` per kernel; returns the JSON path."""
    return write_build(build(b, arch, ptx_version=ptx_version), b.name, arch, out_dir)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edgeattn.kernels.skip_softmax.aot", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--arch", type=int, nargs="+", default=list(DEFAULT_ARCHS), choices=sorted(TARGETS))
    parser.add_argument("--head-dim", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--dtype", nargs="+", default=["fp16"], choices=["fp16", "bf16"])
    parser.add_argument("--mode", nargs="+", default=["prefill", "decode"], choices=["prefill", "decode"])
    parser.add_argument("--scale-factor", type=float, nargs="+", default=[0.0, 10.0])
    parser.add_argument("--causal", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--block-m", type=int, default=128)
    parser.add_argument("--block-n", type=int, default=64)
    parser.add_argument("--num-splits", type=int, default=16)
    parser.add_argument("--count-skips", action="store_true")
    parser.add_argument("--ptx-version", type=int, default=None, help="cap the PTX ISA, e.g. 85 for CUDA 12.6 drivers")
    args = parser.parse_args(argv)
    base = SkipSoftmaxBuild(block_m=args.block_m, block_n=args.block_n, num_splits=args.num_splits,
                            causal=args.causal, count_skips=args.count_skips)  # fmt: skip
    builds = [
        (arch, replace(base, head_dim=d, dtype=dtype, mode=mode, scale_factor=sf))
        for arch in args.arch for mode in args.mode for d in args.head_dim for dtype in args.dtype
        for sf in args.scale_factor
    ]
    return build_all(builds, write, args.out, args.ptx_version)


if __name__ == "__main__":
    sys.exit(main())
