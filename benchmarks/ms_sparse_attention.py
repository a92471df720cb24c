"""onnxruntime's own block-sparse kernel, `com.microsoft.SparseAttention`, against edgeattn's lowerings.

    python benchmarks/ms_sparse_attention.py [--length 4096] [--repeats 7]

`MsSparseAttention` runs the contrib op on [B, H, L, d] tensors with one static block layout (its
KV cache buffers are bound in place through IOBinding, which the CPU kernel requires). The script
times one attention layer shaped like SmolLM2-135M's (9 query / 3 KV heads, d = 64, blocks of 64, a
causal layout keeping the diagonal block, block 0 and random earlier blocks up to 25 % of the score
matrix) against the opset-23 `Attention` op on the whole causal matrix and against edgeattn's
`block:keep=0.25,block=64` gather lowering (same density, blocks chosen from the scores). Writes
benchmarks/results/ms_sparse_attention.json. This is the measurement behind not lowering to
SparseAttention on CPU (docs/sparse.md).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import machine, run_benchmark, write_json  # noqa: E402

THREADS = 2


class MsSparseAttention:
    """`com.microsoft.SparseAttention` (causal, one layout for every head) as a callable on numpy."""

    def __init__(self, q_heads: int, kv_heads: int, block: int, block_mask: np.ndarray, scale: float,
                 threads: int = THREADS) -> None:
        import onnxruntime as ort
        from onnx import TensorProto as T
        from onnx import helper as h

        self.q_heads, self.block = q_heads, block
        rows, cols = [0], []
        for row in np.asarray(block_mask, bool):
            cols += [int(c) for c in np.nonzero(row)[0]]
            rows.append(len(cols))
        self.rows, self.cols = np.array([rows], np.int32), np.array([cols], np.int32)
        names = ["q", "k", "v", "past_k", "past_v", "rows", "cols", "total", "lengths"]
        node = h.make_node("SparseAttention", names, ["y", "present_k", "present_v"], domain="com.microsoft",
                           num_heads=q_heads, kv_num_heads=kv_heads, scale=float(scale), sparse_block_size=block)
        types = [T.FLOAT] * 5 + [T.INT32] * 4
        graph = h.make_graph([node], "ms_sparse", [h.make_tensor_value_info(n, t, None) for n, t in zip(names, types)],
                             [h.make_tensor_value_info(n, T.FLOAT, None) for n in ("y", "present_k", "present_v")])
        model = h.make_model(graph, opset_imports=[h.make_opsetid("", 23), h.make_opsetid("com.microsoft", 1)],
                             ir_version=10)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.log_severity_level = 3
        self.session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])

    def __call__(self, q: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
        """q [B, Hq, L, d], k/v [B, Hkv, L, d] (a prompt with no past) -> [B, Hq, L, d]."""
        import onnxruntime as ort

        batch, _, length, head = q.shape
        rows_major = lambda x: np.ascontiguousarray(x.transpose(0, 2, 1, 3).reshape(batch, length, -1))  # noqa: E731
        cache_shape = (batch, k.shape[1], length, head)
        past_k = ort.OrtValue.ortvalue_from_numpy(np.zeros(cache_shape, np.float32))
        past_v = ort.OrtValue.ortvalue_from_numpy(np.zeros(cache_shape, np.float32))
        binding = self.session.io_binding()
        feeds = {"q": rows_major(q), "k": rows_major(k), "v": rows_major(v), "rows": self.rows, "cols": self.cols,
                 "total": np.array(length, np.int32), "lengths": np.full((batch,), length, np.int32)}
        for name, value in feeds.items():
            binding.bind_cpu_input(name, value)
        binding.bind_ortvalue_input("past_k", past_k)  # the kernel updates the cache in place
        binding.bind_ortvalue_input("past_v", past_v)
        binding.bind_ortvalue_output("present_k", past_k)
        binding.bind_ortvalue_output("present_v", past_v)
        binding.bind_output("y")
        self.session.run_with_iobinding(binding)
        out = binding.get_outputs()[2].numpy()
        return out.reshape(batch, length, self.q_heads, head).transpose(0, 2, 1, 3)


def causal_layout(blocks: int, fraction: float, seed: int = 0) -> np.ndarray:
    """A causal block mask: the diagonal, block 0 and random earlier blocks, about `fraction` of all blocks."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((blocks, blocks), bool)
    per_row = max(2, round(fraction * blocks))
    for row in range(blocks):
        mask[row, [0, row]] = True
        earlier = np.arange(1, row)
        take = min(len(earlier), per_row - 2)
        if take > 0:
            mask[row, rng.choice(earlier, take, replace=False)] = True
    return mask


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--length", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    import onnxruntime as ort

    from benchmarks.sparse_quality_speed import attention_site
    from edgeattn.graphs.sparse.api import sparsify

    length, block, scale = args.length, 64, 0.125
    layout = causal_layout(length // block, 0.25)
    ms = MsSparseAttention(9, 3, block, layout, scale)
    site = attention_site(length, layers=1)
    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    options.log_severity_level = 3
    plain = ort.InferenceSession(site.SerializeToString(), options, providers=["CPUExecutionProvider"])
    gathered_model, _ = sparsify(site, ["block:keep=0.25,block=64"], component="decoder")
    import onnx_ir as ir

    gathered = ort.InferenceSession(ir.to_proto(gathered_model).SerializeToString(), options,
                                    providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    q = rng.standard_normal((1, 9, length, 64), np.float32)
    k = rng.standard_normal((1, 3, length, 64), np.float32)
    v = rng.standard_normal((1, 3, length, 64), np.float32)
    feeds = {"q0": q, "k0": k, "v0": v, "attention_mask": np.ones((1, length), np.int64)}
    runs: dict[str, Any] = {"attention_op": lambda: plain.run(None, feeds), "ms_sparse_attention": lambda: ms(q, k, v),
                            "edgeattn_block_gather": lambda: gathered.run(None, feeds)}
    times: dict[str, list[float]] = {name: [] for name in runs}
    for call in runs.values():
        call()
    for _ in range(args.repeats):
        for name, call in runs.items():
            start = time.perf_counter()
            call()
            times[name].append((time.perf_counter() - start) * 1e3)
    density = float(layout.sum() / (layout.shape[0] * (layout.shape[0] + 1) / 2))
    results = {name: {"median_ms": statistics.median(t),
                      "speedup_vs_attention_op": statistics.median(a / b for a, b in zip(times["attention_op"], t))}
               for name, t in times.items()}  # fmt: skip
    payload = {"machine": machine(), "length": length, "block": block, "threads": THREADS,
               "layout_density_of_causal_blocks": density, "results": results}
    path = write_json("ms_sparse_attention", payload)
    print(f"L = {length}, SparseAttention layout: {density:.1%} of the causal blocks")
    for name, r in results.items():
        print(f"  {name:24s} {r['median_ms']:8.1f} ms  {r['speedup_vs_attention_op']:.2f}x vs Attention op")
    print(f"wrote {path}")


if __name__ == "__main__":
    run_benchmark(main)
