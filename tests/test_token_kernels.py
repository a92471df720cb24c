"""Token scoring and selection kernels (Triton interpreter on CPU) against the registry references
``token_score_reference`` (float64) and ``token_select_reference``.

Scores: relative max error 1e-5 for fp32 inputs (fp32 softmax against float64; observed ~3e-7) and
1e-4 for fp16/bf16 inputs (the reference sees the same rounded inputs; the kernel multiplies them
exactly in fp32 on tensor cores, observed ~3e-7; bf16 runs as fp32 in the interpreter).
Selection: indices and gathered tokens must be equal. Both sides order by value with ties to the
lower position (the reference's stable sort, the kernels' position bits), so ties are tested for
exact equality too. HoloV's chunk quotas can only differ where ``k·c/Σc + 0.001`` falls within
~1e-6 of an integer (fp32 similarity variances against the reference's): the fixed inputs here do
not, and the variance itself is checked against float64 at 1e-5.
"""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"  # also set by conftest.py; Triton reads it at first import

import pytest
import torch

from edgeattn.errors import EdgeAttnError
from edgeattn.ops.token_nodes import DUPLICATE_SNAP
from edgeattn.kernels.tokens import ops
from edgeattn.kernels.tokens import selection as kernels
from edgeattn.ops.token_score.reference import token_score_reference
from edgeattn.ops.token_select.reference import chunk_ids, token_select_reference

RTOL = {torch.float32: 1e-5, torch.float16: 1e-4, torch.bfloat16: 1e-4}


def rel_max(got, want):
    return float((got.double() - want.double()).abs().max() / want.double().abs().max())


def gen(seed):
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------------- scores

SCORE_CASES = [  # source, head_reduce, dtype, hq, hkv, seq, three_dim
    ("cls", "mean", torch.float32, 4, 2, 70, False),
    ("cls", "max", torch.float16, 4, 4, 45, True),
    ("mean_received", "mean", torch.bfloat16, 4, 1, 50, False),
    ("mean_received", "max", torch.float32, 2, 2, 90, True),
]


@pytest.mark.parametrize("source,reduce,dtype,hq,hkv,seq,three_dim", SCORE_CASES)
def test_scores_from_q_and_k_match_the_reference(source, reduce, dtype, hq, hkv, seq, three_dim):
    g = gen(seq)
    q = torch.randn(2, hq, seq, 32, generator=g).to(dtype)
    k = (torch.randn(2, hkv, seq, 32, generator=g) * 1.5).to(dtype)
    attrs = dict(source=source, head_reduce=reduce, query=1 if source == "cls" else 0, skip=2)
    if three_dim:
        q, k = q.transpose(1, 2).reshape(2, seq, -1), k.transpose(1, 2).reshape(2, seq, -1)
        attrs |= dict(q_num_heads=hq, kv_num_heads=hkv)
    got = ops.token_scores(q, k, **attrs)
    want = token_score_reference(q, k, **attrs, compute_dtype=torch.float64)
    assert got.dtype == torch.float32 and got.shape == (2, seq - 2)
    assert rel_max(got, want) <= RTOL[dtype]


@pytest.mark.parametrize("source", ["cls", "mean_received"])
def test_scores_from_probabilities_with_debias_weights_and_valid(source):
    g = gen(3)
    probs = torch.softmax(torch.randn(2, 3, 40, 40, generator=g) * 2, -1)
    weights = torch.rand(37, generator=g) + 0.1
    valid = torch.rand(2, 37, generator=g) > 0.3
    got = ops.token_scores(probs, None, weights, valid, source=source, query=2, skip=3)
    want = token_score_reference(probs, None, None, weights, valid, source=source, query=2, skip=3,
                                 compute_dtype=torch.float64)  # fmt: skip
    assert rel_max(got, want) <= 1e-6
    assert (got[~valid] == 0).all()


# ------------------------------------------------------------------------------------- top-k


def scores_with_ties(n=100, seed=0):
    s = torch.randn(2, n, generator=gen(seed))
    s[0, 10:30] = 0.5  # a run of equal scores that the budget cuts through
    s[0, 40], s[0, 41] = 0.0, -0.0  # +0 and -0 compare equal
    s[1, :] = torch.round(s[1] * 2) / 2  # few distinct values: ties everywhere
    return s


@pytest.mark.parametrize("k", [1, 7, 25, 99, 100])
def test_topk_returns_the_references_indices_and_tokens(k):
    s = scores_with_ties()
    feats = torch.randn(2, 101, 24, generator=gen(1)).half()
    for keep_prefix in (0, 1):
        got_sel, got_idx = ops.token_select(s, feats, k=k, prefix=1, keep_prefix=keep_prefix)
        ref_sel, ref_idx = token_select_reference(s, feats, k=k, prefix=1, keep_prefix=keep_prefix)
        assert torch.equal(got_idx, ref_idx) and torch.equal(got_sel, ref_sel)
    assert got_idx.dtype == torch.int64 and (got_idx.diff(dim=1) > 0).all()


def test_topk_with_a_runtime_budget_and_negative_scores():
    s = -torch.rand(3, 50, generator=gen(2)) - 1.0
    feats = torch.randn(3, 50, 8, generator=gen(3))
    got = ops.token_select(s, feats, torch.tensor(9))
    ref = token_select_reference(s, feats, torch.tensor(9))
    assert torch.equal(got[1], ref[1]) and torch.equal(got[0], ref[0])


# ---------------------------------------------------------------------------------- regions


def holov_variance(z, regions):
    """The reference's similarity variance (token_select.reference.select_regions), in float64."""
    n = z.shape[0]
    cid = torch.tensor(chunk_ids(n, regions))
    zn = torch.nn.functional.normalize(z.double(), dim=-1)
    cos = zn @ zn.T
    cos = torch.where(cos > 1 - DUPLICATE_SNAP, torch.ones_like(cos), cos)
    others = (cid[:, None] == cid[None, :]) & ~torch.eye(n, dtype=torch.bool)
    count = others.sum(1).double()
    mean = (cos * others).sum(1) / count.clamp_min(1)
    return (((cos - mean[:, None]) * others) ** 2).sum(1) / (count - 1).clamp_min(1)


def test_chunk_variance_and_ranks():
    keys = torch.randn(2, 70, 48, generator=gen(4)).half()
    keys[0, 5] = keys[0, 6]  # a duplicate: cosine exactly 1
    scores = torch.rand(2, 70, generator=gen(5))
    scores[1, 10:20] = 0.25  # ties inside a chunk: lower position first
    var, rank = ops.chunk_variance(scores, keys, 16)
    for b in range(2):
        torch.testing.assert_close(var[b].double(), holov_variance(keys[b].float(), 16), atol=1e-6, rtol=1e-5)
        cid = torch.tensor(chunk_ids(70, 16))
        for p in range(16):
            members = torch.nonzero(cid == p).flatten()
            order = torch.sort(scores[b, members], descending=True, stable=True).indices
            assert rank[b, members[order]].tolist() == list(range(len(members)))


REGION_CASES = [  # n, regions, k, scores
    (100, 16, 11, "attention"),  # 100 = 6·16 + 4: the first 4 chunks are longer
    (100, 16, 64, "attention"),
    (100, 16, 100, "attention"),  # k = N
    (12, 16, 5, "attention"),  # more regions than tokens
    (40, 2, 5, "signed"),  # a negative chunk weight: more quota places than k
    (60, 4, 20, "ties"),
]


@pytest.mark.parametrize("n,regions,k,kind", REGION_CASES)
def test_regions_returns_the_references_indices_and_tokens(n, regions, k, kind):
    g = gen(n + k)
    if kind == "signed":
        s = torch.cat([torch.full((2, n // 2), 1.0), torch.full((2, n - n // 2), -0.9)], 1)
        s = s + 0.01 * torch.rand(2, n, generator=g)
    elif kind == "ties":
        s = torch.round(torch.rand(2, n, generator=g) * 4) / 400
    else:
        s = torch.softmax(torch.randn(2, n, generator=g) * 2, -1)
    feats = torch.randn(2, n + 1, 32, generator=g)
    feats[:, 3] = feats[:, 4]  # duplicated tokens
    got_sel, got_idx = ops.token_select(s, feats, k=k, mode="regions", regions=regions, prefix=1)
    ref_sel, ref_idx = token_select_reference(s, feats, k=k, mode="regions", regions=regions, prefix=1)
    assert torch.equal(got_idx, ref_idx)
    assert torch.equal(got_sel, ref_sel)


# --------------------------------------------------------------------------------- refusals


def test_refusals():
    s = torch.rand(1, 10)
    feats = torch.randn(1, 10, 4)
    with pytest.raises(EdgeAttnError, match="sources cls and mean_received"):
        ops.token_scores(feats, feats, source="text")
    with pytest.raises(EdgeAttnError, match="modes topk and regions"):
        ops.token_select(s, feats, k=3, mode="diversity")
    with pytest.raises(EdgeAttnError, match="outside 1..10"):
        ops.token_select(s, feats, k=11)
    with pytest.raises(EdgeAttnError, match="head size"):
        ops.token_scores(torch.randn(1, 2, 9, 24), torch.randn(1, 2, 9, 24))
    with pytest.raises(EdgeAttnError, match="no candidate"):
        ops.token_scores(torch.softmax(torch.randn(1, 2, 3, 3), -1), skip=3)


def test_kernels_keep_the_references_constants():
    assert kernels.DUPLICATE_SNAP.value == DUPLICATE_SNAP
    from edgeattn.ops.token_select.reference import QUOTA_SLACK

    assert kernels.QUOTA_SLACK.value == QUOTA_SLACK
