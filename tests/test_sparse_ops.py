"""Sparse attention ops: function bodies against the references, the references against brute-force
loops written here, and every op at zero sparsity against dense attention.

Tolerance: float32 inputs, relative error max|a - b| / max|b| <= 1e-5 (float32 rounding of sums of
<= 100 terms is ~1e-6 of the largest term; references compute in float64)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeattn.errors import EdgeAttnError
from edgeattn.ops.attention.reference import attention_reference
from edgeattn.ops.registry import get_op
from tests.models.sparse_graphs import full_attrs, rel_err, run_body

TOL = 1e-5
SKIP = get_op("SkipSoftmaxAttention")
SELECT = get_op("BlockSelect")
SPARSE = get_op("BlockSparseAttention")


def _qkv(rng, batch=2, q_heads=4, kv_heads=2, q_len=37, kv_len=37, head=8, scale=1.0):
    q = (rng.standard_normal((batch, q_heads, q_len, head)) * scale).astype(np.float32)
    k = (rng.standard_normal((batch, kv_heads, kv_len, head)) * scale).astype(np.float32)
    v = rng.standard_normal((batch, kv_heads, kv_len, head)).astype(np.float32)
    return q, k, v


def _dense(q, k, v, mask=None, causal=0):
    t = lambda x: None if x is None else torch.from_numpy(x)  # noqa: E731
    return attention_reference(t(q), t(k), t(v), t(mask), causal=causal, compute_dtype=torch.float64).numpy()


def _ref(spec, q, k, v, mask=None, **attrs):
    t = lambda x: None if x is None else torch.from_numpy(x)  # noqa: E731
    return spec.reference(t(q), t(k), t(v), t(mask), **attrs)


# -- zero sparsity is dense attention -------------------------------------------------------------------

CASES = [(0, 37, 37), (2, 37, 37), (2, 21, 50), (2, 1, 50)]  # (causal, Lq, Lkv): plain, causal, KV cache, decode


@pytest.mark.parametrize("causal,q_len,kv_len", CASES)
def test_every_op_at_zero_sparsity_is_dense(causal, q_len, kv_len):
    rng = np.random.default_rng(causal + q_len)
    q, k, v = _qkv(rng, q_len=q_len, kv_len=kv_len)
    mask = np.ones((2, 1, 1, kv_len), bool)
    mask[1, 0, 0, :3] = False
    dense = _dense(q, k, v, mask, causal)
    ops = [
        (SKIP, dict(scale_factor=0.0, block_m=16, block_n=8)),
        (SPARSE, dict(layout="select", keep=1.0, block_size=8)),
        (SPARSE, dict(layout="window", window=kv_len + q_len, sinks=0, block_size=8)),
    ]
    for spec, extra in ops:
        attrs = full_attrs(spec, causal=causal, **extra)
        (body,) = run_body(spec, [q, k, v, mask], attrs)
        assert rel_err(body, dense) <= TOL, (spec.name, extra)
        reference = _ref(spec, q, k, v, mask, **attrs)
        reference = reference[0] if isinstance(reference, tuple) else reference
        assert rel_err(reference.numpy(), dense) <= TOL, (spec.name, extra)


# -- brute force ------------------------------------------------------------------------------------------


def _brute_selection(q, k, block, causal, keep, local, sinks):
    """Loops: mean-pooled blocks, per-head softmax over available blocks, group mean, topk with forced."""
    batch, q_heads, q_len, _ = q.shape
    kv_heads, kv_len = k.shape[1], k.shape[2]
    group, offset = q_heads // kv_heads, (kv_len - q_len if causal == 2 else 0)
    first = offset // block
    n_q = (offset + q_len - 1) // block - first + 1
    n_kv = -(-kv_len // block)
    budget = max(1, math.ceil(np.float32(keep) * np.float32(n_kv) - 1e-4))
    chosen = np.zeros((batch, kv_heads, n_q, n_kv), bool)
    for b in range(batch):
        for kvh in range(kv_heads):
            for t in range(n_q):
                T = first + t
                rows = [i for i in range(q_len) if (offset + i) // block == T]
                avail = [j for j in range(n_kv) if not causal or j <= T]
                probs = np.zeros(n_kv)
                for h in range(kvh * group, (kvh + 1) * group):
                    qbar = q[b, h, rows].astype(np.float64).mean(0)
                    s = {j: qbar @ k[b, kvh, j * block:(j + 1) * block].astype(np.float64).mean(0) / math.sqrt(q.shape[3])
                         for j in avail}
                    top = max(s.values())
                    z = sum(math.exp(x - top) for x in s.values())
                    for j in avail:
                        probs[j] += math.exp(s[j] - top) / z / group
                forced = {j for j in avail if (T - local < j <= T if causal else abs(j - T) < local) or j < sinks}
                others = sorted((j for j in avail if j not in forced), key=lambda j: (-probs[j], j))
                picked = forced | set(others[: max(0, budget - len(forced))])
                chosen[b, kvh, t, sorted(picked)] = True
    return chosen, first, offset


def _masked_softmax(q, k, v, visible):
    """Loops over rows: softmax(q·k/sqrt(d)) over the visible keys; no visible key gives zeros."""
    batch, q_heads, q_len, head = q.shape
    group = q_heads // k.shape[1]
    out = np.zeros((batch, q_heads, q_len, v.shape[3]))
    for b in range(batch):
        for h in range(q_heads):
            for i in range(q_len):
                keys = np.flatnonzero(visible[b, h, i])
                if not len(keys):
                    continue
                s = k[b, h // group, keys].astype(np.float64) @ q[b, h, i].astype(np.float64) / math.sqrt(head)
                p = np.exp(s - s.max())
                out[b, h, i] = (p / p.sum()) @ v[b, h // group, keys]
    return out


@pytest.mark.parametrize("keep", [0.2, 0.5])
@pytest.mark.parametrize("causal,q_len,kv_len", [(0, 30, 30), (2, 30, 30), (2, 13, 41)])
def test_block_sparse_against_brute_force(keep, causal, q_len, kv_len):
    rng = np.random.default_rng(7)
    q, k, v = _qkv(rng, q_len=q_len, kv_len=kv_len, scale=1.5)
    block, local, sinks = 8, 1, 1
    chosen, first, offset = _brute_selection(q, k, block, causal, keep, local, sinks)
    attrs = full_attrs(SELECT, causal=causal, block_size=block, keep=keep)
    (selected,) = run_body(SELECT, [q, k], attrs)
    assert np.array_equal(selected, chosen)
    assert np.array_equal(SELECT.reference(torch.from_numpy(q), torch.from_numpy(k), **attrs).numpy(), chosen)
    visible = np.zeros((2, 4, q_len, kv_len), bool)
    for h in range(4):
        for i in range(q_len):
            for j in range(kv_len):
                in_block = chosen[:, h // 2, (offset + i) // block - first, j // block]
                visible[:, h, i, j] = in_block & (not causal or j <= offset + i)
    expected = _masked_softmax(q, k, v, visible)
    attrs = full_attrs(SPARSE, causal=causal, block_size=block, keep=keep)
    body, density = run_body(SPARSE, [q, k, v], attrs, outputs=2)
    assert rel_err(body, expected) <= TOL
    allowed = np.ones_like(visible) if not causal else np.arange(kv_len)[None, :] <= offset + np.arange(q_len)[:, None]
    assert abs(float(density) - visible.sum() / np.broadcast_to(allowed, visible.shape).sum()) < 1e-6
    assert rel_err(_ref(SPARSE, q, k, v, **attrs).numpy(), expected) <= TOL


@pytest.mark.parametrize("window,sinks", [(5, 0), (9, 3), (16, 2)])
@pytest.mark.parametrize("causal,q_len,kv_len", [(0, 30, 30), (2, 30, 30), (2, 7, 33)])
def test_window_against_brute_force(window, sinks, causal, q_len, kv_len):
    rng = np.random.default_rng(window)
    q, k, v = _qkv(rng, q_len=q_len, kv_len=kv_len)
    offset = kv_len - q_len if causal == 2 else 0
    pos = offset + np.arange(q_len)[:, None]
    keys = np.arange(kv_len)[None, :]
    near = (keys > pos - window) & (keys <= pos) if causal else np.abs(keys - pos) < window
    visible = np.broadcast_to(near | ((keys < sinks) & ((keys <= pos) if causal else True)), (2, 4, q_len, kv_len))
    attrs = full_attrs(SPARSE, causal=causal, layout="window", window=window, sinks=sinks, block_size=8)
    (body,) = run_body(SPARSE, [q, k, v], attrs)
    assert rel_err(body, _masked_softmax(q, k, v, visible)) <= TOL


@pytest.mark.parametrize("causal,q_len,kv_len", [(2, 30, 30), (2, 7, 33)])
def test_window_read_from_its_input_equals_the_attribute(causal, q_len, kv_len):
    """The tunable window input (what calibration feeds) overrides the attribute; the fast lowering
    leaves such a node to its body, as for keep."""
    from tests.models.sparse_graphs import run_fast

    rng = np.random.default_rng(3)
    q, k, v = _qkv(rng, q_len=q_len, kv_len=kv_len)
    attrs = full_attrs(SPARSE, causal=causal, layout="window", sinks=2, block_size=8)
    (expected, expected_density) = run_body(SPARSE, [q, k, v], {**attrs, "window": 9}, outputs=2)
    fed = [q, k, v, None, None, None, None, np.asarray(9, np.int64)]
    (body, density) = run_body(SPARSE, fed, {**attrs, "window": 256}, outputs=2)
    assert rel_err(body, expected) <= TOL and float(density) == pytest.approx(float(expected_density))
    assert float(density) < 1.0
    (fast,), report = run_fast(SPARSE, fed, {**attrs, "window": 256})
    assert report[0].lowering == "function" and "graph input" in report[0].reason
    assert rel_err(fast, expected) <= TOL


def _skip_loop(q, k, v, mask, causal, scale_factor, block_m, block_n, splits):
    """A direct loop of the BLASST rule: per (batch, head, query tile) the key tiles in order, a
    running max per row, skip when every row's tile max is below running max + ln λ."""
    batch, q_heads, q_len, head = q.shape
    kv_len, group = k.shape[2], q_heads // k.shape[1]
    offset = kv_len - q_len if causal else 0
    log_lambda = math.log(scale_factor / kv_len) if scale_factor > 0 else -math.inf
    n_kv_tiles = -(-kv_len // block_n)
    per_split = max(1, -(-n_kv_tiles // splits))
    out = np.zeros((batch, q_heads, q_len, v.shape[3]))
    skipped = total = 0
    for b in range(batch):
        for h in range(q_heads):
            s_all = (q[b, h].astype(np.float64) @ k[b, h // group].T.astype(np.float64)) / math.sqrt(head)
            valid = np.broadcast_to(mask[b, 0, 0], s_all.shape).copy()
            if causal:
                valid &= np.arange(kv_len)[None, :] <= offset + np.arange(q_len)[:, None]
            s_all = np.where(valid, s_all, -np.inf)
            for t0 in range(0, q_len, block_m):
                rows = range(t0, min(t0 + block_m, q_len))
                kept = np.zeros(kv_len, bool)
                running = {r: -np.inf for r in rows}
                for j in range(n_kv_tiles):
                    cols = range(j * block_n, min((j + 1) * block_n, kv_len))
                    if causal and j * block_n > offset + rows[-1]:
                        continue  # not visited
                    total += 1
                    if j % per_split == 0:
                        running = {r: -np.inf for r in rows}
                    tile = {r: max(s_all[r, c] for c in cols) for r in rows}
                    agree = all(tile[r] == -np.inf or (running[r] > -np.inf and tile[r] - running[r] < log_lambda)
                                for r in rows)
                    if j % per_split != 0 and agree:
                        skipped += 1
                        continue
                    kept[list(cols)] = True
                    running = {r: max(running[r], tile[r]) for r in rows}
                for r in rows:
                    s = np.where(kept, s_all[r], -np.inf)
                    if np.isfinite(s).any():
                        p = np.exp(s - s.max())
                        out[b, h, r] = (p / p.sum()) @ v[b, h // group]
    return out, skipped / max(total, 1)


@pytest.mark.parametrize("scale_factor", [0.5, 8.0, 300.0])
@pytest.mark.parametrize("causal,q_len,kv_len,splits", [(0, 40, 40, 1), (2, 40, 40, 2), (2, 9, 57, 1)])
def test_skip_softmax_against_a_direct_loop(scale_factor, causal, q_len, kv_len, splits):
    rng = np.random.default_rng(3)
    q, k, v = _qkv(rng, q_len=q_len, kv_len=kv_len, scale=2.0)
    mask = np.ones((2, 1, 1, kv_len), bool)
    mask[0, 0, 0, 5:9] = False
    expected, ratio = _skip_loop(q, k, v, mask, causal, scale_factor, 16, 8, splits)
    attrs = full_attrs(SKIP, causal=causal, scale_factor=scale_factor, block_m=16, block_n=8, num_splits=splits)
    body, body_ratio = run_body(SKIP, [q, k, v, mask], attrs, outputs=2)
    assert rel_err(body, expected) <= TOL
    assert abs(float(body_ratio) - ratio) < 1e-6
    reference, reference_ratio = _ref(SKIP, q, k, v, mask, **attrs)
    assert rel_err(reference.numpy(), expected) <= TOL and abs(float(reference_ratio) - ratio) < 1e-6


def test_skip_softmax_reference_refuses_row_masks():
    rng = np.random.default_rng(0)
    q, k, v = _qkv(rng)
    with pytest.raises(EdgeAttnError, match="key masks"):
        _ref(SKIP, q, k, v, np.ones((2, 1, 37, 37), bool), scale_factor=1.0)


@settings(max_examples=6, deadline=None)
@given(kv_heads=st.integers(1, 2), group=st.integers(1, 3), q_len=st.integers(1, 40), past=st.integers(0, 20),
       block=st.sampled_from([4, 8, 16]), keep=st.floats(0.1, 1.0), causal=st.sampled_from([0, 2]),
       mode=st.sampled_from(["topk", "threshold", "cumprob"]), rectify=st.sampled_from([0, 1]))
def test_block_sparse_body_matches_reference(kv_heads, group, q_len, past, block, keep, causal, mode, rectify):
    rng = np.random.default_rng(q_len * 31 + past)
    q, k, v = _qkv(rng, 1, kv_heads * group, kv_heads, q_len, q_len + past, 8, 1.5)
    attrs = full_attrs(SPARSE, causal=causal, block_size=block, keep=keep, mode=mode, threshold=0.05,
                       cum_prob=0.8, rectify=rectify, query_pool="rows" if rectify else "mean")
    (body,) = run_body(SPARSE, [q, k, v], attrs)
    assert rel_err(body, _ref(SPARSE, q, k, v, **attrs).numpy()) <= TOL


def test_block_select_heads_and_layouts_on_3d_inputs():
    """3-D [B, S, H·d] layouts split heads as edgeattn.Attention does; `heads` keeps the others dense."""
    rng = np.random.default_rng(5)
    q, k, v = _qkv(rng, q_len=24, kv_len=24)
    as3d = lambda x: x.transpose(0, 2, 1, 3).reshape(x.shape[0], x.shape[2], -1)  # noqa: E731
    attrs = full_attrs(SPARSE, causal=2, block_size=8, keep=0.3, q_num_heads=4, kv_num_heads=2, heads=(1,))
    (body,) = run_body(SPARSE, [as3d(q), as3d(k), as3d(v)], attrs)
    reference = _ref(SPARSE, q, k, v, **{**attrs, "q_num_heads": 0, "kv_num_heads": 0}).numpy()
    assert rel_err(body, as3d(reference)) <= TOL
    dense = _dense(q, k, v, causal=2)
    assert rel_err(reference[:, :2], dense[:, :2]) <= TOL  # key/value head 0 (query heads 0-1) is dense


@pytest.mark.parametrize("batch,kv_heads,group,length,block", [(1, 2, 2, 128, 16), (2, 1, 3, 96, 32), (1, 3, 3, 64, 16)])
def test_ms_sparse_attention_matches_the_function_body(batch, kv_heads, group, length, block):
    """onnxruntime's com.microsoft.SparseAttention (the alternative the gather lowering is measured
    against in benchmarks/ms_sparse_attention.py) computes what BlockSparseAttention's mask layout
    means: the listed causal blocks, the causal rule inside the diagonal block."""
    from benchmarks.ms_sparse_attention import MsSparseAttention, causal_layout

    rng = np.random.default_rng(length + block)
    q, k, v = _qkv(rng, batch, kv_heads * group, kv_heads, length, length, 16)
    layout = causal_layout(length // block, 0.3, seed=block)
    assert not layout.all(axis=None) and (np.tril(layout) == layout).all()
    got = MsSparseAttention(kv_heads * group, kv_heads, block, layout, scale=0.25)(q, k, v)
    attrs = full_attrs(SPARSE, layout="mask", causal=1, block_size=block, scale=0.25)
    (body,) = run_body(SPARSE, [q, k, v, None, np.broadcast_to(layout, (batch, 1, *layout.shape)).copy()], attrs)
    assert rel_err(got, body) <= TOL
    assert rel_err(got, _dense(q, k, v, causal=1)) > 1e-2  # blocks were left out
