"""Attention dialects written by other tools (built here with onnx.helper): each is detected with the
right facts, rewritten into one edgeattn.Attention, passes the full ONNX check, and matches the
original in onnxruntime (float32 relative error max|a-b|/max|a| < 1e-5). Rewriting twice is a no-op."""

from __future__ import annotations

import onnx
import onnx_ir as ir
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgeattn.graphs import find_sites, rewrite

from graphs_golden import RTOL_FLOAT32, Dialect, build, parity

DIALECTS = {
    "eager-mul-after": Dialect(),
    "eager-mul-after-scale-first": Dialect(scale="after_mul_left"),
    "eager-div-after": Dialect(scale="after_div"),
    "sdpa-sqrt-on-q-and-kt-with-guard": Dialect(scale="sqrt_q_k", guard=True),
    "div-scale-on-q": Dialect(scale="q_div"),
    "no-scale": Dialect(scale="none", scale_value=1.0),
    "key-in-bshd": Dialect(key="bshd"),
    "key-pre-transposed": Dialect(key="pre"),
    "no-mask": Dialect(mask="none"),
    "mask-added-first-full-shape": Dialect(mask="add_left", mask_dims="bhst"),
    "bool-mask-where-keep": Dialect(mask="bool_keep"),
    "bool-mask-where-drop-2d": Dialect(mask="bool_drop", mask_dims="st"),
    "where-finite-fill": Dialect(mask="fill_min", mask_dims="1st"),
    "where-then-add": Dialect(mask="where_then_add"),
    "cast-pair": Dialect(cast=True),
    "dropout": Dialect(dropout=True),
    "gqa-unsqueeze-expand-reshape": Dialect(gqa=True, heads=6, kv_heads=2),
    "mqa-at-opset-13": Dialect(gqa=True, heads=4, kv_heads=1, opset=13),
    "constant-nodes": Dialect(constants="node", scale="sqrt_q_k"),
    "heads-in-batch-3d": Dialect(rank=3, mask_dims="bst"),
    "heads-in-batch-3d-key-mask": Dialect(rank=3, mask_dims="t"),
    "opset-13-bool": Dialect(opset=13, mask="bool_keep"),
    "opset-24": Dialect(opset=24),
}


def rewritten(golden_model: onnx.ModelProto, target: str = "ort") -> tuple[onnx.ModelProto, object]:
    model, report = rewrite(golden_model, target=target)  # type: ignore[arg-type]
    return ir.serde.serialize_model(model), report


@pytest.mark.parametrize("name", list(DIALECTS))
def test_dialect_is_detected_rewritten_checked_and_matches(name: str) -> None:
    dialect = DIALECTS[name]
    golden = build(dialect)
    onnx.checker.check_model(golden.model, full_check=True)
    sites = find_sites(ir.serde.deserialize_model(golden.model)).sites
    assert len(sites) == 1
    site = sites[0]
    assert site.head_size == dialect.head_size
    if dialect.rank == 4:
        assert (site.num_heads, site.kv_num_heads) == (dialect.heads, dialect.kv_heads)
    expected_scale = dialect.scale_value or dialect.head_size ** -0.5
    assert site.scale == pytest.approx(expected_scale, rel=1e-6)
    assert site.mask == {"none": "none", "bool_keep": "bool", "bool_drop": "bool"}.get(dialect.mask, "additive")
    proto, report = rewritten(golden.model)
    assert [n.op_type for n in proto.graph.node if n.domain == "edgeattn"] == ["Attention"]
    assert not [n for n in proto.graph.node if n.op_type in ("Softmax", "MatMul")]
    onnx.checker.check_model(proto, full_check=True)
    for seed in (0, 1):
        assert parity(golden.model, proto, golden.feeds(seed=seed)) < RTOL_FLOAT32


@pytest.mark.parametrize("target", ["ort", "trt"])
def test_rewriting_twice_is_a_no_op(target: str) -> None:
    golden = build(Dialect(gqa=True, heads=4, kv_heads=2, mask="bool_keep", layers=2))
    once, first = rewritten(golden.model, target)
    twice, second = rewritten(once, target)
    assert len(first.rewritten) == 2 and second.rewritten == ()
    assert _without_value_info(once) == _without_value_info(twice)
    assert parity(golden.model, twice, golden.feeds()) < RTOL_FLOAT32


def _without_value_info(proto: onnx.ModelProto) -> bytes:
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    del copy.graph.value_info[:]
    return copy.SerializeToString(deterministic=True)


def test_rewritten_node_records_rule_site_and_layer() -> None:
    proto, _ = rewritten(build(Dialect()).model)
    node = next(n for n in proto.graph.node if n.domain == "edgeattn")
    meta = {p.key: p.value for p in node.metadata_props}
    softmax = next(n.name for n in build(Dialect()).model.graph.node if n.op_type == "Softmax")
    assert meta["edgeattn.rule"] == "DecomposedAttention"
    assert meta["edgeattn.site"] == softmax and node.name == f"{softmax}/edgeattn.Attention"
    assert meta["edgeattn.layer"] == "0" and meta["edgeattn.dialect"] == "eager"
    report = find_sites(ir.serde.deserialize_model(proto))
    assert report.edgeattn_ops == {"Attention": 1}
    assert report.sites[0].rule == "DecomposedAttention" and report.sites[0].dialect == "edgeattn"


def test_nodes_only_the_site_used_are_removed_and_shared_ones_stay() -> None:
    golden = build(Dialect(scale="sqrt_q_k"))
    graph = golden.model.graph
    # Make the transposed key also a graph output: the Transpose must survive the rewrite.
    transpose = next(n for n in graph.node if n.op_type == "Transpose")
    graph.output.append(onnx.helper.make_tensor_value_info(transpose.output[0], onnx.TensorProto.FLOAT, None))
    proto, _ = rewritten(golden.model)
    kinds = [n.op_type for n in proto.graph.node]
    assert kinds.count("Transpose") == 1 and "Sqrt" not in kinds and "Mul" not in kinds
    assert parity(golden.model, proto, golden.feeds()) < RTOL_FLOAT32


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    kv_heads=st.integers(1, 3),
    group=st.integers(1, 3),
    head_size=st.sampled_from([4, 8, 16]),
    scale=st.sampled_from(["after_mul", "after_mul_left", "after_div", "sqrt_q_k", "q_div"]),
    key=st.sampled_from(["transpose", "bshd", "pre"]),
    mask=st.sampled_from(["none", "add", "add_left", "bool_keep", "bool_drop", "fill_min", "where_then_add"]),
    mask_dims=st.sampled_from(["b11t", "bhst", "1st", "st", "t", "b1st"]),
    cast=st.booleans(),
    guard=st.booleans(),
    constants=st.sampled_from(["initializer", "node"]),
    opset=st.sampled_from([13, 17, 21]),
    lengths=st.tuples(st.integers(1, 6), st.integers(1, 9)),
)
def test_random_dialects_rewrite_with_parity(
    kv_heads: int, group: int, head_size: int, scale: str, key: str, mask: str, mask_dims: str, cast: bool,
    guard: bool, constants: str, opset: int, lengths: tuple[int, int],
) -> None:
    gqa = group > 1 and key != "pre"
    dialect = Dialect(heads=kv_heads * (group if gqa else 1), kv_heads=kv_heads, head_size=head_size, scale=scale,
                      key=key, mask=mask, mask_dims=mask_dims, cast=cast, guard=guard, gqa=gqa,
                      constants=constants, opset=opset)
    golden = build(dialect)
    proto, report = rewritten(golden.model)
    assert len(report.rewritten) == 1 and not report.refused
    site = find_sites(ir.serde.deserialize_model(golden.model)).sites[0]
    assert (site.num_heads, site.kv_num_heads, site.head_size) == (dialect.heads, dialect.kv_heads, head_size)
    feeds = golden.feeds(seed=3, q_len=lengths[0], kv_len=lengths[1])
    assert parity(golden.model, proto, feeds) < RTOL_FLOAT32


def test_float16_site_with_float32_softmax() -> None:
    """Legacy half-precision exports compute the softmax in float32 between two Casts; the rewritten op
    keeps that (softmax_precision = FLOAT). Tolerance 2e-3: float16 has an 11-bit significand (eps 9.8e-4)."""
    from onnx import TensorProto, helper
    import numpy as np

    f16 = TensorProto.FLOAT16
    nodes = [
        helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
        helper.make_node("MatMul", ["q", "kt"], ["s"]),
        helper.make_node("Mul", ["s", "scale"], ["ss"]),
        helper.make_node("Add", ["ss", "mask"], ["sm"]),
        helper.make_node("Cast", ["sm"], ["s32"], to=TensorProto.FLOAT),
        helper.make_node("Softmax", ["s32"], ["p32"], axis=-1, name="/layers.0/attn/Softmax"),
        helper.make_node("Cast", ["p32"], ["p"], to=f16),
        helper.make_node("MatMul", ["p", "v"], ["y"]),
    ]
    dims = {"q": ["B", 2, "S", 8], "k": ["B", 2, "T", 8], "v": ["B", 2, "T", 8], "mask": ["B", 1, "S", "T"]}
    graph = helper.make_graph(nodes, "half", [helper.make_tensor_value_info(n, f16, d) for n, d in dims.items()],
                              [helper.make_tensor_value_info("y", f16, None)],
                              [onnx.numpy_helper.from_array(np.array(8 ** -0.5, np.float16), "scale")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    proto, _ = rewritten(model)
    node = next(n for n in proto.graph.node if n.domain == "edgeattn")
    assert {a.name: a.i for a in node.attribute if a.name == "softmax_precision"} == {"softmax_precision": TensorProto.FLOAT}
    onnx.checker.check_model(proto, full_check=True)
    rng = np.random.default_rng(0)
    feeds = {n: rng.standard_normal([2 if d == "B" else 5 if d in ("S", "T") else d for d in dims[n]]).astype(np.float16)
             for n in dims}
    assert parity(model, proto, feeds) < 2e-3
