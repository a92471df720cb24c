"""One graph per refusal reason: `inspect` lists the node as unmatched with that reason, `rewrite` reports
it as refused (or, for a Softmax that is not attention, ignores it) and leaves it in place."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper

from edgeattn.errors import GraphError
from edgeattn.graphs import find_sites, rewrite

F32 = TensorProto.FLOAT


def _model(nodes: list, inputs: list, outputs: list, opset: int = 17, inits: list | None = None,
           ms: bool = False) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "refusal", inputs, outputs, inits or [])
    imports = [helper.make_opsetid("", opset)] + ([helper.make_opsetid("com.microsoft", 1)] if ms else [])
    return helper.make_model(graph, opset_imports=imports, ir_version=10)


def _tensor(name: str, dims: list, dtype: int = F32) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, dims)


def _const(name: str, value: Any, dtype: Any = np.float32) -> onnx.TensorProto:
    return onnx.numpy_helper.from_array(np.asarray(value, dtype=dtype), name)


QKV = [_tensor("q", ["B", 4, "S", 8]), _tensor("k", ["B", 4, "T", 8]), _tensor("v", ["B", 4, "T", 8])]
Y = [_tensor("y", None)]


def decomposed(between: list, scores_out: str = "scores", inputs: list | None = None, inits: list | None = None,
               after: list | None = None, probs: str = "p", outputs: list | None = None) -> onnx.ModelProto:
    """q·kᵀ -> `between` nodes (reading `scores`, writing `logits`) -> Softmax -> `after` -> MatMul(v)."""
    nodes = [
        helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2], name="kt"),
        helper.make_node("MatMul", ["q", "kt"], [scores_out], name="qk"),
        *between,
        helper.make_node("Softmax", ["logits"], ["p"], axis=-1, name="softmax"),
        *(after or []),
        helper.make_node("MatMul", [probs, "v"], ["y"], name="pv"),
    ]
    return _model(nodes, inputs or QKV, outputs or Y, inits=[_const("scale", 0.35), *(inits or [])])


SCALE = helper.make_node("Mul", ["scores", "scale"], ["logits"], name="scale")


def softmax_axis() -> onnx.ModelProto:
    model = decomposed([SCALE])
    next(n for n in model.graph.node if n.op_type == "Softmax").attribute[0].i = 1
    return model


def per_head_scale() -> onnx.ModelProto:
    node = helper.make_node("Mul", ["scores", "heads_scale"], ["logits"], name="scale")
    return decomposed([node], inits=[_const("heads_scale", np.ones((1, 4, 1, 1)))])


def input_scale() -> onnx.ModelProto:
    node = helper.make_node("Mul", ["scores", "s"], ["logits"], name="scale")
    return decomposed([node], inputs=[*QKV, _tensor("s", [])])


def unknown_rank() -> onnx.ModelProto:
    untyped = [helper.make_tensor_value_info(n, F32, None) for n in ("q", "k", "v")]
    return decomposed([SCALE], inputs=untyped)


def five_dims() -> onnx.ModelProto:
    dims = ["B", 2, 4, "S", 8]
    return _model(
        [helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 2, 4, 3]),
         helper.make_node("MatMul", ["q", "kt"], ["s"]),
         helper.make_node("Softmax", ["s"], ["p"], axis=-1),
         helper.make_node("MatMul", ["p", "v"], ["y"])],
        [_tensor("q", dims), _tensor("k", dims), _tensor("v", dims)], Y)


def enlarging_mask() -> onnx.ModelProto:
    one_head = [_tensor("q", ["B", 1, "S", 8]), _tensor("k", ["B", 1, "T", 8]), _tensor("v", ["B", 1, "T", 8])]
    mask = helper.make_node("Add", ["scores", "mask"], ["logits"], name="mask")
    return decomposed([mask], inputs=[*one_head, _tensor("mask", ["B", 4, "S", "T"])])


def zero_fill() -> onnx.ModelProto:
    where = helper.make_node("Where", ["keep", "scores", "zero"], ["logits"], name="mask")
    return decomposed([where], inputs=[*QKV, _tensor("keep", ["S", "T"], TensorProto.BOOL)], inits=[_const("zero", 0.0)])


def input_fill() -> onnx.ModelProto:
    where = helper.make_node("Where", ["keep", "scores", "fill"], ["logits"], name="mask")
    return decomposed([where], inputs=[*QKV, _tensor("keep", ["S", "T"], TensorProto.BOOL), _tensor("fill", [])])


def guard_not_zero() -> onnx.ModelProto:
    after = [helper.make_node("IsNaN", ["p"], ["nan"]), helper.make_node("Where", ["nan", "one", "p"], ["pg"])]
    return decomposed([SCALE], after=after, probs="pg", inits=[_const("one", 1.0)])


def training_dropout() -> onnx.ModelProto:
    after = [helper.make_node("Dropout", ["p", "ratio", "train"], ["pd"])]
    return decomposed([SCALE], after=after, probs="pd", inits=[_const("ratio", 0.1), _const("train", True, np.bool_)])


def mixed_types() -> onnx.ModelProto:
    cast = [SCALE, helper.make_node("Cast", ["logits"], ["logits16"], to=TensorProto.FLOAT16)]
    model = decomposed(cast, inputs=[*QKV[:2], _tensor("v", ["B", 4, "T", 8], TensorProto.FLOAT16)])
    next(n for n in model.graph.node if n.op_type == "Softmax").input[0] = "logits16"
    return model


def returned_probabilities() -> onnx.ModelProto:
    return decomposed([SCALE], outputs=[*Y, _tensor("p", None)])


def classifier_softmax() -> onnx.ModelProto:
    return _model([helper.make_node("Softmax", ["x"], ["y"], axis=-1)], [_tensor("x", ["B", 10])], Y)


def softcapped_scores() -> onnx.ModelProto:
    capped = [SCALE, helper.make_node("Tanh", ["logits"], ["t"]), helper.make_node("Mul", ["t", "cap"], ["logits2"])]
    model = decomposed(capped, inits=[_const("cap", 50.0)])
    next(n for n in model.graph.node if n.op_type == "Softmax").input[0] = "logits2"
    return model


def onnx_attention(opset: int = 23, inputs: list | None = None, outputs: int = 1, **attrs: Any) -> onnx.ModelProto:
    names = inputs or ["q", "k", "v"]
    outs = ["y", "present_key", "present_value", "qk"][:outputs]
    node = helper.make_node("Attention", names, outs, name="attention", **attrs)
    extra = {"mask": _tensor("mask", ["S", 3]), "past_key": _tensor("past_key", ["B", 4, "P", 8]),
             "past_value": _tensor("past_value", ["B", 4, "P", 8]), "lens": _tensor("lens", ["B"], TensorProto.INT64)}
    graph_inputs = [*QKV, *(extra[n] for n in names if n in extra)]
    return _model([node], graph_inputs, [_tensor(o, None) for o in outs], opset=opset)


def qk_output_used(mode: int = 1) -> onnx.ModelProto:
    model = onnx_attention(outputs=4, qk_matmul_output_mode=mode)
    node = model.graph.node[0]
    node.output[1], node.output[2] = "", ""
    kept = [o for o in model.graph.output if o.name in ("y", "qk")]
    del model.graph.output[:]
    model.graph.output.extend(kept)
    return model


def ms_attention(**attrs: Any) -> onnx.ModelProto:
    inputs = attrs.pop("inputs", ["x", "w", "b"])
    node = helper.make_node("Attention", inputs, attrs.pop("outputs", ["y"]), domain="com.microsoft", name="ms_attention",
                            num_heads=4, **attrs)
    extra = {"mask1": _tensor("mask1", ["N"], TensorProto.INT32), "mask4": _tensor("mask4", ["B", 1, 8, 8], TensorProto.INT32),
             "past": _tensor("past", [2, "B", 4, "P", 8]), "w_in": _tensor("w_in", [32, "W"])}
    graph_inputs = [_tensor("x", ["B", "S", 32]), *(extra[n] for n in inputs if n in extra)]
    inits = [_const("w", np.zeros((32, 96))), _const("b", np.zeros(96))]
    outs = [_tensor(n, None) for n in node.output]
    return _model([node], graph_inputs, outs, inits=inits, ms=True)


def ms_mha(query_dims: list | None = None, inputs: list | None = None) -> onnx.ModelProto:
    names = inputs or ["q3", "k3", "v3"]
    node = helper.make_node("MultiHeadAttention", names, ["y"], domain="com.microsoft", name="mha", num_heads=4)
    shapes = {"q3": query_dims or ["B", "S", 32], "k3": ["B", "T", 32], "v3": ["B", "T", 32], "pad": ["N"],
              "pk": ["B", 4, "P", 8], "pv": ["B", 4, "P", 8]}
    types = {"pad": TensorProto.INT32}
    graph_inputs = [_tensor(n, shapes[n], types.get(n, F32)) for n in names if n]
    return _model([node], graph_inputs, Y, ms=True)


REFUSALS: dict[str, tuple[Callable[[], onnx.ModelProto], str]] = {
    "softmax-axis": (softmax_axis, "not the last (key) axis"),
    "per-head-scale": (per_head_scale, "scale after the Q·Kᵀ product is not a constant scalar"),
    "scale-from-input": (input_scale, "scale after the Q·Kᵀ product is not a constant scalar"),
    "five-dims": (five_dims, "only 3-D and 4-D attention is rewritten"),
    "unknown-rank": (unknown_rank, "the rank of the attention scores is unknown (no shape information)"),
    "mask-enlarges-scores": (enlarging_mask, "does not broadcast to the scores"),
    "where-fill-zero": (zero_fill, "fill value 0 is not -inf or at most -10000"),
    "where-fill-input": (input_fill, "fill value is not a constant scalar"),
    "guard-not-zero": (guard_not_zero, "IsNaN guard after the Softmax does not write zeros"),
    "training-dropout": (training_dropout, "may run in training mode"),
    "query-value-types": (mixed_types, "the query type FLOAT and value type FLOAT16 differ"),
    "returned-probabilities": (returned_probabilities, "is a graph output"),
    "softcap-chain": (softcapped_scores, "there is Tanh, not a scale/mask/cast chain"),
    # what the ONNX specification leaves undefined or forbids (the rest of the contract is rewritten:
    # test_the_whole_standard_attention_contract_is_rewritten below, tests/test_attention_contract.py)
    "onnx-negative-softcap": (lambda: onnx_attention(softcap=-50.0), "softcap -50 is not a finite number >= 0"),
    "onnx-past-key-alone": (lambda: onnx_attention(inputs=["q", "k", "v", "", "past_key"]),
                            "past_key and past_value must be given together"),
    "onnx-nonpad-opset-23": (lambda: onnx_attention(23, ["q", "k", "v", "", "", "", "lens"]),
                             "Attention-23 has no nonpad_kv_seqlen input"),
    "onnx-nonpad-with-past": (lambda: onnx_attention(24, ["q", "k", "v", "", "past_key", "past_value", "lens"]),
                              "nonpad_kv_seqlen (an external cache) with past/present key and value"),
    "onnx-window-opset-24": (lambda: onnx_attention(24, left_window_size=4), "Attention-24 has no attribute left_window_size"),
    "onnx-window-below-minus-one": (lambda: onnx_attention(25, right_window_size=-2), "right_window_size -2 is neither"),
    "onnx-qk-output-mode": (lambda: qk_output_used(mode=7), "qk_matmul_output_mode 7 is not 0, 1, 2 or 3"),
    "onnx-short-mask": (lambda: onnx_attention(inputs=["q", "k", "v", "mask"]), None),
    "ms-past": (lambda: ms_attention(inputs=["x", "w", "b", "", "past"]), "past state input"),
    "ms-rotary": (lambda: ms_attention(do_rotary=1), "do_rotary"),
    "ms-mask-index-length": (lambda: ms_attention(inputs=["x", "w", "b", "mask1"]), "not provably of batch length"),
    "ms-mask-index-4d": (lambda: ms_attention(inputs=["x", "w", "b", "mask4"]), "mask_index of rank 4 is not supported"),
    "ms-weights-width": (lambda: ms_attention(inputs=["x", "w_in"]), "width of the packed Q/K/V weights is unknown"),
    "ms-present-used": (lambda: ms_attention(outputs=["y", "present"]), "'present' inside the attention is a graph output"),
    "mha-packed-qkv": (lambda: ms_mha(["B", "S", 4, 3, 8], ["q3"]), "packed QKV/KV or 4-D (BNSH)"),
    "mha-past": (lambda: ms_mha(inputs=["q3", "k3", "v3", "", "", "", "pk", "pv"]),
                 "a MultiHeadAttention past without present_key/present_value outputs"),
    "mha-padding-length": (lambda: ms_mha(inputs=["q3", "k3", "v3", "", "pad"]), "not provably of batch length"),
    "mha-hidden-unknown": (lambda: ms_mha(["B", "S", "H"]), "hidden sizes or element type of MultiHeadAttention are unknown"),
}


def _short_mask_reason(model: onnx.ModelProto) -> str:
    # The mask covers 3 keys of T; with T fixed at 7 the refusal is provable.
    model.graph.input[1].type.tensor_type.shape.dim[2].dim_value = 7
    return "the mask covers 3 keys of 7"


@pytest.mark.parametrize("name", list(REFUSALS))
def test_each_refusal_is_reported_with_its_reason(name: str) -> None:
    build, reason = REFUSALS[name]
    model = build()
    if reason is None:
        reason = _short_mask_reason(model)
    report = find_sites(ir.serde.deserialize_model(model))
    assert report.sites == ()
    reasons = [r for item in report.unmatched for r in item.reasons]
    assert any(reason in r for r in reasons), reasons
    rewritten, result = rewrite(model)
    assert result.rewritten == ()
    assert [item.node for item in result.refused] == [item.node for item in report.unmatched]
    assert not any(n.domain == "edgeattn" for n in rewritten.graph)


def test_a_softmax_that_is_not_attention_is_unmatched_but_not_refused() -> None:
    report = find_sites(ir.serde.deserialize_model(classifier_softmax()))
    assert [item.reasons[0] for item in report.unmatched] == [
        "no MatMul takes this Softmax's output as attention weights (not an attention softmax)"]
    assert report.unmatched[0].attention is False
    assert rewrite(classifier_softmax())[1].refused == ()


def test_fused_ops_without_a_rule_are_reported() -> None:
    node = helper.make_node("PackedAttention", ["q3", "k3", "v3"], ["y"], domain="com.microsoft", name="packed")
    model = _model([node], [_tensor("q3", ["B", "S", 32]), _tensor("k3", ["B", "S", 16]), _tensor("v3", ["B", "S", 16])], Y, ms=True)
    report = find_sites(ir.serde.deserialize_model(model))
    assert report.unmatched[0].reasons == ("no rule handles com.microsoft.PackedAttention",)


def test_opsets_below_13_and_unknown_targets_are_errors() -> None:
    model = decomposed([SCALE])
    model.opset_import[0].version = 12
    with pytest.raises(GraphError, match="opset 12; edgeattn rewrites opset 13 and later"):
        rewrite(model)
    with pytest.raises(GraphError, match="unknown target 'tensorrt'; choose one of: ort, trt"):
        rewrite(decomposed([SCALE]), target="tensorrt")  # type: ignore[arg-type]


def test_unknown_edgeattn_ops_are_errors() -> None:
    node = helper.make_node("Mystery", ["x"], ["y"], domain="edgeattn", name="mystery")
    model = _model([node], [_tensor("x", [2])], Y)
    model.opset_import.append(helper.make_opsetid("edgeattn", 1))
    with pytest.raises(GraphError, match="edgeattn.Mystery, which this edgeattn does not know"):
        rewrite(model)


# Refused before the whole ONNX Attention contract was supported (issue 16); each is rewritten now, and the
# rewritten graph computes what the onnx package's reference implementation computes (float32: relative
# error < 1e-5, RTOL_FLOAT32: the same float32 operations, regrouped).
NOW_REWRITTEN: dict[str, tuple[Callable[[], onnx.ModelProto], str]] = {
    "onnx-softcap": (lambda: onnx_attention(softcap=50.0), "softcap = 50"),
    "onnx-past": (lambda: onnx_attention(inputs=["q", "k", "v", "", "past_key", "past_value"], outputs=3),
                  "past_key, past_value"),
    "onnx-nonpad": (lambda: onnx_attention(24, ["q", "k", "v", "", "", "", "lens"]), "nonpad_kv_seqlen"),
    "onnx-qk-output": (qk_output_used, "qk_matmul_output"),
    "onnx-window": (lambda: onnx_attention(25, left_window_size=4), "left_window_size = 4"),
}


@pytest.mark.parametrize("name", list(NOW_REWRITTEN))
def test_the_whole_standard_attention_contract_is_rewritten(name: str) -> None:
    from onnx.reference import ReferenceEvaluator

    from graphs_golden import RTOL_FLOAT32, relative_error, session

    build, feature = NOW_REWRITTEN[name]
    model = build()
    (site,) = find_sites(ir.serde.deserialize_model(model)).sites
    assert feature in site.details["features"]
    rewritten, result = rewrite(model)
    assert result.refused == () and [r.op for r in result.rewritten] == ["Attention"]
    assert not any(n.op_type == "Attention" and n.domain == "" for n in rewritten.graph)
    rng = np.random.default_rng(0)
    sizes = {"B": 2, "S": 3, "T": 5, "P": 2}
    feeds = {}
    for info in model.graph.input:
        shape = [sizes.get(d.dim_param, d.dim_value) for d in info.type.tensor_type.shape.dim]
        feeds[info.name] = (np.array([5, 2], np.int64) if info.name == "lens"
                            else rng.standard_normal(shape).astype(np.float32))
    expected = ReferenceEvaluator(model).run(None, feeds)
    got = session(ir.serde.serialize_model(rewritten)).run(None, feeds)
    if name == "onnx-qk-output":  # mode 1 without softcap: the scores, which onnx's reference also gives
        assert len(got) == 2
    assert relative_error(expected, got) < RTOL_FLOAT32
