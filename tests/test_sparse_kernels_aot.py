"""Ahead-of-time builds of the block-sparse and token-pruning kernels for sm_87 / sm_89 / sm_90.

Every launch of every build variant must follow TensorRT's AOT convention (checked here without
compiling, for many variants), and the compiled PTX of a representative set must target the
architecture, fit its shared memory and take exactly the recorded parameters. Compilation runs in
a subprocess without ``TRITON_INTERPRET`` (this process interprets, see conftest.py).
"""

from __future__ import annotations

import json
import re
from dataclasses import fields, replace
from itertools import product

import pytest

from edgeattn.kernels.block_sparse import attention, selection
from edgeattn.kernels.block_sparse.aot import BlockSparseBuild
from edgeattn.kernels.block_sparse.aot import _plan as block_plan
from edgeattn.kernels.tokens import scoring
from edgeattn.kernels.tokens import selection as token_selection
from edgeattn.kernels.tokens.aot import TokenScoreBuild, TokenSelectBuild
from edgeattn.kernels.tokens.aot import _plan as token_plan
from edgeattn.kernels.triton_aot import _check_param_order

from test_triton_aot import PTX_TARGET, SMEM_LIMIT, run_compiled_python

KERNELS = {
    "block_pool_fwd": selection.block_pool_fwd,
    "block_row_probs_fwd": selection.block_row_probs_fwd,
    "block_select_fwd": selection.block_select_fwd,
    "block_sparse_attn_fwd": attention.block_sparse_attn_fwd,
    "token_row_stats_fwd": scoring.token_row_stats_fwd,
    "token_score_fwd": scoring.token_score_fwd,
    "token_topk_fwd": token_selection.token_topk_fwd,
    "token_chunk_variance_fwd": token_selection.token_chunk_variance_fwd,
    "token_regions_fwd": token_selection.token_regions_fwd,
    "token_gather_fwd": token_selection.token_gather_fwd,
}


def block_variants():
    base = BlockSparseBuild()
    for layout, rectify, dense, mode, causal in product(("select", "mask", "window"), (False, True), (False, True),
                                                        ("topk", "threshold", "cumprob"), (0, 2)):  # fmt: skip
        if layout == "window" and (rectify or dense or mode != "topk"):
            continue
        yield replace(base, layout=layout, rectify=rectify, dense_heads=dense, mode=mode, causal=causal)
    yield from (replace(base, query_pool="rows"), replace(base, query_pool="rows", layout="mask", rectify=True))


def token_variants():
    for source, probs, weights in product(("cls", "mean_received"), (False, True), (False, True)):
        yield TokenScoreBuild(source=source, from_probs=probs, weights=weights, valid=weights)
    yield from (TokenSelectBuild(mode="topk"), TokenSelectBuild(mode="regions", dtype="bf16"))


def test_every_launch_follows_the_tensorrt_convention():
    """Runtime params = declared params minus constexprs, in declaration order, inputs then int32
    scalars then outputs; every scalar says how a launcher computes it."""
    plans = [block_plan(b) for b in block_variants()] + [token_plan(b) for b in token_variants()]
    assert len(plans) > 40
    for plan in plans:
        for name, params, consts, grid, *_ in plan:
            _check_param_order(KERNELS[name], params, consts)
            assert len(grid) == 3 and all(p.value for p in params if p.role == "scalar")
    # The select layout runs pool -> select -> attention; a mask without rectify needs no pools.
    assert [k[0] for k in block_plan(BlockSparseBuild())] == ["block_pool_fwd", "block_select_fwd",
                                                              "block_sparse_attn_fwd"]  # fmt: skip
    assert [k[0] for k in block_plan(BlockSparseBuild(layout="mask"))] == ["block_select_fwd", "block_sparse_attn_fwd"]
    assert [k[0] for k in block_plan(BlockSparseBuild(layout="window"))] == ["block_sparse_attn_fwd"]
    assert [k[0] for k in block_plan(BlockSparseBuild(query_pool="rows"))] == [
        "block_pool_fwd", "block_row_probs_fwd", "block_select_fwd", "block_sparse_attn_fwd"]


@pytest.fixture(scope="module")
def builds(tmp_path_factory) -> dict[str, dict]:
    """sm_87/89/90: block-sparse select (topk, rectify: three kernels) and window at d128 fp16, and the
    token kernels (cls and mean-received scores, top-k, HoloV regions, gather) for 576 tokens."""
    out = tmp_path_factory.mktemp("aot_sparse")
    run_compiled_python(["-c", "import sys\nfrom edgeattn.kernels.block_sparse import aot as a\n"
                         "from edgeattn.kernels.tokens import aot as t\n"
                         "sys.exit(a.main(['--out', sys.argv[1], '--head-dim', '128', '--rectify']) or "
                         "t.main(['--out', sys.argv[1], '--max-tokens', '576']))", str(out)], out)  # fmt: skip
    records = {p.name: json.loads(p.read_text()) for p in sorted(out.glob("*.json"))}
    for record in records.values():
        for k in record["kernels"]:
            k["ptx"] = (out / k["ptx_file"]).read_text()
    return records


def test_every_variant_builds_for_every_target(builds):
    assert len(builds) == 3 * (2 + 4)
    for arch in (87, 89, 90):
        assert f"select_topk_qmean_kmean_gmean_d128_fp16_c2_b64_grp4_kv32768_rect.sm{arch}.json" in builds
        assert f"window_d128_fp16_c2_b64_grp4.sm{arch}.json" in builds
        assert f"select_regions_n576_fp16_r16.sm{arch}.json" in builds


def test_ptx_targets_the_architecture_and_shared_memory_fits(builds):
    for record in builds.values():
        for k in record["kernels"]:
            arch = k["arch"]
            assert re.findall(r"^\s*\.target\s+(\w+)", k["ptx"], re.M) == [PTX_TARGET[arch]]
            assert re.search(rf"\.entry\s+{k['kernel']}\s*\(", k["ptx"])
            assert 0 <= k["shared_bytes"] <= SMEM_LIMIT[arch]
            assert k["block"] == [32 * k["num_warps"], 1, 1]
    attn = {r["kernels"][-1]["arch"]: r["kernels"][-1] for n, r in builds.items() if n.startswith("window")}
    assert {a: k["num_stages"] for a, k in attn.items()} == {87: 3, 89: 2, 90: 3}  # sm_89: 99 KB


def test_recorded_parameters_are_the_launch_order(builds):
    for record in builds.values():
        attrs = record["attributes"]
        if record["op"] == "edgeattn.BlockSparseAttention":
            plan = block_plan(BlockSparseBuild(**{f.name: attrs[f.name] for f in fields(BlockSparseBuild)}))
        else:
            cls = TokenScoreBuild if record["op"] == "edgeattn.TokenScore" else TokenSelectBuild
            plan = token_plan(cls(**{f.name: attrs[f.name] for f in fields(cls)}))
        assert [k["kernel"] for k in record["kernels"]] == [name for name, *_ in plan]
        for k, (_, params, consts, grid, *_) in zip(record["kernels"], plan):
            assert [p["name"] for p in k["params"]] == [p.name for p in params]
            assert k["grid"] == grid and set(k["constexprs"]) == set(consts)
            entry = re.search(rf"\.entry\s+{k['kernel']}\s*\((.*?)\)", k["ptx"], re.S).group(1)
            assert len(re.findall(r"\.param\s", entry)) == len(params) + len(k["hidden_params"])
