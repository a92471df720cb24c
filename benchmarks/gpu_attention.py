#!/usr/bin/env python3
"""GPU check and benchmark of the Triton attention kernels: skip-softmax (BLASST, issue #6),
block-sparse attention with block selection, and visual-token pruning (issue #7).

Needs a CUDA GPU, torch and triton, nothing else: it imports the kernel modules of this checkout
(``edgeattn/kernels/skip_softmax/{kernel,ops,reference,config}.py``,
``edgeattn/kernels/{block_sparse,tokens}/`` and ``edgeattn/kernels/triton_aot.py``, which use
only torch, triton and the standard library; the block-sparse and token sections also compare
with the registry references of their ops, which need nothing more where onnx is installed).
Run from anywhere::

    python benchmarks/gpu_attention.py                 # full run, about 4-5 minutes on an H200
    python benchmarks/gpu_attention.py --quick         # L = 4k only
    OUT=/some/dir python benchmarks/gpu_attention.py   # JSON to $OUT/gpu_attention.json
    python benchmarks/gpu_attention.py --cpu-smoke     # every code path at toy sizes in the Triton
                                                       # interpreter (no GPU; timings meaningless;
                                                       # the skip-softmax sections unless --sections)

Issue 17's run (the kernel designs side by side; about 8 minutes on an H100/H200)::

    OUT=/some/dir python benchmarks/gpu_attention.py --sections correctness prefill decode --budget 480

Sections (each is wrapped: a failure is recorded in the JSON and the others still run; the JSON
is rewritten after every section, and a time budget skips what would not fit):

1. ``correctness``: fresh N(0, 1) inputs (prefill causal/full, chunked prefill against a KV cache,
   decode with split-K; MHA and GQA; head sizes 64 and 128; fp16 and bf16; odd lengths), output
   poisoned with NaN before the call; compared with SDPA in the same dtype and in fp32. Then skip
   mode against the float64 reference: thresholds are placed between the reference's tile
   margins, so the kernel must skip exactly the reference's tiles.
2. ``prefill``: causal, B=1, 32 query / 8 KV heads, L in {4k, 16k, 32k}, D in {64, 128}, fp16.
   SDPA (default dispatch and each backend that runs, K/V heads expanded), the kernel's dense mode
   (3-config warps/stages tune at 4k), and skip mode at scale factors calibrated here (ln lambda
   sweep + bisection on the kernel's own tile counts) to skip about 50 %, 75 % and 90 % of tiles;
   at 16k and ~75 % also the two other places to read V (``KernelConfig.v_load``). Each skip
   target runs twice: the fused kernel and the two-pass design (``KernelConfig.two_pass``: skip
   votes, then attention over the kept tiles); ``skip-none`` is skip mode with a threshold no tile
   reaches (the cost of the skip test itself). Head size 128 runs first.
3. ``decode``: one query row per sequence against a KV cache of 4k/16k/32k, B=8, same heads,
   split-K (``auto_num_splits``), per query head (the fused kernel) and grouped
   (``KernelConfig.grouped_decode``: one program per KV head reads each K/V tile once for its
   four query heads), dense and skipping.

The correctness section checks every skip design (fused, two-pass, grouped) against the float64
reference with exact tile counts. The JSON ``summary`` holds one entry per target of issue 17
(``prefill_skip~75%_d128_L16384_vs_dense`` ...: value, target, met, and the design that reached it).

4.-6. ``sparse_correctness``, ``block_sparse``, ``token_pruning``: see ``benchmarks/gpu_sparse.py``
   (selection and block-sparse attention against the references; block-sparse prefill at ~50/25/10 %
   density for L in {4k, 16k, 32k} against SDPA; token scores, top-k and HoloV for 576 and 2304
   visual tokens). The time budget keeps a reserve for each later section, so the skip-softmax
   sections cannot starve them.

Times are medians of CUDA-graph replays (``triton.testing.do_bench_cudagraph``: no host overhead,
which would otherwise dominate the short calls; warm L2), falling back to ``do_bench``.

Attention pattern of the prefill/decode rows (synthetic, made to reproduce what trained LLMs
show): RoPE'd queries and keys sharing a per-head content direction (RoPE's long-range decay gives
a recency/locality bias of ~5 nats at distance 0 falling to ~1 far away), four attention-sink keys
(+9 nats through 16 un-rotated channels) and 0.7-sigma noise per channel. A late query puts 30-50 %
of its mass on the sinks and 10-15 % on its last 256 keys; in a CPU prototype at 4k, D=128, about
50 % of tiles skip near ln(lambda) = -4, 75 % near -3 and 90 % near -2.

TFLOP/s counts the dense causal FLOPs (4 * Hq * D * L(L+1)/2), so skip rows show an effective rate.
Targets (H100/H200): dense >= 80 % of SDPA at L >= 4k; skip at ~75 % >= 1.5x dense (prefill);
block-sparse at 10 % density and L = 32k, selection included, >= 5x SDPA.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import sys
import time
import traceback
import types
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
TARGETS = (0.5, 0.75, 0.9)


@dataclass(frozen=True)
class Plan:
    """What to run: sizes and settings (the GPU defaults, or toy sizes for ``--cpu-smoke``)."""

    device: str = "cuda"
    lengths: tuple[int, ...] = (4096, 16384, 32768)
    head_dims: tuple[int, ...] = (128, 64)  # the targets are at d = 128: first, inside the budget
    prefill_heads: tuple[int, int] = (32, 8)
    decode_batch: int = 8
    block_m: int = 128
    block_n: int = 64
    grid_step: float = 0.5  # ln(lambda) sweep step for calibration
    bisect: int = 5
    tune: bool = True
    correctness_scale: float = 1.0  # multiplies correctness lengths (the CPU smoke shrinks them)
    max_heads: int = 64  # caps correctness heads and batch (the CPU smoke shrinks them)
    max_batch: int = 64
    timer: str = "cuda"  # "wall" for the CPU smoke
    sparse_lengths: tuple[int, ...] = (4096, 16384, 32768)  # block-sparse prefill (Hq/Hkv: prefill_heads)
    sparse_head_dim: int = 128
    sparse_block: int = 64
    token_counts: tuple[int, ...] = (576, 2304)  # visual tokens (+ [CLS])
    token_heads: int = 16
    token_head_dim: int = 64
    token_feature_dim: int = 4096


SKIP_SECTIONS = ("correctness", "prefill", "decode")
SPARSE_SECTIONS = ("sparse_correctness", "block_sparse", "token_pruning")
RESERVE_S = {"sparse_correctness": 30.0, "block_sparse": 75.0, "token_pruning": 20.0}
"""Seconds of the budget kept for each block-sparse/token section while earlier sections run."""


def cpu_smoke_plan() -> Plan:
    return Plan(device="cpu", lengths=(200,), head_dims=(64,), prefill_heads=(2, 1), decode_batch=1,
                block_m=32, block_n=32, grid_step=3.0, bisect=1, tune=False, correctness_scale=0.1,
                max_heads=2, max_batch=1, timer="wall", sparse_lengths=(64,), sparse_head_dim=32, sparse_block=16,
                token_counts=(40,), token_heads=2, token_head_dim=32, token_feature_dim=24)  # fmt: skip


def _stub_packages(names: tuple[str, ...]) -> None:
    """Make ``names`` empty packages over this checkout's folders, so their ``__init__`` is not run."""
    for name in names:
        stub = types.ModuleType(name)
        stub.__path__ = [str(ROOT / name.replace(".", "/"))]
        sys.modules[name] = stub


def load_kernel_modules() -> tuple[Any, Any, Any]:
    """Import ops/reference/config from this checkout without importing the rest of edgeattn."""
    sys.path.insert(0, str(ROOT))
    try:
        from edgeattn.kernels.skip_softmax import config, ops, reference
    except ImportError:  # a package __init__ needs something not installed here: bypass them
        for name in [n for n in sys.modules if n == "edgeattn" or n.startswith("edgeattn.")]:
            del sys.modules[name]
        _stub_packages(("edgeattn", "edgeattn.ops"))
        from edgeattn.kernels.skip_softmax import config, ops, reference
    return ops, reference, config


def _import_leaf(module: str) -> Any:
    """Import ``module``; if its package's ``__init__`` needs something missing, skip that ``__init__``."""
    import importlib

    try:
        return importlib.import_module(module)
    except Exception:  # noqa: BLE001 - e.g. the package __init__ wants onnx: import the module alone
        package = module.rsplit(".", 1)[0]
        sys.modules.pop(module, None)
        sys.modules.pop(package, None)
        _stub_packages((package,))
        return importlib.import_module(module)


def load_sparse_modules() -> types.SimpleNamespace:
    """The block-sparse and token kernel wrappers, and the registry references they are checked against."""
    load_kernel_modules()  # puts the checkout on sys.path (and stubs edgeattn's __init__ where needed)
    return types.SimpleNamespace(
        bs_ops=_import_leaf("edgeattn.kernels.block_sparse.ops"),
        tk_ops=_import_leaf("edgeattn.kernels.tokens.ops"),
        select_ref=_import_leaf("edgeattn.ops.block_select.reference"),
        sparse_ref=_import_leaf("edgeattn.ops.block_sparse_attention.reference"),
        score_ref=_import_leaf("edgeattn.ops.token_score.reference"),
        select_tok_ref=_import_leaf("edgeattn.ops.token_select.reference"),
    )


# ----------------------------------------------------------------------------------------- report


class Report:
    def __init__(self, path: Path, budget_s: float):
        self.path = path
        self.t0 = time.time()
        self.budget_s = budget_s
        self.reserved_s = 0.0  # kept for sections still to come
        self.printed: set[int] = set()
        self.data: dict[str, Any] = {
            "script": "benchmarks/gpu_attention.py",
            "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "budget_s": budget_s,
            "sections": {},
        }

    def left(self) -> float:
        return self.budget_s - self.reserved_s - (time.time() - self.t0)

    def save(self) -> None:
        self.data["elapsed_s"] = round(time.time() - self.t0, 1)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=str) + "\n")
        tmp.replace(self.path)

    def section(self, name: str, fn: Callable[[dict], None], need_s: float) -> None:
        entry: dict[str, Any] = {"status": "running", "results": []}
        self.data["sections"][name] = entry
        if self.left() < need_s:
            entry["status"] = f"skipped: {self.left():.0f} s of budget left, needs ~{need_s:.0f} s"
            print(f"== {name}: {entry['status']}", flush=True)
            self.save()
            return
        print(f"== {name}", flush=True)
        t = time.time()
        try:
            fn(entry)
            if entry["status"] == "running":
                entry["status"] = "ok"
        except Exception as exc:  # noqa: BLE001 - report it and go on with the next section
            entry["status"] = "error"
            entry["error"] = f"{type(exc).__name__}: {exc}"
            entry["traceback"] = traceback.format_exc()[-4000:]
            print(f"   ERROR {entry['error']}", flush=True)
        finally:
            entry["seconds"] = round(time.time() - t, 1)
            _synchronize(entry)
            self.save()

    def rows(self, entry: dict, prefix: str) -> None:
        """Print the rows of ``entry`` that start with ``prefix`` and were not printed yet."""
        for r in entry["results"]:
            if id(r) in self.printed or not str(r.get("case", "")).startswith(prefix):
                continue
            self.printed.add(id(r))
            print(format_row(r), flush=True)


def _synchronize(entry: dict) -> None:
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()
    except Exception as exc:  # noqa: BLE001
        entry["sync_error"] = str(exc)


def guarded(entry: dict, label: str, fn: Callable[[], dict]) -> dict | None:
    """Run one measurement; on failure record an error row instead of raising."""
    try:
        row = {"case": label, **fn()}
    except Exception as exc:  # noqa: BLE001
        row = {"case": label, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-2000:]}
        print(f"   {label}: ERROR {row['error']}", flush=True)
        entry["results"].append(row)
        return None
    entry["results"].append(row)
    return row


def format_row(r: dict) -> str:
    if "error" in r:
        return f"   {r['case']:<36} ERROR {r['error'][:90]}"
    if "ms" not in r:
        return f"   {r['case']:<36} {json.dumps({k: v for k, v in r.items() if k != 'case'}, default=str)[:120]}"
    rate = f"{r['tflops']:7.1f} TF/s" if "tflops" in r else (f"{r['gbps']:7.0f} GB/s" if "gbps" in r else " " * 12)
    skip = f"skip {r['skip_ratio']:6.1%}" if isinstance(r.get("skip_ratio"), float) else " " * 11
    sp = "".join(f"  {k[8:]}={r[k]:.2f}x" for k in ("speedup_vs_sdpa", "speedup_vs_dense") if isinstance(r.get(k), float))
    err = f"  err={r['rel_err_vs_dense']:.1e}" if isinstance(r.get("rel_err_vs_dense"), float) else ""
    return f"   {r['case']:<36} {r['ms']:9.3f} ms {rate}  {skip}{sp}{err}"


# ------------------------------------------------------------------------------------------ data


def llm_like_qkv(b, hq, hkv, lq, lkv, d, *, seed, dtype, device):
    """Synthetic LLM-like attention (module docstring); the queries sit at the last lq positions."""
    import torch

    g = torch.Generator(device=device).manual_seed(seed)
    sink_dims, rot = 16, d - 16
    peak, sink, noise, n_sink = 5.0, 9.0, 0.7, 4
    u = torch.randn(hkv, rot, generator=g, device=device)
    u = u / u.norm(dim=-1, keepdim=True)
    a = math.sqrt(peak * math.sqrt(d))
    q = noise * torch.randn(b, hq, lq, d, generator=g, device=device)
    k = noise * torch.randn(b, hkv, lkv, d, generator=g, device=device)
    q[..., :rot] += a * u.repeat_interleave(hq // hkv, 0)[None, :, None, :]
    k[..., :rot] += a * u[None, :, None, :]
    half = rot // 2
    inv = 10000.0 ** (-torch.arange(half, device=device) / half)

    def rope(x, positions):
        ang = positions[:, None].float() * inv[None, :]
        cos, sin = ang.cos(), ang.sin()
        x1, x2 = x[..., :half], x[..., half:rot]
        return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos, x[..., rot:]], -1)

    q = rope(q, torch.arange(lkv - lq, lkv, device=device))
    k = rope(k, torch.arange(lkv, device=device))
    w = torch.randn(sink_dims, generator=g, device=device)
    w = w / w.norm()
    s = math.sqrt(sink * math.sqrt(d))
    q[..., rot:] = s * w
    k[..., rot:] = noise * torch.randn(b, hkv, lkv, sink_dims, generator=g, device=device)
    k[:, :, :n_sink, rot:] = s * w
    v = torch.randn(b, hkv, lkv, d, generator=g, device=device)
    return q.to(dtype), k.to(dtype), v.to(dtype)


def sdpa(q, k, v, *, causal, backend=None):
    """torch SDPA with GQA heads expanded and the KV-cache (bottom-right aligned) causal mask."""
    import torch
    import torch.nn.functional as F

    group = q.shape[1] // k.shape[1]
    if group > 1:
        k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    lq, lkv = q.shape[2], k.shape[2]
    kwargs: dict[str, Any] = {}
    if causal and lq == lkv:
        kwargs["is_causal"] = True
    elif causal:
        i = torch.arange(lq, device=q.device)[:, None] + (lkv - lq)
        kwargs["attn_mask"] = torch.arange(lkv, device=q.device)[None, :] <= i
    if backend is None:
        return F.scaled_dot_product_attention(q, k, v, **kwargs)
    from torch.nn.attention import sdpa_kernel

    with sdpa_kernel([backend]):
        return F.scaled_dot_product_attention(q, k, v, **kwargs)


def errors(out, ref) -> dict:
    diff = out.float() - ref.float()
    return {"rel_fro": float(diff.norm() / ref.float().norm().clamp_min(1e-30)), "max_abs": float(diff.abs().max())}


def margin_cuts(margins, quantiles, min_gap=1e-3) -> list[float]:
    """ln(lambda) values between distinct tile margins (>= min_gap from each), near the quantiles."""
    import torch

    vals = torch.unique(margins[torch.isfinite(margins)]).double().cpu()
    vals = vals[vals < -2 * min_gap]
    gaps_ok = torch.nonzero((vals[1:] - vals[:-1]) > 2 * min_gap).flatten() if vals.numel() > 1 else vals[:0]
    cuts = []
    for qt in quantiles if gaps_ok.numel() else ():
        best = gaps_ok[torch.argmin((gaps_ok - int(qt * (vals.numel() - 1))).abs())]
        cuts.append(float((vals[best] + vals[best + 1]) / 2))
    return sorted(set(cuts))


GRAPH_FALLBACKS: list[str] = []


def bench_ms(plan: Plan, fn: Callable[[], Any], *, graph: bool = False) -> float:
    if plan.timer == "wall":  # CPU smoke: one timed call
        fn()
        t = time.perf_counter()
        fn()
        return (time.perf_counter() - t) * 1e3
    import triton.testing

    if graph:
        try:
            return float(triton.testing.do_bench_cudagraph(fn, rep=50, return_mode="median"))
        except Exception as exc:  # noqa: BLE001 - fall back to events around plain launches
            GRAPH_FALLBACKS.append(f"{type(exc).__name__}: {exc}"[:300])
            import torch

            torch.cuda.synchronize()
    return float(triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median"))


def calibrate(plan: Plan, skip_ratio_at: Callable[[float], float], kv_len: int) -> dict[float, tuple[float, float]]:
    """Scale factor per target skip ratio: a ln(lambda) sweep over [-12, 1], then bisection."""
    n = int(13 / plan.grid_step)
    grid = [-12 + i * plan.grid_step for i in range(n + 1)]
    seen = {ll: skip_ratio_at(kv_len * math.exp(ll)) for ll in grid}
    found = {}
    for t in TARGETS:
        lo = max([ll for ll, r in seen.items() if r <= t], default=grid[0])
        hi = min([ll for ll, r in seen.items() if r >= t and ll >= lo], default=grid[-1])
        for _ in range(plan.bisect):
            if hi - lo < 1e-3:
                break
            mid = (lo + hi) / 2
            seen[mid] = r = skip_ratio_at(kv_len * math.exp(mid))
            lo, hi = (mid, hi) if r < t else (lo, mid)
        best = min((abs(seen[x] - t), x) for x in (lo, hi))[1]
        found[t] = (kv_len * math.exp(best), seen[best])
    return found


# ------------------------------------------------------------------------------------- sections


def section_env(entry: dict, plan: Plan) -> None:
    import torch
    import triton

    info: dict[str, Any] = {"torch": torch.__version__, "triton": triton.__version__, "python": platform.python_version(),
                            "device": plan.device}  # fmt: skip
    if plan.device == "cuda":
        p = torch.cuda.get_device_properties(0)
        info |= {"gpu": p.name, "capability": f"{p.major}.{p.minor}", "sms": p.multi_processor_count,
                 "memory_gib": round(p.total_memory / 2**30, 1), "cuda": torch.version.cuda,
                 "sdpa_enabled": {"flash": torch.backends.cuda.flash_sdp_enabled(),
                                  "mem_efficient": torch.backends.cuda.mem_efficient_sdp_enabled(),
                                  "cudnn": getattr(torch.backends.cuda, "cudnn_sdp_enabled", lambda: None)()}}  # fmt: skip
    entry["results"].append(info)
    print("  ", info, flush=True)


def designs(q_len: int) -> tuple[str, ...]:
    """The skip-mode designs that run a call of ``q_len`` rows: the fused kernel, and the two-pass
    prefill (one split) or the grouped decode (one row)."""
    return ("fused", "grouped") if q_len == 1 else ("fused", "two-pass")


def design_config(ops, config, d: int, q_len: int, design: str, base=None):
    """The kernel settings of a design (``base``: tuned warps/stages, else the defaults)."""
    base = base or config.default_config(d, 128, 64, decode=q_len <= config.DECODE_MAX_QUERY_ROWS)
    return replace(base, two_pass=design == "two-pass", grouped_decode=design == "grouped")


def section_correctness(entry: dict, plan: Plan, ops, reference, config) -> None:
    import torch

    tol = {torch.float16: 2e-3, torch.bfloat16: 1.5e-2}
    sc = plan.correctness_scale

    def shrink(b, hq, hkv, lq, lkv):
        group = hq // hkv
        hkv = max(1, min(hkv, plan.max_heads // group))
        return min(b, plan.max_batch), hkv * min(group, plan.max_heads), hkv, lq if lq <= 16 else max(1, int(lq * sc)), max(1, int(lkv * sc))

    cases = [  # name, b, hq, hkv, lq, lkv, d, dtype, causal, num_splits
        ("prefill causal fp16 d64 GQA8/2 L1000", 2, 8, 2, 1000, 1000, 64, torch.float16, True, 1),
        ("prefill causal bf16 d128 GQA8/2 L777", 1, 8, 2, 777, 777, 128, torch.bfloat16, True, 1),
        ("prefill full fp16 d128 MHA Lq513 Lkv1031", 1, 4, 4, 513, 1031, 128, torch.float16, False, 1),
        ("chunked prefill fp16 d128 Lq300 Lkv1300", 1, 8, 2, 300, 1300, 128, torch.float16, True, 1),
        ("decode fp16 d128 GQA32/8 Lq1 Lkv4097 auto", 4, 32, 8, 1, 4097, 128, torch.float16, True, None),
        ("decode bf16 d64 GQA8/1 Lq4 Lkv2500 5split", 2, 8, 1, 4, 2500, 64, torch.bfloat16, True, 5),
    ]
    for i, (name, b, hq, hkv, lq, lkv, d, dtype, causal, splits) in enumerate(cases):
        b, hq, hkv, lq, lkv = shrink(b, hq, hkv, lq, lkv)

        def run(b=b, hq=hq, hkv=hkv, lq=lq, lkv=lkv, d=d, dtype=dtype, causal=causal, splits=splits, i=i) -> dict:
            g = torch.Generator(device=plan.device).manual_seed(100 + i)
            q, k, v = (torch.randn(b, h, n, d, generator=g, device=plan.device).to(dtype)
                       for h, n in ((hq, lq), (hkv, lkv), (hkv, lkv)))  # fmt: skip
            out = torch.full_like(q, float("nan"))
            ops.skip_softmax_attention(q, k, v, causal=causal, num_splits=splits, out=out, block_m=plan.block_m,
                                       block_n=plan.block_n)  # fmt: skip
            ref32, ref = sdpa(q.float(), k.float(), v.float(), causal=causal), sdpa(q, k, v, causal=causal)
            e32, e_sdpa, sdpa32 = errors(out, ref32), errors(out, ref), errors(ref, ref32)
            written = bool(torch.isfinite(out).all())
            ok = written and e32["rel_fro"] <= tol[dtype] and e_sdpa["rel_fro"] <= 2 * tol[dtype]
            return {"pass": ok, "all_written": written, "vs_fp32": e32, "vs_sdpa": e_sdpa, "sdpa_vs_fp32": sdpa32,
                    "tolerance_rel_fro": tol[dtype], "shape": [b, hq, hkv, lq, lkv, d]}  # fmt: skip

        row = guarded(entry, name, run)
        if row:
            print(f"   {'PASS' if row['pass'] else 'FAIL'} {name}: rel {row['vs_fp32']['rel_fro']:.2e} vs fp32 "
                  f"(SDPA itself {row['sdpa_vs_fp32']['rel_fro']:.2e}), {row['vs_sdpa']['rel_fro']:.2e} vs SDPA",
                  flush=True)  # fmt: skip

    skip_cases = [  # name, b, hq, hkv, lq, lkv, d, num_splits
        ("skip prefill causal fp16 d128 L2048", 1, 8, 2, 2048, 2048, 128, 1),
        ("skip prefill causal fp16 d64 L1500", 1, 4, 1, 1500, 1500, 64, 1),
        ("skip decode fp16 d128 Lq1 Lkv8192 8split", 2, 8, 2, 1, 8192, 128, 8),
    ]
    for i, (name, b, hq, hkv, lq, lkv, d, splits) in enumerate(skip_cases):
        b, hq, hkv, lq, lkv = shrink(b, hq, hkv, lq, lkv)

        def run_skip(b=b, hq=hq, hkv=hkv, lq=lq, lkv=lkv, d=d, splits=splits, i=i) -> dict:
            q, k, v = llm_like_qkv(b, hq, hkv, lq, lkv, d, seed=7 + i, dtype=torch.float16, device=plan.device)
            q64, k64, v64 = q.double(), k.double(), v.double()
            opts = dict(causal=True, block_m=plan.block_m, block_n=plan.block_n, num_splits=splits)
            cuts = margin_cuts(reference.skip_margins(q64, k64, v64, **opts), TARGETS)
            rows = []
            for (ln_lambda, design) in [(c, d) for c in cuts for d in designs(lq)]:
                sf = lkv * math.exp(ln_lambda)
                out = torch.full_like(q, float("nan"))
                got = ops.skip_softmax_attention(q, k, v, scale_factor=sf, count_skips=True, out=out,
                                                 config=design_config(ops, config, d, lq, design), **opts)  # fmt: skip
                ref = reference.skip_softmax_attention_reference(q64, k64, v64, scale_factor=sf, **opts)
                rows.append({"design": design, "scale_factor": sf, "ln_lambda": ln_lambda, "skip_ratio": got.skip_ratio,
                             "ref_skip_ratio": ref.skip_ratio,
                             "tiles_mismatched": int((got.tiles_skipped != ref.tiles_skipped).sum()),
                             "totals_equal": bool(torch.equal(got.tiles_total, ref.tiles_total)),
                             "all_written": bool(torch.isfinite(out).all()), **errors(out, ref.out)})  # fmt: skip
            ok = bool(rows) and all(r["tiles_mismatched"] == 0 and r["totals_equal"] and r["all_written"]
                                    and r["rel_fro"] <= 2e-3 for r in rows)  # fmt: skip
            return {"pass": ok, "thresholds": rows}

        row = guarded(entry, name, run_skip)
        if row:
            desc = ", ".join(f"{r['design']} skip {r['skip_ratio']:.0%} ({r['tiles_mismatched']} tiles differ, "
                             f"err {r['rel_fro']:.1e})"
                             for r in row["thresholds"])  # fmt: skip
            print(f"   {'PASS' if row['pass'] else 'FAIL'} {name}: {desc or 'no thresholds found'}", flush=True)
    failed = [r["case"] for r in entry["results"] if not r.get("pass")]
    if failed:
        entry["status"] = f"failed: {failed}"


def section_prefill(entry: dict, plan: Plan, report: Report, ops, config) -> None:
    try:
        from torch.nn.attention import SDPBackend
    except ImportError:
        SDPBackend = None
    backends = [("default", None)]
    if plan.device == "cuda" and SDPBackend is not None:
        backends += [(n, getattr(SDPBackend, a)) for n, a in
                     (("flash", "FLASH_ATTENTION"), ("cudnn", "CUDNN_ATTENTION"), ("efficient", "EFFICIENT_ATTENTION"))
                     if hasattr(SDPBackend, a)]  # fmt: skip
    for d in plan.head_dims:
        tuned: dict[str, Any] = {}
        for L in plan.lengths:
            tag = f"prefill d{d} L{L}"
            if report.left() < 12 + L / 4096:
                entry["results"].append({"case": tag, "skipped": f"time budget ({report.left():.0f} s left)"})
                continue
            try:
                prefill_case(entry, plan, ops, config, d, L, backends, tuned)
            except Exception as exc:  # noqa: BLE001 - record it, go on with the next size
                entry["results"].append({"case": tag, "error": f"{type(exc).__name__}: {exc}",
                                         "traceback": traceback.format_exc()[-2000:]})  # fmt: skip
            _free(plan)
            report.rows(entry, tag)
            report.save()


def _free(plan: Plan) -> None:
    if plan.device == "cuda":
        import torch

        torch.cuda.empty_cache()


def prefill_case(entry: dict, plan: Plan, ops, config, d: int, L: int, backends: list, tuned: dict) -> None:
    import torch

    hq, hkv = plan.prefill_heads
    tag = f"prefill d{d} L{L}"
    q, k, v = llm_like_qkv(1, hq, hkv, L, L, d, seed=L + d, dtype=torch.float16, device=plan.device)
    flops = 4.0 * hq * d * L * (L + 1) / 2
    sdpa_ms = {}
    kx, vx = k.repeat_interleave(hq // hkv, 1), v.repeat_interleave(hq // hkv, 1)
    for name, backend in backends:
        row = guarded(entry, f"{tag} sdpa[{name}]", lambda b=backend, name=name: {
            "mode": "prefill", "d": d, "L": L, "variant": f"sdpa[{name}]",
            "ms": (ms := bench_ms(plan, lambda: sdpa(q, kx, vx, causal=True, backend=b), graph=True)), "tflops": flops / ms / 1e9})  # fmt: skip
        if row:
            sdpa_ms[name] = row["ms"]
    ref = sdpa(q, kx, vx, causal=True)
    del kx, vx
    base = sdpa_ms.get("default", min(sdpa_ms.values(), default=float("nan")))
    best = min(sdpa_ms.values(), default=float("nan"))

    def kernel(sf=0.0, count=False, c=None):
        return ops.skip_softmax_attention(q, k, v, causal=True, scale_factor=sf, block_m=plan.block_m,
                                          block_n=plan.block_n, count_skips=count, config=c or tuned["cfg"])  # fmt: skip

    if "cfg" not in tuned:  # small warps/stages tune at the first length, reused for the others
        tuned["cfg"] = config.default_config(d, plan.block_m, plan.block_n, decode=False)
        timed = []
        for c in (ops.KernelConfig(8, 3, 1), ops.KernelConfig(8, 2, 1), ops.KernelConfig(4, 3, 1)) if plan.tune else ():
            r = guarded(entry, f"{tag} tune w{c.num_warps}s{c.num_stages}", lambda c=c: {
                "mode": "prefill", "d": d, "L": L, "variant": "dense-tune", "config": vars(c),
                "ms": bench_ms(plan, lambda: kernel(c=c), graph=True)})  # fmt: skip
            if r:
                timed.append((r["ms"], c))
        tuned["cfg"] = min(timed, key=lambda x: x[0])[1] if timed else tuned["cfg"]
    cfg = tuned["cfg"]
    dense = kernel()
    dense_ms = bench_ms(plan, lambda: kernel(), graph=True)
    entry["results"].append({"case": f"{tag} dense", "mode": "prefill", "d": d, "L": L, "variant": "dense",
                             "config": vars(cfg), "ms": dense_ms, "tflops": flops / dense_ms / 1e9, "skip_ratio": 0.0,
                             "speedup_vs_sdpa": base / dense_ms, "speedup_vs_best_sdpa": best / dense_ms,
                             "speedup_vs_dense": 1.0, "rel_err_vs_sdpa": errors(dense.out, ref)["rel_fro"]})  # fmt: skip
    del ref
    def skip_row(sf: float, ratio: float, name: str, c=None) -> dict:
        out = kernel(sf, c=c).out
        ms = bench_ms(plan, lambda: kernel(sf, c=c), graph=True)
        return {"mode": "prefill", "d": d, "L": L, "variant": name, "config": vars(c or cfg),
                "scale_factor": sf, "skip_ratio": ratio, "ms": ms, "tflops": flops / ms / 1e9,
                "speedup_vs_sdpa": base / ms, "speedup_vs_dense": dense_ms / ms,
                "rel_err_vs_dense": errors(out, dense.out)["rel_fro"]}  # fmt: skip

    # The skip test's own cost: skip mode with a threshold no tile reaches (lambda = e^-40).
    sf_none = L * math.exp(-40.0)
    guarded(entry, f"{tag} skip-none", lambda: skip_row(sf_none, kernel(sf_none, count=True).skip_ratio, "skip-none"))
    found = calibrate(plan, lambda sf: kernel(sf, count=True).skip_ratio, L)
    two_pass = replace(cfg, two_pass=True)
    for t, (sf, ratio) in found.items():
        guarded(entry, f"{tag} skip~{t:.0%}", lambda sf=sf, ratio=ratio, t=t: skip_row(sf, ratio, f"skip~{t:.0%}"))
        guarded(entry, f"{tag} skip~{t:.0%} two-pass",
                lambda sf=sf, ratio=ratio, t=t: skip_row(sf, ratio, f"skip~{t:.0%} two-pass", two_pass))  # fmt: skip
        if t == 0.75 and L == plan.lengths[min(1, len(plan.lengths) - 1)]:  # ablation: where V is read
            for v_load in sorted({0, 1, 2} - {cfg.v_load}):
                c_v = ops.KernelConfig(cfg.num_warps, cfg.num_stages, v_load)
                guarded(entry, f"{tag} skip~75% v_load={v_load}",
                        lambda sf=sf, ratio=ratio, c_v=c_v: skip_row(sf, ratio, f"skip~75% v_load={c_v.v_load}", c_v))  # fmt: skip


def section_decode(entry: dict, plan: Plan, report: Report, ops, config) -> None:
    for d in plan.head_dims:
        for L in plan.lengths:
            tag = f"decode d{d} L{L}"
            if report.left() < 6:
                entry["results"].append({"case": tag, "skipped": f"time budget ({report.left():.0f} s left)"})
                continue
            try:
                decode_case(entry, plan, ops, config, d, L)
            except Exception as exc:  # noqa: BLE001 - record it, go on with the next size
                entry["results"].append({"case": tag, "error": f"{type(exc).__name__}: {exc}",
                                         "traceback": traceback.format_exc()[-2000:]})  # fmt: skip
            _free(plan)
            report.rows(entry, tag)
            report.save()


def decode_case(entry: dict, plan: Plan, ops, config, d: int, L: int) -> None:
    import torch
    import torch.nn.functional as F

    b, (hq, hkv) = plan.decode_batch, plan.prefill_heads
    tag = f"decode d{d} L{L}"
    sms = torch.cuda.get_device_properties(0).multi_processor_count if plan.device == "cuda" else 4
    q, k, v = llm_like_qkv(b, hq, hkv, 1, L, d, seed=3 * L + d, dtype=torch.float16, device=plan.device)
    splits = config.auto_num_splits(b * hq, L, plan.block_n, sms)
    kv_bytes = 2 * k.numel() * k.element_size()

    grouped = replace(config.default_config(d, 16, plan.block_n, decode=True), grouped_decode=True)

    def kernel(sf=0.0, count=False, c=None):
        return ops.skip_softmax_attention(q, k, v, causal=True, scale_factor=sf, block_m=plan.block_m,
                                          block_n=plan.block_n, num_splits=splits, count_skips=count, config=c)  # fmt: skip

    kx, vx = k.repeat_interleave(hq // hkv, 1), v.repeat_interleave(hq // hkv, 1)
    sdpa_ms = {}
    for name, fn in (("gqa", lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True)),
                     ("expanded", lambda: F.scaled_dot_product_attention(q, kx, vx))):  # fmt: skip
        row = guarded(entry, f"{tag} sdpa[{name}]", lambda fn=fn, name=name: {
            "mode": "decode", "d": d, "L": L, "variant": f"sdpa[{name}]",
            "ms": (ms := bench_ms(plan, fn, graph=True)), "gbps": kv_bytes / ms / 1e6})  # fmt: skip
        if row:
            sdpa_ms[name] = row["ms"]
    ref = F.scaled_dot_product_attention(q, kx, vx)
    del kx, vx
    base = min(sdpa_ms.values(), default=float("nan"))
    dense = kernel()
    dense_ms = bench_ms(plan, lambda: kernel(), graph=True)
    entry["results"].append({"case": f"{tag} dense", "mode": "decode", "d": d, "L": L, "variant": "dense",
                             "num_splits": splits, "ms": dense_ms, "gbps": kv_bytes / dense_ms / 1e6, "skip_ratio": 0.0,
                             "speedup_vs_sdpa": base / dense_ms, "speedup_vs_dense": 1.0,
                             "rel_err_vs_sdpa": errors(dense.out, ref)["rel_fro"]})  # fmt: skip
    own_dense = {"": dense_ms}

    def grouped_dense() -> dict:
        out = kernel(c=grouped).out
        own_dense[" grouped"] = ms = bench_ms(plan, lambda: kernel(c=grouped), graph=True)
        return {"mode": "decode", "d": d, "L": L, "variant": "dense grouped", "num_splits": splits, "ms": ms,
                "gbps": kv_bytes / ms / 1e6, "skip_ratio": 0.0, "speedup_vs_sdpa": base / ms,
                "speedup_vs_dense": dense_ms / ms, "rel_err_vs_sdpa": errors(out, ref)["rel_fro"]}  # fmt: skip

    guarded(entry, f"{tag} dense grouped", grouped_dense)
    found = calibrate(plan, lambda sf: kernel(sf, count=True).skip_ratio, L)
    for t, (sf, ratio) in found.items():
        for label, c in (("", None), (" grouped", grouped)):
            if label not in own_dense:
                continue

            def skip_row(sf=sf, ratio=ratio, t=t, label=label, c=c) -> dict:
                out = kernel(sf, c=c).out
                ms = bench_ms(plan, lambda: kernel(sf, c=c), graph=True)
                return {"mode": "decode", "d": d, "L": L, "variant": f"skip~{t:.0%}{label}", "num_splits": splits,
                        "scale_factor": sf, "skip_ratio": ratio, "ms": ms, "gbps": kv_bytes / ms / 1e6,
                        "speedup_vs_sdpa": base / ms, "speedup_vs_dense": own_dense[label] / ms,
                        "speedup_vs_best_dense": min(own_dense.values()) / ms,
                        "rel_err_vs_dense": errors(out, dense.out)["rel_fro"]}  # fmt: skip

            guarded(entry, f"{tag} skip~{t:.0%}{label}", skip_row)


# ------------------------------------------------------------------------------------- summary


def kernel_targets(rows: list[dict], plan: Plan) -> dict[str, Any]:
    """One entry per target of issue 17, named after what it measures: the best design's ratio
    (fused or two-pass prefill; per-head or grouped decode), the target and whether it is met."""
    targets: dict[str, Any] = {}

    def put(name: str, mode: str, d: int, L: int, variants: set[str], key: str, target: float) -> None:
        cands = [r for r in rows if r.get("mode") == mode and r.get("d") == d and r.get("L") == L
                 and r.get("variant") in variants and isinstance(r.get(key), float)]  # fmt: skip
        if not cands:
            targets[name] = {"value": None, "target": target, "met": False, "why": "not measured"}
            return
        best = max(cands, key=lambda r: r[key])
        targets[name] = {"value": round(best[key], 3), "target": target, "met": best[key] >= target,
                         "design": best["variant"], "skip_ratio": best.get("skip_ratio"), "ms": round(best["ms"], 4)}  # fmt: skip

    long = [L for L in plan.lengths if L >= min(16384, max(plan.lengths))]
    for L in long:
        d = max(plan.head_dims)
        for t, target in ((0.75, 1.3), (0.9, 1.6)):
            put(f"prefill_skip~{t:.0%}_d{d}_L{L}_vs_dense", "prefill", d, L, {f"skip~{t:.0%}", f"skip~{t:.0%} two-pass"},
                "speedup_vs_dense", target)  # fmt: skip
        put(f"prefill_skip_none_d{d}_L{L}_vs_dense", "prefill", d, L, {"skip-none"}, "speedup_vs_dense", 0.9)
        for d in plan.head_dims:
            put(f"prefill_dense_d{d}_L{L}_vs_sdpa", "prefill", d, L, {"dense"}, "speedup_vs_sdpa", 0.9)
    for d in plan.head_dims:
        for L in plan.lengths:
            b = plan.decode_batch
            put(f"decode_dense_B{b}_d{d}_L{L}_vs_sdpa", "decode", d, L, {"dense", "dense grouped"}, "speedup_vs_sdpa", 0.8)
            put(f"decode_skip~75%_B{b}_d{d}_L{L}_vs_dense", "decode", d, L, {"skip~75%", "skip~75% grouped"},
                "speedup_vs_best_dense", 1.3)  # fmt: skip
    return targets


def summarize(report: Report, plan: Plan) -> None:
    sections = report.data["sections"]
    rows = [r for name in ("prefill", "decode", "block_sparse", "token_pruning")
            for r in sections.get(name, {}).get("results", []) if "ms" in r]  # fmt: skip
    summary: dict[str, Any] = {"correctness": sections.get("correctness", {}).get("status")}
    summary |= kernel_targets(rows, plan)
    if any(name in sections for name in SPARSE_SECTIONS) and "gpu_sparse" in sys.modules:
        sys.modules["gpu_sparse"].summarize_sparse(report, summary)
    summary["cuda_graph_timing_fallbacks"] = {"count": len(GRAPH_FALLBACKS), "first": GRAPH_FALLBACKS[:3]}
    report.data["summary"] = summary
    print("== table", flush=True)
    for r in rows:
        print(format_row(r), flush=True)
    print("== summary\n" + json.dumps(summary, indent=1), flush=True)


def run_sparse_sections(report: Report, plan: Plan, sections: list[str]) -> None:
    """Sections 4-6 (``benchmarks/gpu_sparse.py``); each releases its reserve of the budget as it starts."""
    todo = [name for name in SPARSE_SECTIONS if name in sections]
    if not todo:
        return
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    try:
        import gpu_sparse
    except Exception as exc:  # noqa: BLE001 - record it in each of its sections
        failure = exc

        def reraise(entry: dict) -> None:
            raise failure

        for name in todo:
            report.section(name, reraise, 0)
        return

    tools = types.SimpleNamespace(bench_ms=bench_ms, guarded=guarded, errors=errors, sdpa=sdpa,
                                  llm_like_qkv=llm_like_qkv, free=lambda: _free(plan))  # fmt: skip
    mods: dict[str, Any] = {}

    def loaded() -> types.SimpleNamespace:
        if "ns" not in mods:
            mods["ns"] = load_sparse_modules()
        return mods["ns"]

    runs = {
        "sparse_correctness": (lambda e: gpu_sparse.section_sparse_correctness(e, plan, tools, loaded()), 10),
        "block_sparse": (lambda e: gpu_sparse.section_block_sparse(e, plan, report, tools, loaded()), 15),
        "token_pruning": (lambda e: gpu_sparse.section_token_pruning(e, plan, report, tools, loaded()), 5),
    }
    for name in todo:
        report.reserved_s = max(0.0, report.reserved_s - RESERVE_S[name])
        fn, need = runs[name]
        report.section(name, fn, need)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default $OUT/gpu_attention.json)")
    parser.add_argument("--quick", action="store_true", help="L = 4k only")
    parser.add_argument("--cpu-smoke", action="store_true", help="toy sizes on CPU in the Triton interpreter")
    parser.add_argument("--budget", type=float, default=285.0, help="seconds; what would not fit is skipped")
    parser.add_argument("--sections", nargs="+", default=None, choices=[*SKIP_SECTIONS, *SPARSE_SECTIONS],
                        help="default: all (--cpu-smoke: the skip-softmax ones)")
    args = parser.parse_args(argv)
    plan = cpu_smoke_plan() if args.cpu_smoke else Plan()
    if args.quick and not args.cpu_smoke:
        plan = replace(plan, lengths=(4096,), sparse_lengths=(4096,))
    sections = args.sections or list(SKIP_SECTIONS if args.cpu_smoke else (*SKIP_SECTIONS, *SPARSE_SECTIONS))
    if args.cpu_smoke:
        os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported
    out = args.out or Path(os.environ.get("OUT") or ROOT / "benchmarks" / "results") / "gpu_attention.json"
    report = Report(out, args.budget)
    try:
        import torch

        if plan.device == "cuda" and not torch.cuda.is_available():
            report.data["error"] = "no CUDA device (use --cpu-smoke to exercise the script without one)"
            print(report.data["error"], flush=True)
            return 1
        ops, reference, config = load_kernel_modules()
        report.reserved_s = sum(RESERVE_S.get(name, 0.0) for name in sections)
        report.section("env", lambda e: section_env(e, plan), 0)
        if "correctness" in sections:
            report.section("correctness", lambda e: section_correctness(e, plan, ops, reference, config), 20)
        if "prefill" in sections:
            report.section("prefill", lambda e: section_prefill(e, plan, report, ops, config), 30)
        if "decode" in sections:
            report.section("decode", lambda e: section_decode(e, plan, report, ops, config), 10)
        run_sparse_sections(report, plan, sections)
        summarize(report, plan)
    except Exception as exc:  # noqa: BLE001 - the JSON must still be written
        report.data["error"] = f"{type(exc).__name__}: {exc}"
        report.data["traceback"] = traceback.format_exc()[-4000:]
        print(report.data["traceback"], flush=True)
    finally:
        report.save()
        print(f"wrote {out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
