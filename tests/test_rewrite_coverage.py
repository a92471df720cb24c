"""Issue 16, item 4: the standard domain under "ai.onnx", causal masks recognised from their construction,
scores with a CastLike reader, Einsum attention, masks of unknown shape. Each rewrite is held to the
original graph in onnxruntime (float32: relative error < 1e-5, the bound of graphs_golden)."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto

from coverage_graphs import (FINFO_MIN, cast_like_reader, einsum_bert, feeds, gpt2_cached, mixed_precision,
                             range_causal, strip_value_info, trilu_causal)
from graphs_golden import RTOL_FLOAT32, Dialect, build, parity
from edgeattn.graphs import find_sites, rewrite
from edgeattn.ops.attention.spec import trt_unsupported
from edgeattn.ops.spec import standard_opset


def _rewritten(model: onnx.ModelProto) -> tuple[onnx.ModelProto, object]:
    out, report = rewrite(model)
    proto = ir.serde.serialize_model(out)
    onnx.checker.check_model(proto)
    return proto, report


def _only_site(model: onnx.ModelProto):
    report = find_sites(ir.serde.deserialize_model(model))
    assert len(report.sites) == 1, [u.reasons for u in report.unmatched]
    return report.sites[0]


@pytest.mark.parametrize("mask", ["fill_min", "bool_drop", "add"])
def test_the_standard_domain_named_ai_onnx_rewrites_with_the_models_opset(mask: str) -> None:
    model = build(Dialect(mask=mask)).model
    model.opset_import[0].domain = "ai.onnx"
    assert standard_opset({"ai.onnx": 17}) == 17 and standard_opset({}, 0) == 0
    proto, report = _rewritten(model)
    assert len(report.rewritten) == 1 and report.refused == ()
    assert {o.domain: o.version for o in proto.opset_import}[""] == 17
    assert "ai.onnx" not in {o.domain for o in proto.opset_import}
    assert parity(model, proto, build(Dialect(mask=mask)).feeds()) < RTOL_FLOAT32


@pytest.mark.parametrize("fill", [-10000.0, FINFO_MIN])
def test_gpt2_sliced_triangle_with_a_cache_becomes_lower_right_causal(fill: float) -> None:
    model = gpt2_cached(fill)
    site = _only_site(model)
    assert (site.causal, site.mask) == (2, "none"), site.details
    proto, _ = _rewritten(model)
    (node,) = [n for n in proto.graph.node if n.domain == "edgeattn"]
    assert len(node.input) == 3 and {a.name: a.i for a in node.attribute}["causal"] == 2
    assert not any(n.op_type in ("Slice", "Where") for n in proto.graph.node)  # the mask's nodes are gone
    for sizes in ({"S": 3, "P": 4}, {"S": 5, "P": 0}, {"S": 1, "P": 9}):
        assert parity(model, proto, feeds(model, sizes=sizes)) < RTOL_FLOAT32


@pytest.mark.parametrize("build_model, mode", [(trilu_causal, 1), (range_causal, 1)])
def test_trilu_and_range_causal_masks_become_the_causal_attribute(build_model, mode: int) -> None:
    model = build_model()
    site = _only_site(model)
    assert (site.causal, site.mask) == (mode, "none")
    proto, _ = _rewritten(model)
    assert parity(model, proto, feeds(model)) < RTOL_FLOAT32


def test_a_geometry_mask_that_is_not_causal_stays_a_mask() -> None:
    model = trilu_causal(upper=1)  # keeps j >= i: not causal
    site = _only_site(model)
    assert (site.causal, site.mask) == (0, "bool")
    proto, _ = _rewritten(model)
    assert parity(model, proto, feeds(model)) < RTOL_FLOAT32


def test_lower_right_with_a_finite_fill_needs_as_many_keys_as_queries() -> None:
    # Q and K lengths are unrelated symbols: with S > T a lower-right row is fully masked, where the
    # -10000 fill gives the mean of V and the causal attribute zeros, so the mask must stay.
    model = gpt2_cached(-10000.0)
    for info in model.graph.input:
        if info.name in ("k", "v"):
            info.type.tensor_type.shape.dim[2].dim_param = "N"
    site = _only_site(strip_value_info(model))
    assert site.causal == 0 and site.mask == "additive"


def test_scores_read_by_a_castlike_are_rewritten() -> None:
    model = cast_like_reader()
    site = _only_site(model)
    assert site.mask == "bool"
    proto, report = _rewritten(model)
    assert report.refused == ()
    assert parity(model, proto, feeds(model)) < RTOL_FLOAT32


def test_einsum_attention_is_rewritten_and_a_foreign_equation_refused_in_inspect_and_rewrite() -> None:
    model = einsum_bert()
    site = _only_site(model)
    assert (site.dialect, site.num_heads, site.head_size, site.mask) == ("einsum", 2, 4, "additive")
    proto, _ = _rewritten(model)
    assert parity(model, proto, feeds(model)) < RTOL_FLOAT32
    bad = einsum_bert(out_eq="acbe,aecd->abce")
    report = find_sites(ir.serde.deserialize_model(bad))
    _, result = rewrite(bad)
    reason = "the Einsum 'acbe,aecd->abce' is not the weights times V per batch and head"
    assert [u.reasons for u in report.unmatched] == [u.reasons for u in result.refused]
    assert any(reason in r for r in report.unmatched[0].reasons)


@pytest.mark.parametrize("scores_eq,scale", [("aecd,abcd->acbe", 0.5), ("abcd,aecd->acbe", -0.5)],
                         ids=["key-operand-first", "negative-scale"])
def test_einsum_with_the_key_first_or_a_negative_scale(scores_eq: str, scale: float) -> None:
    """onnxruntime's tf2onnx BERT generator writes the key operand first ('aecd,abcd->acbe': the second
    operand carries the query axis) and a scale of -10000 on it: both are attention, rewritten exactly
    (a negative scale becomes its magnitude on -Q)."""
    model = einsum_bert(scores_eq=scores_eq, scale=scale)
    proto, report = _rewritten(model)
    assert report.refused == () and len(report.rewritten) == 1
    assert parity(model, proto, feeds(model)) < RTOL_FLOAT32


@pytest.mark.parametrize("inputs", [TensorProto.FLOAT, TensorProto.FLOAT16], ids=["float32-qkv", "float16-qkv"])
def test_mixed_precision_attention(inputs: int) -> None:
    """Scores cast to float32 after Q·Kᵀ, P @ V in float16 (onnxruntime's DiT generator writes it): the op runs
    in Q's type (float32 Q, K, V: P @ V in float32, the output cast to float16; float16 Q, K, V: the softmax
    in float32). Against onnxruntime on the original: within two float16 steps of the largest output (the
    original rounds P to float16 before P @ V, the rewrite does not)."""
    model = mixed_precision(inputs)
    proto, report = _rewritten(model)
    assert report.refused == () and len(report.rewritten) == 1
    assert parity(model, proto, feeds(model)) < 2 * 2.0 ** -10


def test_a_mask_of_unknown_rank_with_heads_in_the_batch() -> None:
    golden = build(Dialect(rank=3, mask="add", mask_dims="bst"))
    model = golden.model
    # The mask is reshaped by a shape vector of unknown length: nothing says its rank.
    mask = next(i for i in model.graph.input if i.name == "mask")
    mask.name = "mask_flat"
    mask.type.tensor_type.shape.Clear()
    mask.type.tensor_type.shape.dim.add().dim_param = "N"
    model.graph.input.append(onnx.helper.make_tensor_value_info("mask_shape", onnx.TensorProto.INT64, ["R"]))
    model.graph.node.insert(0, onnx.helper.make_node("Reshape", ["mask_flat", "mask_shape"], ["mask"], name="unflatten"))
    site = _only_site(model)
    assert site.mask == "additive"
    proto, _ = _rewritten(model)
    for shape in ([4, 5, 7], [5, 7], [7]):  # [B·H, S, T] for batch 1 and 4 heads, [S, T], [T]
        inputs = golden.feeds(batch=1)
        inputs["mask_flat"] = np.random.default_rng(1).standard_normal(int(np.prod(shape))).astype(np.float32)
        inputs["mask_shape"] = np.array(shape, np.int64)
        del inputs["mask"]
        assert parity(model, proto, inputs) < RTOL_FLOAT32


def test_trt_unsupported_names_what_the_plugin_form_cannot_carry() -> None:
    assert trt_unsupported({"scale": 0.5, "causal": 1}, 4, 1) is None
    assert "softcap" in trt_unsupported({"softcap": 30.0}, 3, 1)
    assert "past_key, past_value" in trt_unsupported({}, 6, 1)
    assert "present_key" in trt_unsupported({}, 3, 3)
    assert "left_window_size" in trt_unsupported({"left_window_size": 4}, 3, 1)
