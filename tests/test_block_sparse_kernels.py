"""Block selection and block-sparse attention kernels (Triton interpreter on CPU) against the registry
references ``block_select_reference`` and ``block_sparse_attention_reference`` run in float64.

Selection must equal the reference exactly: the kernel scores in fp32 where the reference uses
float64, so the random inputs here have no decision within ~1e-6 of a boundary (fixed seeds; the
tests would show one), and exact ties (identical key blocks: equal probabilities in both) must be
broken the same way — forced blocks first, then by probability, equal probabilities to the lower
block index (the reference's stable sort).

Tolerances on attention outputs (max abs error; outputs are O(1) averages of N(0, 1) values):
  fp32 2e-5: the interpreter computes fp32 dots and exp2 (observed ~4e-7).
  fp16 2e-3 (also relative): the kernel rounds P to fp16 for P @ V and the output to fp16 (2^-11).
  bf16 1.6e-2 (also relative): the same two roundings at 2^-8.
"""

from __future__ import annotations

import importlib
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
from edgeattn.ops.block_sparse_attention.reference import block_sparse_attention_reference
from edgeattn.kernels.block_sparse import ops
from edgeattn.kernels.block_sparse.config import AttentionConfig, attention_config, select_config

select_ref = importlib.import_module("edgeattn.ops.block_select.reference")

ATOL = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def qkv(hq, hkv, lq, lkv, d=32, *, b=1, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, hq, lq, d, generator=g, dtype=torch.float64)
    k = torch.randn(b, hkv, lkv, d, generator=g, dtype=torch.float64)
    v = torch.randn(b, hkv, lkv, d, generator=g, dtype=torch.float64)
    # A per-position drift makes block means differ (pooled scores spread over a few nats).
    k = k + 0.6 * torch.sin(torch.arange(lkv, dtype=torch.float64) / 7.0)[:, None]
    return q.to(dtype), k.to(dtype), v.to(dtype)


def f64(*xs):
    return [x.double() for x in xs]


def check_list(blocks: ops.BlockList) -> None:
    """Each row: its kept blocks in ascending order, then -1; the count is their number."""
    mask = blocks.dense_mask()
    width = mask.shape[-1]
    assert torch.equal(blocks.counts.long(), mask.sum(-1))
    rows = zip(blocks.indices.reshape(-1, width), mask.reshape(-1, width), blocks.counts.reshape(-1).tolist())
    for row, kept, count in rows:
        assert row[:count].tolist() == torch.nonzero(kept).flatten().tolist()
        assert (row[count:] == -1).all()


# ---------------------------------------------------------------------------------- geometry


@pytest.mark.parametrize("lq,lkv,block,causal", [(100, 150, 16, 2), (100, 150, 16, 1), (37, 37, 16, 0), (1, 200, 64, 2)])
def test_geometry_and_budget_follow_the_reference(lq, lkv, block, causal):
    mine, ref = ops.block_geometry(lq, lkv, block, causal), select_ref.block_geometry(lq, lkv, block, causal)
    assert [getattr(mine, f) for f in ("offset", "first_block", "n_q_blocks", "n_kv_blocks", "front")] == [
        getattr(ref, f) for f in ("offset", "first_block", "n_q_blocks", "n_kv_blocks", "front")]
    for keep in (0.01, 0.1, 0.25, 0.3, 0.5, 1.0):
        for n in (1, 7, 10, 512, 1000):
            assert ops.budget_of(keep, n) == select_ref.budget_of(keep, n)


# --------------------------------------------------------------------------------- selection

SELECT_CASES = [  # hq, hkv, lq, lkv, attributes
    (4, 2, 130, 130, dict(causal=0, mode="topk", keep=0.3)),
    (4, 1, 100, 150, dict(causal=1, mode="topk", keep_blocks=3, local_blocks=2, sink_blocks=2, key_pool="max",
                          group_reduce="max")),
    (6, 2, 70, 150, dict(causal=2, mode="cumprob", cum_prob=0.5, key_pool="min", dense_last_rows=1)),  # group 3
    (6, 2, 150, 150, dict(causal=2, mode="threshold", threshold=0.05, group_reduce="max")),
    (2, 2, 100, 100, dict(causal=0, mode="cumprob", cum_prob=0.8, local_blocks=0, sink_blocks=0)),
    (4, 2, 1, 150, dict(causal=2, mode="topk", keep=0.2, dense_decode=0)),  # a decode step, selected
    (6, 2, 100, 150, dict(causal=2, mode="cumprob", cum_prob=0.6, query_pool="rows", key_pool="max")),
]


@pytest.mark.parametrize("hq,hkv,lq,lkv,attrs", SELECT_CASES)
def test_selection_equals_the_reference(hq, hkv, lq, lkv, attrs):
    q, k, _ = qkv(hq, hkv, lq, lkv, b=2, seed=lq + lkv + hq)
    blocks = ops.select_blocks(q, k, store_mask=True, block_size=16, **attrs)
    ref = select_ref.block_select_reference(*f64(q, k), block_size=16, **attrs)
    assert torch.equal(blocks.mask, ref)
    assert torch.equal(blocks.dense_mask(), ref)
    check_list(blocks)
    assert 0 < int(ref.sum()) < ref.numel()


def test_selection_edge_cases():
    q, k, _ = qkv(4, 2, 96, 96, seed=4)
    geo = select_ref.block_geometry(96, 96, 16, 2)
    available = select_ref.available_blocks(geo).expand(1, 2, -1, -1)
    # Every block kept (k equal to N): keep = 1, or a budget of nKB.
    for attrs in (dict(keep=1.0), dict(keep_blocks=geo.n_kv_blocks), dict(mode="cumprob", cum_prob=1.0)):
        got = ops.select_blocks(q, k, store_mask=True, causal=2, block_size=16, **attrs).mask
        assert torch.equal(got, available), attrs
    # Only the diagonal: a budget of one, which the forced diagonal fills.
    got = ops.select_blocks(q, k, store_mask=True, causal=2, block_size=16, keep_blocks=1, sink_blocks=0)
    assert torch.equal(got.mask, torch.eye(6, dtype=torch.bool).expand(1, 2, 6, 6))
    assert torch.equal(got.counts, torch.ones(1, 2, 6, dtype=torch.int32))
    # A dense decode step keeps every block.
    got = ops.select_blocks(q[:, :, -1:], k, store_mask=True, causal=2, block_size=16, keep=0.2)
    assert got.mask.all() and got.indices[0, 0, 0].tolist() == list(range(6))


def test_selection_breaks_ties_like_the_reference():
    # Key blocks 1..5 are copies of one block: equal pooled scores, so equal probabilities in fp32
    # and float64 alike; the budget cuts through them and the lower block indices must win.
    q, k, _ = qkv(2, 1, 128, 128, seed=6)
    k[:, :, 16:96] = k[:, :, 16:32].repeat(1, 1, 5, 1)
    for attrs in (dict(mode="topk", keep_blocks=3), dict(mode="cumprob", cum_prob=0.45), dict(mode="topk", keep=0.5)):
        got = ops.select_blocks(q, k, store_mask=True, causal=0, block_size=16, sink_blocks=0, **attrs)
        ref = select_ref.block_select_reference(*f64(q, k), causal=0, block_size=16, sink_blocks=0, **attrs)
        assert torch.equal(got.mask, ref), attrs
    probs = select_ref.block_probabilities(*f64(q, k), select_ref.block_geometry(128, 128, 16, 0), 0.0, "mean")
    assert (probs[..., 1:6] == probs[..., 1:2]).all()  # the tie is real


# --------------------------------------------------------------------------------- attention

ATTN_CASES = [  # hq, hkv, lq, lkv, attributes
    (4, 2, 100, 150, dict(causal=2, keep=0.3)),
    (2, 2, 130, 130, dict(causal=0, mode="cumprob", cum_prob=0.6, rectify=1)),
    (6, 2, 120, 120, dict(causal=1, mode="threshold", threshold=0.2, rectify=1, key_pool="max")),  # group 3
    (4, 2, 150, 150, dict(causal=2, keep_blocks=2, heads=(1,))),  # kv head 0 dense
    (4, 2, 100, 100, dict(causal=0, keep=0.3, query_pool="rows", rectify=1)),
    (4, 2, 1, 150, dict(causal=2, keep=0.3, dense_decode=0, rectify=1)),  # a selected decode step
    (4, 2, 100, 150, dict(causal=2, layout="window", window=37, sinks=5)),
    (2, 1, 90, 90, dict(causal=0, layout="window", window=20, sinks=0)),
]


@pytest.mark.parametrize("hq,hkv,lq,lkv,attrs", ATTN_CASES)
def test_attention_matches_the_reference(hq, hkv, lq, lkv, attrs):
    q, k, v = qkv(hq, hkv, lq, lkv, seed=hq * lq)
    got = ops.block_sparse_attention(q, k, v, block_size=16, **attrs)
    ref = block_sparse_attention_reference(*f64(q, k, v), block_size=16, **attrs)
    torch.testing.assert_close(got.double(), ref, atol=ATOL[torch.float32], rtol=0)
    if attrs.get("rectify"):  # the correction is not negligible here
        plain = block_sparse_attention_reference(*f64(q, k, v), block_size=16, **{**attrs, "rectify": 0})
        assert (plain - ref).abs().max() > 1e-2


def test_mask_layout_with_rectify_and_density():
    q, k, v = qkv(4, 2, 100, 100, seed=8)
    block_mask = torch.rand(1, 2, 7, 7, generator=torch.Generator().manual_seed(1)) < 0.4
    for rectify in (0, 1):
        got, blocks = ops.block_sparse_attention(q, k, v, None, block_mask, layout="mask", causal=1, block_size=16,
                                                 rectify=rectify, return_blocks=True)  # fmt: skip
        ref, density = block_sparse_attention_reference(*f64(q, k, v), None, block_mask, layout="mask", causal=1,
                                                        block_size=16, rectify=rectify, with_density=True)  # fmt: skip
        torch.testing.assert_close(got.double(), ref, atol=ATOL[torch.float32], rtol=0)
        assert blocks.density() == pytest.approx(float(density), abs=1e-6)
    _, blocks = ops.block_sparse_attention(q, k, v, block_size=16, causal=2, keep=0.4, return_blocks=True)
    _, density = block_sparse_attention_reference(*f64(q, k, v), block_size=16, causal=2, keep=0.4, with_density=True)
    assert blocks.density() == pytest.approx(float(density), abs=1e-6)


@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_attention_head_sizes_and_half_precision(head_dim, dtype):
    q, k, v = qkv(4, 2, 64, 80, head_dim, seed=head_dim, dtype=dtype)
    for attrs in (dict(causal=2, keep=0.5, rectify=1), dict(causal=2, layout="window", window=20, sinks=3)):
        got = ops.block_sparse_attention(q, k, v, block_size=16, **attrs)
        ref = block_sparse_attention_reference(*f64(q, k, v), block_size=16, **attrs)
        assert got.dtype == dtype
        torch.testing.assert_close(got.double(), ref, atol=ATOL[dtype], rtol=ATOL[dtype])


def test_attention_over_a_user_block_list():
    """Any blocks in any order, unavailable ones included; entries past the count are never read."""
    q, k, v = qkv(4, 2, 64, 64, seed=10)
    geo = ops.block_geometry(64, 64, 16, 1)
    rows = {(0, 0): [2, 0], (0, 1): [1], (0, 2): [], (0, 3): [3, 0, 1], (1, 0): [0, 3], (1, 1): [1, 0],
            (1, 2): [0, 1, 2, 3], (1, 3): [2]}  # fmt: skip
    idx = torch.full((1, 2, 4, 4), -1, dtype=torch.int32)
    cnt = torch.zeros(1, 2, 4, dtype=torch.int32)
    mask = torch.zeros(1, 2, 4, 4, dtype=torch.bool)
    for (h, t), kept in rows.items():
        idx[0, h, t, : len(kept)] = torch.tensor(kept, dtype=torch.int32)
        idx[0, h, t, len(kept):] = torch.tensor([j for j in range(4) if j not in kept], dtype=torch.int32)  # poison
        cnt[0, h, t] = len(kept)
        mask[0, h, t, kept] = True
    out = torch.full_like(q, math.nan)
    got = ops.attend_blocks(q, k, v, ops.BlockList(idx, cnt, geo), out=out)
    ref = block_sparse_attention_reference(*f64(q, k, v), None, mask, layout="mask", causal=1, block_size=16)
    assert got is out and torch.isfinite(out).all()
    torch.testing.assert_close(got.double(), ref, atol=ATOL[torch.float32], rtol=0)
    assert (got[0, :2, 32:48] == 0).all()  # query block 2 of kv head 0 has no block: its rows are 0


def test_three_dim_layout_and_explicit_config():
    q, k, v = qkv(4, 2, 70, 70, seed=12)
    want = ops.block_sparse_attention(q, k, v, causal=2, block_size=16, keep=0.5)
    q3, k3, v3 = (x.transpose(1, 2).reshape(1, 70, -1) for x in (q, k, v))
    got = ops.block_sparse_attention(q3, k3, v3, causal=2, block_size=16, keep=0.5, q_num_heads=4, kv_num_heads=2)
    torch.testing.assert_close(got, want.transpose(1, 2).reshape(1, 70, -1), atol=0, rtol=0)
    cfg = AttentionConfig(heads=1, block_n=16, num_warps=4, num_stages=1)
    one_head = ops.block_sparse_attention(q, k, v, causal=2, block_size=16, keep=0.5, config=cfg)
    torch.testing.assert_close(one_head, want, atol=1e-6, rtol=0)


def test_refusals():
    q, k, v = qkv(4, 2, 32, 32)
    with pytest.raises(EdgeAttnError, match="token mask"):
        ops.block_sparse_attention(q, k, v, torch.zeros(32, 32))
    with pytest.raises(EdgeAttnError, match="head size"):
        ops.block_sparse_attention(q[..., :24], k[..., :24], v[..., :24])
    with pytest.raises(EdgeAttnError, match="block_size"):
        ops.block_sparse_attention(q, k, v, block_size=24)
    with pytest.raises(EdgeAttnError, match="needs block_mask"):
        ops.block_sparse_attention(q, k, v, layout="mask")
    with pytest.raises(EdgeAttnError, match="rectify needs v"):
        ops.select_blocks(q, k, rectify=True)
    with pytest.raises(EdgeAttnError, match="unknown attributes"):
        ops.block_sparse_attention(q, k, v, window_size=3)
    with pytest.raises(EdgeAttnError, match="does not fit"):
        ops.block_sparse_attention(q, k, v, block_size=16, config=AttentionConfig(heads=4, block_n=16, num_warps=4,
                                                                                     num_stages=1))  # fmt: skip
    blocks = ops.select_blocks(q, k, block_size=16)
    with pytest.raises(EdgeAttnError, match="made for"):
        ops.attend_blocks(q[:, :, :16], k, v, blocks)
    with pytest.raises(EdgeAttnError, match="more queries than keys"):
        ops.select_blocks(q, k[:, :, :16], causal=2, block_size=16)


def test_launch_settings():
    assert attention_config(128, 64, 4) == AttentionConfig(heads=2, block_n=64, num_warps=8, num_stages=3)
    assert attention_config(128, 64, 3).heads == 1 and attention_config(64, 16, 8).heads == 8
    assert attention_config(128, 128, 4) == AttentionConfig(heads=1, block_n=64, num_warps=8, num_stages=3)
    assert attention_config(128, 64, 4, arch=89).num_stages == 2
    cfg = select_config(512, 512, 4)
    assert (cfg.bt, cfg.group_p2, cfg.nkb_p2, cfg.num_warps) == (4, 4, 512, 4)
    assert select_config(4096, 4096, 8).num_warps == 16 and select_config(8192, 8192, 8) is None


def test_gpu_benchmark_script_sparse_sections_run_in_the_interpreter(tmp_path):
    """benchmarks/gpu_attention.py's block-sparse and token sections at toy sizes (``--cpu-smoke``):
    every code path runs and the JSON has their rows; timings mean nothing here."""
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_attention.py"
    out = tmp_path / "bench.json"
    sections = ["sparse_correctness", "block_sparse", "token_pruning"]
    args = [sys.executable, str(script), "--cpu-smoke", "--out", str(out), "--sections", *sections]
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert {n: s["status"] for n, s in report["sections"].items()} == dict.fromkeys(["env", *sections], "ok")
    assert all(r["pass"] for r in report["sections"]["sparse_correctness"]["results"])
    rows = report["sections"]["block_sparse"]["results"]
    assert not [r for r in rows if "error" in r or "skipped" in r]
    assert {r["variant"] for r in rows} >= {"sdpa", "density~50%", "density~25%", "density~10%", "density~100%",
                                            "density~10% rectify"}  # fmt: skip
    tokens = report["sections"]["token_pruning"]["results"]
    assert len(tokens) == 4 and all("ms" in r for r in tokens)
    assert tokens[2]["indices_equal_torch"]
    assert "block_sparse_10%_longest_speedup_vs_sdpa" in report["summary"]
