#!/usr/bin/env python3
"""Where skip-mode prefill time goes on a GPU: the skip-softmax kernel under several launch settings.

    python benchmarks/gpu_skip_ablation.py [--budget 270]     # JSON to $OUT/gpu_skip_ablation.json
    python benchmarks/gpu_skip_ablation.py --cpu-smoke        # every path at toy sizes, Triton interpreter

`benchmarks/gpu_attention.py` measured skip mode slower than dense on an H200 even with 90 % of the
tiles skipped. This script separates the causes. For each head size and launch setting (query tile,
key tile, warps, pipeline stages, where V is read) it times, on the same LLM-like inputs as
`gpu_attention.py` (causal, B=1, 32/8 heads, L=16384, fp16):

- ``dense``: the kernel compiled without the skip test;
- ``skip-none``: skip test compiled in, threshold so low that nothing is skipped (cost of the test
  and of the branch around the softmax update and P @ V);
- ``skip-all``: threshold so high that every tile but each row block's first is skipped (the floor:
  Q K^T and the row maxima of every tile);
- ``skip~75%``: a threshold calibrated on the kernel's own tile counts to skip about 75 %.

Times are medians of CUDA-graph replays (`gpu_attention.bench_ms`). Needs torch and triton only.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import gpu_attention as ga  # noqa: E402

SETTINGS = [  # block_m, block_n, warps, stages, v_load — in the order they are tried
    (128, 64, 8, 3, 2),  # the prefill default
    (128, 64, 8, 3, 0),
    (64, 64, 4, 3, 0),
    (64, 64, 4, 3, 2),
    (128, 64, 8, 3, 1),
    (128, 128, 8, 2, 0),
    (64, 128, 4, 3, 0),
]


def ratio_at(kernel, kv_len: int, ln_lambda: float) -> float:
    return kernel(kv_len * math.exp(ln_lambda), count=True).skip_ratio


def calibrate_75(kernel, kv_len: int) -> tuple[float, float]:
    """ln(lambda) with a skip ratio near 0.75: a coarse sweep, then bisection."""
    grid = [-10.0 + i for i in range(12)]
    seen = {ll: ratio_at(kernel, kv_len, ll) for ll in grid}
    lo = max([ll for ll, r in seen.items() if r <= 0.75], default=grid[0])
    hi = min([ll for ll, r in seen.items() if r >= 0.75 and ll >= lo], default=grid[-1])
    for _ in range(5):
        mid = (lo + hi) / 2
        seen[mid] = r = ratio_at(kernel, kv_len, mid)
        lo, hi = (mid, hi) if r < 0.75 else (lo, mid)
    best = min((abs(seen[x] - 0.75), x) for x in (lo, hi))[1]
    return best, seen[best]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=270.0, help="seconds; settings that would not fit are skipped")
    parser.add_argument("--length", type=int, default=16384)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--cpu-smoke", action="store_true", help="toy sizes on CPU in the Triton interpreter")
    args = parser.parse_args()
    out_path = args.out or Path(os.environ.get("OUT", ".")) / "gpu_skip_ablation.json"
    if args.cpu_smoke:
        os.environ["TRITON_INTERPRET"] = "1"  # before triton is first imported

    import torch

    ops, _, _ = ga.load_kernel_modules()
    plan = ga.cpu_smoke_plan() if args.cpu_smoke else ga.Plan()
    shrink = 4 if args.cpu_smoke else 1
    if args.cpu_smoke:
        args.length = 96
    started = time.time()
    rows: list[dict] = []
    report = {"script": "benchmarks/gpu_skip_ablation.py", "length": args.length, "rows": rows,
              "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (CPU smoke)",
              "torch": torch.__version__}  # fmt: skip
    import triton

    report["triton"] = triton.__version__
    L, (hq, hkv) = args.length, plan.prefill_heads
    device = plan.device
    for d in ((32,) if args.cpu_smoke else (128, 64)):
        q, k, v = ga.llm_like_qkv(1, hq, hkv, L, L, d, seed=L + d, dtype=torch.float16, device=device)
        flops = 4.0 * hq * d * L * (L + 1) / 2
        for bm, bn, warps, stages, v_load in SETTINGS[:2] if args.cpu_smoke else SETTINGS:
            if time.time() - started > args.budget - 20:
                rows.append({"d": d, "setting": [bm, bn, warps, stages, v_load], "skipped": "time budget"})
                continue
            bm, bn = bm // shrink, bn // shrink
            cfg = ops.KernelConfig(warps, stages, v_load)
            tag = f"d{d} bm{bm} bn{bn} w{warps} s{stages} v{v_load}"

            def kernel(sf=0.0, count=False, bm=bm, bn=bn, cfg=cfg):
                return ops.skip_softmax_attention(q, k, v, causal=True, scale_factor=sf, block_m=bm, block_n=bn,
                                                  count_skips=count, config=cfg)  # fmt: skip

            row: dict = {"d": d, "setting": {"block_m": bm, "block_n": bn, "warps": warps, "stages": stages,
                                             "v_load": v_load}}  # fmt: skip
            try:
                row["dense_ms"] = ga.bench_ms(plan, lambda: kernel(), graph=True)
                for name, ll in (("skip_none", -40.0), ("skip_all", 5.0)):
                    sf = L * math.exp(ll)
                    row[f"{name}_ratio"] = kernel(sf, count=True).skip_ratio
                    row[f"{name}_ms"] = ga.bench_ms(plan, lambda sf=sf: kernel(sf), graph=True)
                ll, ratio = calibrate_75(kernel, L)
                sf = L * math.exp(ll)
                row["skip75_ratio"], row["skip75_ln_lambda"] = ratio, ll
                row["skip75_ms"] = ga.bench_ms(plan, lambda sf=sf: kernel(sf), graph=True)
                row["dense_tflops"] = flops / row["dense_ms"] / 1e9
                for name in ("skip_none", "skip_all", "skip75"):
                    row[f"{name}_vs_dense"] = row["dense_ms"] / row[f"{name}_ms"]
                print(f"{tag:28s} dense {row['dense_ms']:.3f} ms ({row['dense_tflops']:.0f} TF/s)  "
                      f"none {row['skip_none_ms']:.3f} ({row['skip_none_vs_dense']:.2f}x)  "
                      f"all {row['skip_all_ms']:.3f} ({row['skip_all_vs_dense']:.2f}x, {row['skip_all_ratio']:.0%})  "
                      f"~75% {row['skip75_ms']:.3f} ({row['skip75_vs_dense']:.2f}x, {ratio:.0%})", flush=True)  # fmt: skip
            except Exception as exc:  # noqa: BLE001 - record it, go on with the next setting
                row["error"] = f"{type(exc).__name__}: {exc}"[:400]
                row["traceback"] = traceback.format_exc()[-1500:]
                print(f"{tag:28s} ERROR {row['error'][:150]}", flush=True)
            rows.append(row)
            report["elapsed_s"] = round(time.time() - started, 1)
            out_path.parent.mkdir(parents=True, exist_ok=True)
            out_path.write_text(json.dumps(report, indent=1) + "\n")
        del q, k, v
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    print(f"wrote {out_path} ({time.time() - started:.0f} s)")


if __name__ == "__main__":
    main()
