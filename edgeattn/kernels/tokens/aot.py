"""Ahead-of-time builds of the token-pruning kernels for TensorRT (sm_87, sm_89, sm_90).

As for the attention kernels (``plugins/skip_softmax/aot.py``): launches take ``(input pointers...,
int32 scalars..., output pointers...)``; float attributes (softmax scale, HoloV's alpha and
attention_scale) and static choices (source, head size, dtype, head reduction, the longest token
axis) are compiled in; each record lists every launch with its runtime parameters in order and the
formula of each from the shapes and attributes.

TokenScore (``op`` edgeattn.TokenScore): from Q/K ``[B, H, S, d]`` (GQA: ``Hkv`` key heads):
``token_row_stats_fwd`` -> ``token_score_fwd``; from probabilities ``[B, H, S, S]``:
``token_score_fwd`` alone. ``N = S - skip``.

TokenSelect (``op`` edgeattn.TokenSelect), candidates ``N`` (``features [B, P + N, Dm]``), ``k``:
topk: ``token_topk_fwd`` -> ``token_gather_fwd``; regions: ``token_chunk_variance_fwd`` ->
``token_regions_fwd`` -> ``token_gather_fwd``. ``R = min(regions, N)``, ``Po = prefix`` if
keep_prefix else 0.

Run ``python -m edgeattn.kernels.tokens.aot --out DIR`` without ``TRITON_INTERPRET``.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from ..triton_aot import DEFAULT_ARCHS, TARGETS, KernelParam, build_all, compile_aot, write_build

__all__ = ["TokenScoreBuild", "TokenSelectBuild", "build", "main", "parameter_order", "write"]


def _p2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def _i32(name: str, value: str, div: bool = False) -> KernelParam:
    return KernelParam(name, "i32", "scalar", div, value)


def _ptr(name: str, type_: str, role: str) -> KernelParam:
    return KernelParam(name, type_, role, True)  # type: ignore[arg-type]


@dataclass(frozen=True)
class TokenScoreBuild:
    source: Literal["cls", "mean_received"] = "cls"
    from_probs: bool = False
    head_dim: int = 64
    dtype: Literal["fp16", "bf16", "fp32"] = "fp16"
    head_reduce: Literal["mean", "max"] = "mean"
    weights: bool = False
    valid: bool = False
    sm_scale: float | None = None

    op = "edgeattn.TokenScore"

    @property
    def name(self) -> str:
        parts = ["score", self.source, "probs" if self.from_probs else f"qk_d{self.head_dim}", self.dtype,
                 f"h{self.head_reduce}"]  # fmt: skip
        parts += ["w"] if self.weights else []
        parts += ["valid"] if self.valid else []
        return "_".join(parts)


@dataclass(frozen=True)
class TokenSelectBuild:
    mode: Literal["topk", "regions"] = "topk"
    max_tokens: int = 2304
    """Longest candidate axis the engine serves (sets the sort width)."""
    dtype: Literal["fp16", "bf16", "fp32"] = "fp16"
    """Of the features (and the similarity keys, which are the candidate features)."""
    regions: int = 16
    alpha: float = 0.09
    attention_scale: float = 1000.0

    op = "edgeattn.TokenSelect"

    @property
    def name(self) -> str:
        extra = [f"r{self.regions}"] if self.mode == "regions" else []
        return "_".join(["select", self.mode, f"n{self.max_tokens}", self.dtype, *extra])


Build = TokenScoreBuild | TokenSelectBuild


def _score_plan(b: TokenScoreBuild) -> list[tuple[str, list[KernelParam], dict[str, Any], list[str], int]]:
    rows = "1" if b.source == "cls" else "S"
    row0 = "query" if b.source == "cls" else "0"
    block_m = 16 if b.source == "cls" else 64
    scale = b.sm_scale if b.sm_scale else 1.0 / math.sqrt(b.head_dim)
    dt = f"*{b.dtype}"
    plan = []
    qk_strides = [_i32("stride_qb", "H*S*d", True), _i32("stride_qh", "S*d", True), _i32("stride_qm", "d", True),
                  _i32("stride_kb", "Hkv*S*d", True), _i32("stride_kh", "S*d", True),
                  _i32("stride_kn", "d", True)]  # fmt: skip
    if not b.from_probs:
        params = [_ptr("Q", dt, "input"), _ptr("K", dt, "input"), *qk_strides,
                  _i32("num_heads", "H"), _i32("kv_group", "H/Hkv"), _i32("seq_len", "S"), _i32("row0", row0),
                  _i32("n_rows", rows), _ptr("Stats", "*fp32", "output")]  # fmt: skip
        consts = {"sm_scale": scale, "HEAD_DIM": b.head_dim, "BLOCK_M": block_m, "BLOCK_N": 64,
                  "UPCAST_DOT": b.dtype == "fp32"}  # fmt: skip
        plan.append(("token_row_stats_fwd", params, consts, [f"cdiv({rows},{block_m})", "B*H", "1"], 4))
    params, consts = [], {"sm_scale": scale}
    if b.from_probs:
        consts |= {"Q": None, "K": None, "Stats": None, **{p.name: 0 for p in qk_strides}}
        params.append(_ptr("X", dt, "input"))
    else:
        params += [_ptr("Q", dt, "input"), _ptr("K", dt, "input"), _ptr("Stats", "*fp32", "input")]
        consts["X"] = None
    for name, on in (("Weights", b.weights), ("Valid", b.valid)):
        if on:
            params.append(_ptr(name, "*fp32", "input"))
        else:
            consts[name] = None
    if b.from_probs:
        params += [_i32("stride_xb", "H*S*S"), _i32("stride_xh", "S*S"), _i32("stride_xm", "S")]
    else:
        params += qk_strides
        consts |= {"stride_xb": 0, "stride_xh": 0, "stride_xm": 0}
    params += [_i32("num_heads", "H"), _i32("kv_group", "1" if b.from_probs else "H/Hkv"), _i32("seq_len", "S"),
               _i32("row0", row0), _i32("n_rows", rows), _i32("skip", "skip"), _i32("n_tokens", "N"),
               _ptr("Scores", "*fp32", "output")]  # fmt: skip
    consts |= {"HEAD_DIM": 16 if b.from_probs else b.head_dim, "BLOCK_M": block_m, "BLOCK_N": 64,
               "FROM_PROBS": b.from_probs, "HEAD_REDUCE": 0 if b.head_reduce == "mean" else 1,
               "USE_WEIGHTS": b.weights, "USE_VALID": b.valid, "UPCAST_DOT": b.dtype == "fp32"}  # fmt: skip
    plan.append(("token_score_fwd", params, consts, ["cdiv(N,64)", "B", "1"], 8 if b.from_probs else 4))
    return plan


def _select_plan(b: TokenSelectBuild) -> list[tuple[str, list[KernelParam], dict[str, Any], list[str], int]]:
    n_p2 = max(16, _p2(b.max_tokens))
    warps = min(16, max(4, n_p2 // 512))
    plan = []
    if b.mode == "topk":
        params = [_ptr("Scores", "*fp32", "input"), _i32("n_tokens", "N"), _i32("k", "k"),
                  _ptr("Indices", "*i64", "output")]
        plan.append(("token_topk_fwd", params, {"N_P2": n_p2}, ["B", "1", "1"], warps))
    else:
        chunk_p2 = max(16, _p2(-(-b.max_tokens // b.regions)))
        block_r = min(64, chunk_p2)
        plan.append(("token_chunk_variance_fwd",
                     [_ptr("Z", f"*{b.dtype}", "input"), _ptr("Scores", "*fp32", "input"),
                      _i32("stride_zb", "(P+N)*Dm", True), _i32("stride_zn", "Dm", True),
                      _i32("n_tokens", "N"), _i32("parts", "R"), _i32("dim", "Dm"),
                      _ptr("Var", "*fp32", "output"), _ptr("Rank", "*i32", "output")],
                     {"CHUNK_P2": chunk_p2, "BLOCK_R": block_r, "BLOCK_C": 32 if chunk_p2 >= 256 else 64,
                      "UPCAST_DOT": b.dtype == "fp32"}, ["R", "B", "1"],
                     8 if block_r * chunk_p2 >= 8192 else 4))  # fmt: skip
        plan.append(("token_regions_fwd",
                     [_ptr("Scores", "*fp32", "input"), _ptr("Var", "*fp32", "input"), _ptr("Rank", "*i32", "input"),
                      _i32("n_tokens", "N"), _i32("parts", "R"), _i32("k", "k"), _ptr("Indices", "*i64", "output")],
                     {"alpha": float(b.alpha), "attention_scale": float(b.attention_scale), "N_P2": n_p2,
                      "PARTS_P2": max(2, _p2(b.regions))}, ["B", "1", "1"], warps))  # fmt: skip
    dt = f"*{b.dtype}"
    plan.append(("token_gather_fwd",
                 [_ptr("Features", dt, "input"), _ptr("Indices", "*i64", "input"), _i32("stride_fb", "(P+N)*Dm", True),
                  _i32("stride_fn", "Dm", True), _i32("stride_ob", "(Po+k)*Dm", True), _i32("stride_on", "Dm", True),
                  _i32("prefix", "P"), _i32("k", "k"), _i32("out_prefix", "Po"), _i32("dim", "Dm"),
                  _ptr("Out", dt, "output")],
                 {"BLOCK_R": 16, "BLOCK_D": 256}, ["cdiv(Po+k,16)", "cdiv(Dm,256)", "B"], 8))  # fmt: skip
    return plan


def _plan(b: Build) -> list[tuple[str, list[KernelParam], dict[str, Any], list[str], int]]:
    return _score_plan(b) if isinstance(b, TokenScoreBuild) else _select_plan(b)


def parameter_order(b: Build) -> dict[str, list[KernelParam]]:
    """Runtime parameters of each kernel of a build, in launch order, without compiling anything."""
    return {name: params for name, params, *_ in _plan(b)}


def build(b: Build, arch: int, *, ptx_version: int | None = None) -> dict[str, Any]:
    """Compile one variant for ``sm_{arch}``; returns its launch signature with the PTX texts."""
    from . import scoring, selection

    kernels = []
    for name, params, consts, grid, warps in _plan(b):
        fn = getattr(scoring if name.startswith("token_row") or name == "token_score_fwd" else selection, name)
        k = compile_aot(fn, params=params, constexprs=consts, arch=arch, num_warps=warps, num_stages=2,
                        ptx_version=ptx_version)  # fmt: skip
        kernels.append(k.launch_signature(grid) | {"ptx": k.ptx})
    return {"op": b.op, "variant": b.name, "attributes": asdict(b), "kernels": kernels, "tensors": _workspace(b),
            "requires": ["tensors contiguous; pointers 16-byte aligned (compiled with divisibility hints)"]}  # fmt: skip


def _workspace(b: Build) -> dict[str, str]:
    """The intermediate tensors a launcher provides (a TensorRT plugin: from its workspace)."""
    if isinstance(b, TokenScoreBuild):
        rows = "1" if b.source == "cls" else "S"
        return {} if b.from_probs else {"Stats": f"[B*H,{rows},2] fp32 workspace"}
    return {"Var": "[B,N] fp32 workspace", "Rank": "[B,N] int32 workspace"} if b.mode == "regions" else {}


def write(b: Build, arch: int, out_dir: Path, *, ptx_version: int | None = None) -> Path:
    """Build and write ``<variant>.sm<arch>.json`` plus one ``.ptx`` per kernel; returns the JSON path."""
    return write_build(build(b, arch, ptx_version=ptx_version), b.name, arch, out_dir)


def default_builds(max_tokens: int = 2304) -> list[Build]:
    """The variants CI builds: FasterVLM-style cls scores from Q/K (CLIP ViT-L: d=64), mean-received
    from probabilities, top-k and HoloV regions selection."""
    return [TokenScoreBuild(source="cls", head_dim=64), TokenScoreBuild(source="mean_received", from_probs=True),
            TokenSelectBuild(mode="topk", max_tokens=max_tokens),
            TokenSelectBuild(mode="regions", max_tokens=max_tokens)]  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edgeattn.kernels.tokens.aot",
                                     description=__doc__.split("\n")[0])  # fmt: skip
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--arch", type=int, nargs="+", default=list(DEFAULT_ARCHS), choices=sorted(TARGETS))
    parser.add_argument("--max-tokens", type=int, default=2304)
    parser.add_argument("--ptx-version", type=int, default=None)
    args = parser.parse_args(argv)
    builds = [(arch, b) for arch in args.arch for b in default_builds(args.max_tokens)]
    return build_all(builds, write, args.out, args.ptx_version)


if __name__ == "__main__":
    sys.exit(main())
