"""SkipSoftmaxAttention: the PyTorch reference, and the Triton kernels in the interpreter on CPU.

The kernels must agree with the float64 reference on the output *and* on which tiles they skip.
Tolerances (max abs error, outputs are O(1) averages of N(0, 1) values):
  fp32 inputs  2e-5: the interpreter computes fp32 dots and exp2; observed errors are ~5e-7.
  fp16 inputs  2e-3: the reference sees the same fp16-rounded inputs; the kernel rounds P to fp16
               for P @ V (relative 2^-11 per weight) and the output to fp16 (2^-11 relative).
  bf16 inputs  1.6e-2: the same two roundings at 2^-8.
Skip thresholds are placed between the reference's tile margins (at least 1e-3 from every one), so
fp32-vs-fp64 rounding of the scores cannot flip a decision and the counts must match exactly.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

os.environ["TRITON_INTERPRET"] = "1"  # also set by conftest.py; Triton reads it at first import

import pytest
import torch

from edgeattn.errors import EdgeAttnError
from edgeattn.kernels.skip_softmax.config import auto_num_splits, default_config, kernel_block_m
from edgeattn.kernels.skip_softmax.reference import (
    kv_tiles_per_split,
    skip_margins,
    skip_softmax_attention_reference,
    visited_tiles,
)

ATOL = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def make_qkv(b, hq, hkv, lq, lkv, d, *, seed=0, dtype=torch.float64, peaked=True):
    """Random q/k/v; ``peaked`` gives keys a smooth temperature (0.25..1.5) and two strong sink keys,
    so that tile maxima spread over several nats as in trained models and some tiles are skippable."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, hq, lq, d, generator=g, dtype=torch.float64)
    k = torch.randn(b, hkv, lkv, d, generator=g, dtype=torch.float64)
    v = torch.randn(b, hkv, lkv, d, generator=g, dtype=torch.float64)
    if peaked:
        pos = torch.arange(lkv, dtype=torch.float64)
        temp = 0.25 + 1.25 * (0.5 + 0.5 * torch.sin(pos / 9.0))
        temp[:2] = 3.0
        k = k * temp[:, None]
    return q.to(dtype), k.to(dtype), v.to(dtype)


def dense_attention(q, k, v, *, causal):
    """Softmax attention in float64 with the KV-cache causal mask (query i at Lkv - Lq + i)."""
    q, k, v = q.double(), k.double(), v.double()
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if causal:
        lq, lkv = q.shape[2], k.shape[2]
        i = torch.arange(lq)[:, None] + lkv - lq
        s = s.masked_fill(torch.arange(lkv)[None, :] > i, -math.inf)
    return torch.softmax(s, -1).nan_to_num(0.0) @ v


def thresholds(margins, quantiles=(0.3, 0.6, 0.9), min_gap=1e-3):
    """``ln(lambda)`` values near the given quantiles of the finite margins, each at least
    ``min_gap`` from every margin and below 0 (lambda <= 1, where margins predict skips exactly)."""
    vals = torch.unique(margins[torch.isfinite(margins)])
    vals = vals[vals < -2 * min_gap]
    if vals.numel() < 2:
        return []
    mids = (vals[1:] + vals[:-1]) / 2
    ok = (vals[1:] - vals[:-1]) > 2 * min_gap
    out = []
    for qt in quantiles:
        idx = int(qt * (vals.numel() - 1))
        cands = torch.nonzero(ok).flatten()
        if cands.numel():
            best = cands[torch.argmin((cands - idx).abs())]
            out.append(float(mids[best]))
    return sorted(set(out))


def kernel(*args, **kwargs):
    from edgeattn.kernels.skip_softmax.ops import skip_softmax_attention

    return skip_softmax_attention(*args, **kwargs)


# ------------------------------------------------------------------------------------- reference

REF_CASES = [  # lq, lkv, hq, hkv, causal, num_splits
    (37, 37, 2, 2, False, 1),
    (37, 37, 4, 2, True, 1),
    (130, 200, 4, 1, True, 3),
    (200, 130, 4, 2, True, 2),  # Lq > Lkv: the first 70 rows see no key
    (1, 200, 4, 2, True, 4),
    (5, 255, 2, 1, False, 7),
]


@pytest.mark.parametrize("lq,lkv,hq,hkv,causal,splits", REF_CASES)
def test_reference_dense_equals_softmax_attention(lq, lkv, hq, hkv, causal, splits):
    q, k, v = make_qkv(2, hq, hkv, lq, lkv, 16, seed=lq + lkv)
    res = skip_softmax_attention_reference(q, k, v, causal=causal, block_m=16, block_n=32, num_splits=splits)
    torch.testing.assert_close(res.out, dense_attention(q, k, v, causal=causal), atol=1e-12, rtol=0)
    assert int(res.tiles_skipped.sum()) == 0
    expected_total = visited_tiles(lq, lkv, causal=causal, block_m=16, block_n=32)
    assert torch.equal(res.tiles_total, expected_total.expand_as(res.tiles_total))


def test_reference_visited_tiles_by_hand():
    # Lq = Lkv = 100, 32x32 tiles, causal: query tile t sees key tiles 0..t.
    assert visited_tiles(100, 100, causal=True, block_m=32, block_n=32).tolist() == [1, 2, 3, 4]
    # KV cache of 150 with 20 new rows (positions 130..149): one query tile, key tiles 0..4.
    assert visited_tiles(20, 150, causal=True, block_m=32, block_n=32).tolist() == [5]
    # Lq > Lkv: rows 0..69 of 100 have no key; tile 0 (rows 0..31) and tile 1 (32..63) visit nothing.
    assert visited_tiles(100, 30, causal=True, block_m=32, block_n=32).tolist() == [0, 0, 1, 1]
    assert visited_tiles(7, 65, causal=False, block_m=32, block_n=32).tolist() == [3]
    assert kv_tiles_per_split(200, 16, 4) == 4 and kv_tiles_per_split(10, 16, 8) == 1


@pytest.mark.parametrize("causal,splits", [(False, 1), (True, 1), (True, 3)])
def test_reference_margins_predict_skips(causal, splits):
    q, k, v = make_qkv(1, 4, 2, 70, 150, 16, seed=3)
    opts = dict(causal=causal, block_m=16, block_n=16, num_splits=splits)
    margins = skip_margins(q, k, v, **opts)
    assert torch.isinf(margins[..., 0]).all()  # first tile of every query tile: never skipped
    seen = set()
    for sf in (0.5, 2.0, 8.0, 30.0, 150.0):
        res = skip_softmax_attention_reference(q, k, v, scale_factor=sf, **opts)
        assert torch.equal(res.tiles_skipped, (margins < math.log(sf / 150)).sum(-1))
        seen.add(int(res.tiles_skipped.sum()))
    assert len(seen) >= 3  # the thresholds really cut through the margins


def test_reference_skipped_tiles_drop_out_of_the_softmax():
    # lambda >> 1: every visited tile but the first of each split is skipped, so the output is
    # softmax attention over the keys of those first tiles only.
    q, k, v = make_qkv(1, 2, 2, 20, 100, 16, seed=5)
    res = skip_softmax_attention_reference(q, k, v, scale_factor=1e9, block_m=32, block_n=16, num_splits=3)
    per_split = kv_tiles_per_split(100, 16, 3)  # 3 tiles: splits start at keys 0, 48, 96
    assert res.tiles_total.sum() == 2 * 7 and res.tiles_skipped.sum() == 2 * (7 - 3)
    keys = [*range(0, 16), *range(48, 64), *range(96, 100)]
    assert per_split == 3
    expected = dense_attention(q, k[:, :, keys], v[:, :, keys], causal=False)
    torch.testing.assert_close(res.out, expected, atol=1e-12, rtol=0)


def test_reference_keeps_dtype_and_rejects_bad_input():
    q, k, v = make_qkv(1, 2, 1, 8, 8, 16, dtype=torch.float16)
    assert skip_softmax_attention_reference(q, k, v).out.dtype == torch.float16
    with pytest.raises(EdgeAttnError, match="multiple of key/value heads"):
        skip_softmax_attention_reference(q, k.expand(1, 3, 8, 16), v.expand(1, 3, 8, 16))
    with pytest.raises(EdgeAttnError, match="scale_factor"):
        skip_softmax_attention_reference(q, k, v, scale_factor=-1.0)
    with pytest.raises(EdgeAttnError, match="length is 0"):
        skip_softmax_attention_reference(q, k[:, :, :0], v[:, :, :0])


# --------------------------------------------------------------------------- kernels (interpreter)

DENSE_CASES = [  # lq, lkv, hq, hkv, causal, block_m, block_n
    (1, 1, 2, 2, False, 16, 16),
    (37, 37, 4, 2, False, 32, 16),
    (64, 64, 2, 2, True, 32, 32),
    (130, 200, 4, 2, True, 64, 32),
    (200, 130, 2, 1, True, 32, 32),  # Lq > Lkv: rows without keys
]


@pytest.mark.parametrize("lq,lkv,hq,hkv,causal,bm,bn", DENSE_CASES)
def test_kernel_dense_matches_reference(lq, lkv, hq, hkv, causal, bm, bn):
    q, k, v = make_qkv(1, hq, hkv, lq, lkv, 32, seed=lq, dtype=torch.float32)
    opts = dict(causal=causal, block_m=bm, block_n=bn)
    got = kernel(q, k, v, count_skips=True, **opts)
    ref = skip_softmax_attention_reference(q.double(), k.double(), v.double(), **opts)
    torch.testing.assert_close(got.out.double(), ref.out, atol=ATOL[torch.float32], rtol=0)
    assert torch.equal(got.tiles_total, ref.tiles_total)
    assert int(got.tiles_skipped.sum()) == 0


SKIP_CASES = [  # lq, lkv, hq, hkv, causal, block_m, block_n
    (100, 130, 4, 2, False, 32, 16),
    (130, 200, 4, 2, True, 32, 16),
    (48, 96, 2, 1, True, 16, 16),
]


@pytest.mark.parametrize("two_pass", [False, True], ids=["fused", "two-pass"])
@pytest.mark.parametrize("lq,lkv,hq,hkv,causal,bm,bn", SKIP_CASES)
def test_kernel_skips_the_tiles_the_reference_skips(lq, lkv, hq, hkv, causal, bm, bn, two_pass):
    """Thresholds between the reference's tile margins: the kernel skips exactly its tiles (the fused kernel,
    and the two-pass design whose votes pass decides them first), float32 IEEE dots: 2e-5."""
    from edgeattn.kernels.skip_softmax.ops import KernelConfig

    config = KernelConfig(4, 2, 1, two_pass=two_pass)
    q, k, v = make_qkv(1, hq, hkv, lq, lkv, 32, seed=lkv, dtype=torch.float32)
    q64, k64, v64 = q.double(), k.double(), v.double()
    opts = dict(causal=causal, block_m=bm, block_n=bn)
    cuts = thresholds(skip_margins(q64, k64, v64, **opts))
    assert len(cuts) >= 2
    skipped = []
    for ln_lambda in cuts:
        sf = lkv * math.exp(ln_lambda)
        got = kernel(q, k, v, scale_factor=sf, count_skips=True, config=config, **opts)
        ref = skip_softmax_attention_reference(q64, k64, v64, scale_factor=sf, **opts)
        assert torch.equal(got.tiles_skipped, ref.tiles_skipped)
        assert torch.equal(got.tiles_total, ref.tiles_total)
        torch.testing.assert_close(got.out.double(), ref.out, atol=ATOL[torch.float32], rtol=0)
        skipped.append(got.skip_ratio)
    assert skipped == sorted(skipped) and 0 < skipped[-1] < 1


@pytest.mark.parametrize("v_load", [0, 1, 2])
def test_kernel_skip_decisions_do_not_depend_on_where_v_is_read(v_load):
    from edgeattn.kernels.skip_softmax.ops import KernelConfig

    q, k, v = make_qkv(1, 2, 1, 40, 90, 32, seed=9, dtype=torch.float16)
    q64, k64, v64 = q.double(), k.double(), v.double()
    opts = dict(causal=True, block_m=16, block_n=16)
    (ln_lambda,) = thresholds(skip_margins(q64, k64, v64, **opts), quantiles=(0.6,))
    sf = 90 * math.exp(ln_lambda)
    got = kernel(q, k, v, scale_factor=sf, count_skips=True, config=KernelConfig(4, 2, v_load), **opts)
    ref = skip_softmax_attention_reference(q64, k64, v64, scale_factor=sf, **opts)
    assert torch.equal(got.tiles_skipped, ref.tiles_skipped) and int(ref.tiles_skipped.sum()) > 0
    torch.testing.assert_close(got.out.double(), ref.out, atol=ATOL[torch.float16], rtol=ATOL[torch.float16])


DECODE_CASES = [  # lq, lkv, hq, hkv, causal, num_splits
    (1, 200, 4, 1, True, 1),
    (1, 255, 4, 1, False, 4),
    (5, 200, 4, 2, True, 3),
    (16, 129, 2, 2, True, 5),
]


@pytest.mark.parametrize("lq,lkv,hq,hkv,causal,splits", DECODE_CASES)
def test_kernel_decode_split_merge(lq, lkv, hq, hkv, causal, splits):
    q, k, v = make_qkv(2, hq, hkv, lq, lkv, 32, seed=lkv + splits, dtype=torch.float32)
    q64, k64, v64 = q.double(), k.double(), v.double()
    opts = dict(causal=causal, block_m=64, block_n=16, num_splits=splits)
    cuts = [-math.inf, *thresholds(skip_margins(q64, k64, v64, **opts), quantiles=(0.5, 0.9))]
    for ln_lambda in cuts:
        sf = lkv * math.exp(ln_lambda)
        got = kernel(q, k, v, scale_factor=sf, count_skips=True, **opts)
        ref = skip_softmax_attention_reference(q64, k64, v64, scale_factor=sf, **opts)
        assert torch.equal(got.tiles_skipped, ref.tiles_skipped)
        assert torch.equal(got.tiles_total, ref.tiles_total)
        torch.testing.assert_close(got.out.double(), ref.out, atol=ATOL[torch.float32], rtol=0)


@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_kernel_head_sizes_and_half_precision(head_dim, dtype):
    q, k, v = make_qkv(1, 2, 1, 20, 40, head_dim, seed=head_dim, dtype=dtype)
    q64, k64, v64 = q.double(), k.double(), v.double()  # the rounded inputs, exactly
    for sf in (0.0, 1e9):  # dense; and lambda >> 1: only the first key tile of each query tile runs
        opts = dict(causal=True, block_m=16, block_n=16, scale_factor=sf)
        got = kernel(q, k, v, count_skips=True, **opts)
        ref = skip_softmax_attention_reference(q64, k64, v64, **opts)
        assert got.out.dtype == dtype
        torch.testing.assert_close(got.out.double(), ref.out, atol=ATOL[dtype], rtol=ATOL[dtype])
        assert torch.equal(got.tiles_skipped, ref.tiles_skipped)
    assert torch.equal(got.tiles_skipped, got.tiles_total - 1)  # one tile kept per query tile


def test_kernel_writes_every_output_element():
    # Poisoned output; causal with Lq > Lkv leaves rows without keys: they must be written as 0.
    q, k, v = make_qkv(1, 2, 2, 50, 20, 32, seed=11, dtype=torch.float16)
    out = torch.full_like(q, math.nan)
    got = kernel(q, k, v, causal=True, block_m=16, block_n=16, out=out)
    assert got.out is out and torch.isfinite(out).all()
    assert (out[:, :, :30] == 0).all()
    ref = skip_softmax_attention_reference(q.double(), k.double(), v.double(), causal=True, block_m=16, block_n=16)
    torch.testing.assert_close(out.double(), ref.out, atol=ATOL[torch.float16], rtol=ATOL[torch.float16])


def test_kernel_accepts_strided_inputs():
    q, k, v = make_qkv(2, 4, 2, 33, 47, 32, seed=2, dtype=torch.float32)
    # [B, L, H, D] storage viewed as [B, H, L, D] (the layout of a fused QKV projection)
    qs, ks, vs = (x.transpose(1, 2).contiguous().transpose(1, 2) for x in (q, k, v))
    assert not qs.is_contiguous()
    a = kernel(qs, ks, vs, causal=True, block_m=16, block_n=16)
    b = kernel(q, k, v, causal=True, block_m=16, block_n=16)
    torch.testing.assert_close(a.out, b.out, atol=0, rtol=0)
    assert a.tiles_skipped is None and torch.equal(a.tiles_total, b.tiles_total)


def test_kernel_refuses_what_it_cannot_run():
    q, k, v = make_qkv(1, 2, 2, 8, 8, 32, dtype=torch.float32)
    with pytest.raises(EdgeAttnError, match="head size"):
        kernel(q[..., :24], k[..., :24], v[..., :24])
    with pytest.raises(EdgeAttnError, match="block_n"):
        kernel(q, k, v, block_n=24)
    with pytest.raises(EdgeAttnError, match="one dtype"):
        kernel(q, k.half(), v)
    with pytest.raises(EdgeAttnError, match="out must be"):
        kernel(q, k, v, out=torch.empty(1))


def test_launch_settings():
    assert kernel_block_m(1, 128) == 16 and kernel_block_m(17, 128) == 32 and kernel_block_m(300, 128) == 128
    assert kernel_block_m(100, 64) == 64
    assert auto_num_splits(32, 32768, 64, 132) == 17  # 32 programs -> ~4 per SM on 132 SMs
    assert auto_num_splits(256, 32768, 64, 132) == 3
    assert auto_num_splits(1024, 32768, 64, 132) == 1
    assert auto_num_splits(4, 256, 64, 132) == 1  # 4 tiles: at least 4 per split
    assert default_config(128, 128, 64, decode=False).num_warps == 8
    assert default_config(128, 16, 64, decode=True).v_load == 1
    assert default_config(128, 128, 64, decode=False).v_load == 1  # measured faster (gpu_skip_ablation.py)


def test_gpu_benchmark_script_runs_every_section_in_the_interpreter(tmp_path):
    """benchmarks/gpu_attention.py gets one shot on a GPU machine: run all of its code paths here at
    toy sizes (``--cpu-smoke``; the timings mean nothing) and check the JSON it writes."""
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_attention.py"
    out = tmp_path / "bench.json"
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, str(script), "--cpu-smoke", "--out", str(out)], env=env,
                          capture_output=True, text=True, timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert {n: s["status"] for n, s in report["sections"].items()} == dict.fromkeys(
        ("env", "correctness", "prefill", "decode"), "ok"
    )
    assert all(r["pass"] for r in report["sections"]["correctness"]["results"])
    designs = {r["design"] for c in report["sections"]["correctness"]["results"] for r in c.get("thresholds", [])}
    assert designs == {"fused", "two-pass", "grouped"}  # each skip design against the float64 reference
    variants = {"prefill": {"dense", "skip-none", "skip~75%", "skip~75% two-pass", "skip~90% two-pass"},
                "decode": {"dense", "dense grouped", "skip~75%", "skip~75% grouped"}}
    for name in ("prefill", "decode"):
        rows = report["sections"][name]["results"]
        assert rows and not [r for r in rows if "error" in r or "skipped" in r]
        assert {r["variant"] for r in rows} >= variants[name]
    summary = report["summary"]  # one entry per target of the issue, each measured (toy sizes: L = 200, d = 64)
    names = {"prefill_skip~75%_d64_L200_vs_dense", "prefill_skip~90%_d64_L200_vs_dense",
             "prefill_skip_none_d64_L200_vs_dense", "prefill_dense_d64_L200_vs_sdpa",
             "decode_dense_B1_d64_L200_vs_sdpa", "decode_skip~75%_B1_d64_L200_vs_dense"}
    assert names <= set(summary)
    assert all(isinstance(summary[n]["value"], float) and {"target", "met", "design"} <= set(summary[n]) for n in names)


def test_gpu_skip_ablation_script_runs_in_the_interpreter(tmp_path):
    """benchmarks/gpu_skip_ablation.py also gets one shot on a GPU: its code paths at toy sizes."""
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_skip_ablation.py"
    out = tmp_path / "ablation.json"
    proc = subprocess.run([sys.executable, str(script), "--cpu-smoke", "--out", str(out)],
                          env=dict(os.environ, TRITON_INTERPRET="1"), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == 2 and not [r for r in rows if "error" in r or "skipped" in r]
    for row in rows:
        assert row["skip_none_ratio"] == 0.0  # nothing below the threshold
        assert row["skip_all_ratio"] >= row["skip75_ratio"] > 0.0  # toy size: 75 % is already every tile but the first
        assert {"dense_ms", "skip_none_ms", "skip_all_ms", "skip75_ms"} <= set(row)


@pytest.mark.parametrize("scale_factor,causal", [(0.0, False), (3.0, True)])
def test_kernel_key_bias_is_the_op_key_mask(scale_factor: float, causal: bool) -> None:
    """A key bias [B, Lkv] (a padding mask: -inf on hidden keys) gives the op reference's output with that
    mask, and the same skipped tiles (float32, IEEE dots: 1e-5)."""
    from edgeattn.kernels.skip_softmax.ops import skip_softmax_attention
    from edgeattn.ops.skip_softmax_attention.reference import skip_softmax_reference

    g = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(2, 4, 24, 16, generator=g), torch.randn(2, 2, 40, 16, generator=g), \
        torch.randn(2, 2, 40, 16, generator=g)
    keep = torch.ones(2, 40, dtype=torch.bool)
    keep[0, :5], keep[1, 30:] = False, False
    bias = torch.where(keep, 0.0, -math.inf)
    got = skip_softmax_attention(q, k, v, causal=causal, scale_factor=scale_factor, block_m=16, block_n=16,
                                 key_bias=bias, count_skips=True)
    want, ratio = skip_softmax_reference(q, k, v, bias[:, None, None, :], causal=2 if causal else 0,
                                         scale_factor=scale_factor, block_m=16, block_n=16)
    torch.testing.assert_close(got.out.double(), want.double(), atol=1e-5, rtol=1e-5)
    assert got.skip_ratio == pytest.approx(float(ratio), abs=1e-6)
    assert scale_factor == 0.0 or got.skip_ratio > 0  # with a scale factor, tiles really were skipped
    with pytest.raises(EdgeAttnError, match="key_bias must be a float tensor broadcastable"):
        skip_softmax_attention(q, k, v, key_bias=bias[:, :39])


# ------------------------------------------------------------- two-pass prefill and grouped decode

def test_two_pass_half_precision_key_bias_and_lambda_above_one():
    """fp16 with a padding key mask: the fused kernel's skip counts and output; with lambda >> 1 only the
    first tile of each query tile is kept (that is where the running max would otherwise move)."""
    from edgeattn.kernels.skip_softmax.ops import KernelConfig

    q, k, v = make_qkv(2, 4, 2, 40, 72, 64, seed=3, dtype=torch.float16)
    bias = torch.zeros(2, 72)
    bias[0, 60:], bias[1, :9] = -math.inf, -math.inf
    opts = dict(causal=True, block_m=16, block_n=16, key_bias=bias.half(), count_skips=True)
    for sf in (4.0, 1e9):
        fused = kernel(q, k, v, scale_factor=sf, **opts)
        two = kernel(q, k, v, scale_factor=sf, config=KernelConfig(4, 2, 1, two_pass=True), **opts)
        assert torch.equal(two.tiles_skipped, fused.tiles_skipped) and int(two.tiles_skipped.sum()) > 0
        torch.testing.assert_close(two.out.double(), fused.out.double(), atol=ATOL[torch.float16], rtol=0)
    assert torch.equal(two.tiles_skipped, two.tiles_total - 1)


@pytest.mark.parametrize("hq,hkv,splits,causal", [(8, 2, 1, True), (8, 2, 3, True), (6, 1, 4, False), (2, 2, 2, True)])
def test_grouped_decode_equals_the_reference(hq, hkv, splits, causal):
    """One-row decode with each K/V tile read once per GQA group: the reference's skip counts per head and
    its output, dense and at two thresholds, with splits merged (float32, IEEE dots: 2e-5)."""
    from edgeattn.kernels.skip_softmax.ops import KernelConfig

    q, k, v = make_qkv(2, hq, hkv, 1, 203, 32, seed=hq + splits, dtype=torch.float32)
    q64, k64, v64 = q.double(), k.double(), v.double()
    opts = dict(causal=causal, block_m=64, block_n=16, num_splits=splits)
    cuts = [-math.inf, *thresholds(skip_margins(q64, k64, v64, **opts), quantiles=(0.5, 0.9))]
    assert len(cuts) == 3
    for ln_lambda in cuts:
        sf = 203 * math.exp(ln_lambda)
        got = kernel(q, k, v, scale_factor=sf, count_skips=True, config=KernelConfig(4, 2, 1, grouped_decode=True),
                     **opts)  # fmt: skip
        ref = skip_softmax_attention_reference(q64, k64, v64, scale_factor=sf, **opts)
        assert torch.equal(got.tiles_skipped, ref.tiles_skipped)
        assert torch.equal(got.tiles_total, ref.tiles_total)
        torch.testing.assert_close(got.out.double(), ref.out, atol=ATOL[torch.float32], rtol=0)
    assert int(got.tiles_skipped.sum()) > 0


def test_grouped_decode_half_precision_with_key_bias():
    from edgeattn.kernels.skip_softmax.ops import KernelConfig

    q, k, v = make_qkv(2, 4, 1, 1, 100, 64, seed=5, dtype=torch.bfloat16)
    bias = torch.zeros(2, 100, dtype=torch.bfloat16)
    bias[1, 90:] = -math.inf
    opts = dict(causal=True, block_m=64, block_n=16, num_splits=2, key_bias=bias, count_skips=True, scale_factor=8.0)
    per_head = kernel(q, k, v, **opts)
    grouped = kernel(q, k, v, config=KernelConfig(4, 2, 1, grouped_decode=True), **opts)
    assert torch.equal(grouped.tiles_skipped, per_head.tiles_skipped) and int(grouped.tiles_skipped.sum()) > 0
    torch.testing.assert_close(grouped.out.double(), per_head.out.double(), atol=ATOL[torch.bfloat16], rtol=0)
