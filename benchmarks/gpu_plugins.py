#!/usr/bin/env python3
"""GPU check of the TensorRT plugins' launches (issue 13): needs a CUDA GPU; never part of the test suite.

For every op with a plugin, at several shapes, in fp16: the kernel build a plugin node of that shape carries
is compiled ahead of time for this GPU (`edgeattn.kernels.aot_bundle`, as `edgeattn compile` does), then
the very function a plugin's `enqueue` runs (`edgeattn.ops.trt_plugin.launch_node`) launches it through the
CUDA driver (`cuda-python`) on torch's current stream, on CUDA tensors. Each result is compared with the op's
reference (fp16 tolerance: 2e-3 absolute and relative against float64 for attention, exact for selection),
and timed against torch's scaled dot product attention (attention ops) or the op's torch reference (token
ops). Medians of 50 timed runs after 10 warm-up runs, CUDA events.

    python benchmarks/gpu_plugins.py                  # JSON to benchmarks/results/gpu_plugins_<gpu>.json
    OUT=/dir python benchmarks/gpu_plugins.py         # JSON to /dir/gpu_plugins.json

Needs what edgeattn needs to import its ops (onnx, onnx-ir, numpy) plus torch, triton and cuda-python.
No TensorRT is needed: the check runs the plugins' launch path, not an engine.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _timed(fn: Callable[[], Any], repeats: int = 50, warmup: int = 10) -> float:
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def _case(op: str, attrs: dict[str, Any], tensors: list[Any], outputs: list[Any], arch: int) -> Callable[[], None]:
    """A callable that runs `op`'s plugin launch on these CUDA tensors (compiled once here)."""
    import torch

    from edgeattn.kernels.aot_bundle import compile_records
    from edgeattn.kernels.launch import CudaLauncher
    from edgeattn.ops import trt_plugin as tp
    from edgeattn.ops.registry import get_op

    names = {torch.float16: "fp16", torch.float32: "fp32", torch.bfloat16: "bf16"}
    present = tuple(i for i, t in enumerate(tensors) if t is not None)
    given = [t for t in tensors if t is not None]
    view = tp.NodeView(get_op(op).resolve(attrs), tuple(tp.InputView(names[t.dtype], tuple(t.shape)) for t in given),
                       present, len(outputs))
    definition = get_op(op).plugin_def()
    choice = definition.choose(view)
    if isinstance(choice, str):
        raise RuntimeError(f"{op}: no kernel: {choice}")
    (record,) = compile_records([{"family": choice.family, "build_class": choice.build_class,
                                  "build": dict(choice.builds[0]), "arch": arch}])
    bundle = tp.Bundle(present, len(outputs), {arch: [record]})
    symbols = definition.symbols(view.attributes, present, [tuple(t.shape) for t in given])
    workspace = torch.empty(max(tp.workspace_bytes(record, symbols)[1], 1), dtype=torch.uint8, device="cuda")
    launcher = CudaLauncher(record)

    def run() -> None:
        stream = torch.cuda.current_stream().cuda_stream
        tp.launch_node(definition, view.attributes, bundle, record, [tuple(t.shape) for t in given],
                       [t.data_ptr() for t in given], [t.data_ptr() for t in outputs],
                       lambda name, offset, size, dtype: workspace.data_ptr() + offset, launcher.on(stream))

    return run


def main() -> int:
    import torch

    from edgeattn.ops.registry import get_op

    if not torch.cuda.is_available():
        print("no CUDA GPU: this check runs on a GPU only", file=sys.stderr)
        return 1
    major, minor = torch.cuda.get_device_capability()
    arch = 10 * major + minor
    gpu = torch.cuda.get_device_name()
    torch.cuda.init()
    rows: list[dict[str, Any]] = []
    gen = torch.Generator(device="cuda").manual_seed(0)

    def randn(*shape: int) -> Any:
        return torch.randn(*shape, device="cuda", generator=gen, dtype=torch.float16)

    # (batch, heads, kv heads, length, head size, padded keys of the last batch entry): a padded batch runs with
    # the decoder's key mask, [B, 1, 1, T] additive, which the kernels add to the scores
    for batch, heads, kv_heads, length, head, padded in ((1, 32, 8, 1024, 64, 0), (1, 32, 8, 4096, 128, 0),
                                                         (1, 16, 16, 8192, 64, 0), (2, 32, 8, 2048, 64, 300)):
        q, k, v = (randn(batch, h, length, head) for h in (heads, kv_heads, kv_heads))
        expanded = [x.repeat_interleave(heads // kv_heads, 1) for x in (k, v)]
        mask = torch.zeros(batch, 1, 1, length, device="cuda", dtype=torch.float16)
        mask[-1, ..., :padded] = float("-inf")  # left padding
        causal = torch.ones(length, length, device="cuda", dtype=torch.bool).tril()
        sdpa_mask = causal & (mask == 0)
        sdpa = _timed(lambda: torch.nn.functional.scaled_dot_product_attention(
            q, *expanded, attn_mask=sdpa_mask if padded else None, is_causal=not padded))
        for op, attrs in (("Attention", {"causal": 2}), ("SkipSoftmaxAttention", {"causal": 2, "scale_factor": 10.0}),
                          ("BlockSparseAttention", {"causal": 2, "layout": "select", "keep": 0.25, "block_size": 64})):
            out = torch.full_like(q, float("nan"))
            row: dict[str, Any] = {"op": op, "shape": [batch, heads, kv_heads, length, head], "attrs": attrs,
                                   "padded_keys": padded}
            try:
                tensors = [q, k, v, mask] if padded else [q, k, v]
                run = _case(op, attrs, tensors, [out], arch)
                run()
                torch.cuda.synchronize()
                ref = get_op(op).reference(q.double(), k.double(), v.double(), mask.double() if padded else None,
                                           **attrs)
                ref = ref[0] if isinstance(ref, tuple) else ref
                row["max_abs_error"] = float((out.double() - ref).abs().max())
                row["ok"] = bool(torch.allclose(out.double(), ref, atol=2e-3, rtol=2e-3))
                row["ms"] = _timed(run)
                row["sdpa_ms"] = sdpa
                row["vs_sdpa"] = sdpa / row["ms"]
            except Exception as err:  # noqa: BLE001 - recorded, the other rows still run
                row["error"] = f"{type(err).__name__}: {err}"
            rows.append(row)
            print(json.dumps(row), flush=True)

    for tokens, head in ((577, 64), (2305, 64)):
        q, k = randn(1, 16, tokens, head), randn(1, 16, tokens, head)
        scores = torch.empty(1, tokens - 1, device="cuda")
        row = {"op": "TokenScore", "shape": [1, 16, tokens, head]}
        try:
            run = _case("TokenScore", {"source": "cls"}, [q, k], [scores], arch)
            run()
            torch.cuda.synchronize()
            ref = get_op("TokenScore").reference(q.float(), k.float(), source="cls")
            row["ok"] = bool(torch.allclose(scores, ref.float(), atol=2e-3, rtol=2e-3))
            row["ms"] = _timed(run)
            row["torch_ms"] = _timed(lambda: get_op("TokenScore").reference(q, k, source="cls"))
        except Exception as err:  # noqa: BLE001
            row["error"] = f"{type(err).__name__}: {err}"
        rows.append(row)
        print(json.dumps(row), flush=True)

    document = {"gpu": gpu, "arch": arch, "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__, "rows": rows,
                "engine": "not built: TensorRT is not installed on the GPU machines this project is lent"}
    out_dir = Path(os.environ.get("OUT") or ROOT / "benchmarks" / "results")
    name = "gpu_plugins.json" if os.environ.get("OUT") else f"gpu_plugins_{gpu.split()[-1].lower()}.json"
    (out_dir / name).write_text(json.dumps(document, indent=1) + "\n")
    return 0 if all(r.get("ok") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
