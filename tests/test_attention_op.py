"""edgeattn.Attention: registry entry, ONNX schema, shape rule, and every function body (specialised
onnxruntime overloads and the generic TensorRT body) against the PyTorch reference in float64.

Tolerance: the bodies run in float32 in onnxruntime; relative error max|a-b|/max|a| against the
float64 reference stays under 1e-5 (float32 rounding of a softmax over <= 16 keys is ~1e-7)."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import onnx_ir as ir
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgeattn.ops.registry import Registry, default_registry, get_op
from edgeattn.ops.schema import onnx_schema, register_onnx_schemas
from edgeattn.ops.spec import AttrSpec, IOSpec

from graphs_golden import RTOL_FLOAT32, relative_error, session

SPEC = get_op("Attention")


def op_model(
    arrays: list[np.ndarray], attrs: dict, opset: int = 17, target: str = "ort"
) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """A one-node model: edgeattn.Attention on graph inputs, lowered for `target`."""
    from edgeattn.graphs.attach import attach_bodies

    names = ["Q", "K", "V", "mask"][: len(arrays)]
    inputs = [ir.val(n, ir.DataType.from_numpy(a.dtype), ir.Shape(a.shape)) for n, a in zip(names, arrays)]
    resolved = SPEC.resolve(attrs)
    node = ir.node("Attention", inputs, attributes=resolved, domain="edgeattn", name="attention")
    out = node.outputs[0]
    out.name, out.dtype = "Y", inputs[2].dtype
    shape = SPEC.infer_shapes([list(a.shape) for a in arrays[:3]], resolved)[0]
    out.shape = ir.Shape(shape) if shape is not None else None
    graph = ir.Graph(inputs, [out], nodes=[node], opset_imports={"": opset, "edgeattn": 1}, name="one_op")
    model = ir.Model(graph, ir_version=10)
    attach_bodies(model, target, default_registry())  # type: ignore[arg-type]
    return ir.serde.serialize_model(model), dict(zip(names, arrays))


def reference(arrays: list[np.ndarray], attrs: dict) -> np.ndarray:
    tensors = [torch.from_numpy(a) for a in arrays]
    return SPEC.reference(*tensors, **SPEC.resolve(attrs), compute_dtype=torch.float64).numpy()


def random_case(rng: np.random.Generator, rank: int, heads: int, kv_heads: int, head: int, q_len: int, kv_len: int,
                mask: str, mask_dims: tuple[int, ...]) -> list[np.ndarray]:
    batch = 2
    if rank == 4:
        shapes = [(batch, heads, q_len, head), (batch, kv_heads, kv_len, head), (batch, kv_heads, kv_len, head)]
    else:
        shapes = [(batch, q_len, heads * head), (batch, kv_len, kv_heads * head), (batch, kv_len, kv_heads * head)]
    arrays = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    if mask == "bool":
        keep = rng.random(mask_dims) > 0.4
        keep[..., 0] = True
        arrays.append(keep)
    elif mask == "additive":
        arrays.append(rng.standard_normal(mask_dims).astype(np.float32))
    return arrays


def test_registry_lists_attention_with_typed_attributes() -> None:
    registry = default_registry()
    assert registry.names()[0] == "Attention"
    described = SPEC.describe()
    assert described["domain"] == "edgeattn" and described["version"] == 1
    kinds = {a["name"]: a["type"] for a in described["attributes"]}
    assert kinds == {"scale": "float", "causal": "int", "q_num_heads": "int", "kv_num_heads": "int",
                     "softmax_precision": "int", "zero_nan_rows": "int", "softcap": "float", "left_window_size": "int",
                     "right_window_size": "int", "qk_matmul_output_mode": "int"}
    assert all(a["from_site"] for a in described["attributes"])


def test_registry_rejects_ops_that_cannot_be_tensorrt_plugins() -> None:
    table = AttrSpec("table", "tensor", None, "not a plugin field")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no TensorRT plugin field"):
        Registry.of(SPEC, dataclasses.replace(SPEC, name="Bad", attributes=(table,)))
    with pytest.raises(ValueError, match="registered twice"):
        Registry.of(SPEC, SPEC)
    budget = AttrSpec("k", "int", 1, "budget", tunable=True)
    with pytest.raises(ValueError, match="has no input to come from"):
        Registry.of(dataclasses.replace(SPEC, name="Orphan", attributes=(budget,)))
    carrier = IOSpec("k", "budget", optional=True, tunable_for="scale")
    with pytest.raises(ValueError, match="not a tunable attribute"):
        Registry.of(dataclasses.replace(SPEC, name="Wrong", inputs=(*SPEC.inputs, carrier)))


def test_onnx_schema_registers_once_and_checker_still_accepts_function_nodes() -> None:
    schema = onnx_schema(SPEC)
    assert schema.domain == "edgeattn" and schema.name == "Attention"
    assert set(schema.attributes) == {a.name for a in SPEC.attributes}
    register_onnx_schemas()
    assert register_onnx_schemas() == []
    rng = np.random.default_rng(0)
    model, _ = op_model(random_case(rng, 4, 4, 2, 8, 3, 5, "bool", (3, 5)), {"causal": 1, "q_num_heads": 4, "kv_num_heads": 2})
    onnx.checker.check_model(model, full_check=True)


@pytest.mark.parametrize("rank", [3, 4])
def test_shape_rule_matches_reference_output(rank: int) -> None:
    rng = np.random.default_rng(1)
    attrs = {"q_num_heads": 6, "kv_num_heads": 2}
    arrays = random_case(rng, rank, 6, 2, 4, 3, 5, "none", ())
    expected = list(reference(arrays, attrs).shape)
    assert SPEC.infer_shapes([list(a.shape) for a in arrays], SPEC.resolve(attrs))[0] == expected
    assert SPEC.infer_shapes([["B", 6, "S", 4], ["B", 2, "T", 4], ["B", 2, "T", 4]], {})[0] == ["B", 6, "S", 4]


CASES = [
    # (rank, heads, kv_heads, head, q_len, kv_len, mask, mask_dims, attrs, opset)
    (4, 4, 4, 8, 5, 7, "additive", (2, 1, 5, 7), {"scale": 0.3}, 17),
    (4, 4, 2, 8, 5, 7, "bool", (5, 7), {"causal": 1, "q_num_heads": 4, "kv_num_heads": 2}, 13),
    (4, 6, 2, 4, 3, 9, "none", (), {"causal": 2}, 23),
    (4, 4, 1, 8, 4, 4, "additive", (2, 4, 4, 4), {"softmax_precision": 1, "q_num_heads": 4, "kv_num_heads": 1}, 14),
    (3, 4, 2, 8, 5, 7, "bool", (2, 1, 1, 7), {"scale": 0.2, "causal": 2, "q_num_heads": 4, "kv_num_heads": 2}, 14),
    (3, 2, 2, 16, 6, 6, "additive", (6, 6), {"causal": 1, "q_num_heads": 2, "kv_num_heads": 2}, 18),
]


@pytest.mark.parametrize("target", ["ort", "trt"])
@pytest.mark.parametrize("case", CASES, ids=[f"r{c[0]}-h{c[1]}/{c[2]}-{c[6]}-op{c[9]}" for c in CASES])
def test_function_bodies_match_reference(case: tuple, target: str) -> None:
    rank, heads, kv_heads, head, q_len, kv_len, mask, mask_dims, attrs, opset = case
    arrays = random_case(np.random.default_rng(2), rank, heads, kv_heads, head, q_len, kv_len, mask, mask_dims)
    model, feeds = op_model(arrays, attrs, opset, target)
    onnx.checker.check_model(model, full_check=True)
    got = session(model).run(None, feeds)[0]
    assert relative_error([reference(arrays, attrs)], [got]) < RTOL_FLOAT32


def test_trt_form_is_one_generic_body_named_like_the_plugin() -> None:
    arrays = random_case(np.random.default_rng(3), 3, 4, 2, 8, 5, 7, "bool", (5, 7))
    model, _ = op_model(arrays, {"causal": 2, "q_num_heads": 4, "kv_num_heads": 2}, 17, "trt")
    nodes = [n for n in model.graph.node if n.domain == "edgeattn"]
    # TensorRT's parser takes `Attention` for the standard op whatever the domain: the plugin is EdgeAttention
    assert [(n.op_type, n.overload) for n in nodes] == [("EdgeAttention", "")]
    assert len(nodes[0].input) == 4  # Q, K, V and the always-present additive mask
    attributes = {a.name: a for a in nodes[0].attribute}
    assert onnx.helper.get_attribute_value(attributes.pop("plugin_namespace")) == b"edgeattn"
    assert onnx.helper.get_attribute_value(attributes.pop("plugin_version")) == b"1"
    kinds = {a.type for a in attributes.values()}
    assert kinds <= {onnx.AttributeProto.INT, onnx.AttributeProto.FLOAT}
    assert [(f.domain, f.name, f.overload) for f in model.functions] == [("edgeattn", "EdgeAttention", "")]


def test_fully_masked_rows_output_zeros() -> None:
    rng = np.random.default_rng(4)
    arrays = random_case(rng, 4, 2, 2, 4, 3, 3, "bool", (3, 3))
    arrays[3][1, :] = False  # query row 1 sees no key
    model, feeds = op_model(arrays, {})
    got = session(model).run(None, feeds)[0]
    assert np.all(got[:, :, 1] == 0) and np.all(np.isfinite(got))
    np.testing.assert_allclose(reference(arrays, {})[:, :, 1], 0.0)


def test_reference_computes_in_float64_when_asked() -> None:
    rng = np.random.default_rng(5)
    q, k, v = (torch.from_numpy(rng.standard_normal((1, 2, 3, 4)).astype(np.float32)) for _ in range(3))
    assert SPEC.reference(q, k, v, compute_dtype=torch.float64).dtype == torch.float64
    assert SPEC.reference(q, k, v).dtype == torch.float32
    expected = torch.nn.functional.scaled_dot_product_attention(q.double(), k.double(), v.double(), is_causal=True)
    got = SPEC.reference(q, k, v, causal=1, compute_dtype=torch.float64)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rank=st.sampled_from([3, 4]),
    kv_heads=st.integers(1, 3),
    group=st.integers(1, 3),
    head=st.sampled_from([2, 4, 8, 16]),
    q_len=st.integers(1, 6),
    kv_extra=st.integers(0, 4),
    mask=st.sampled_from(["none", "bool", "additive"]),
    mask_form=st.sampled_from(["st", "b1st", "bhst", "t", "1h1t"]),
    causal=st.sampled_from([0, 1, 2]),
    scale=st.sampled_from([0.0, 0.125, 1.0]),
    opset=st.sampled_from([13, 17, 23]),
    target=st.sampled_from(["ort", "trt"]),
)
def test_bodies_match_reference_on_random_configurations(
    rank: int, kv_heads: int, group: int, head: int, q_len: int, kv_extra: int, mask: str, mask_form: str,
    causal: int, scale: float, opset: int, target: str,
) -> None:
    heads, kv_len = kv_heads * group, q_len + kv_extra
    sizes = {"b": 2, "h": heads, "s": q_len, "t": kv_len, "1": 1}
    mask_dims = tuple(sizes[c] for c in mask_form)
    arrays = random_case(np.random.default_rng(6), rank, heads, kv_heads, head, q_len, kv_len, mask, mask_dims)
    attrs = {"scale": scale, "causal": causal, "q_num_heads": heads, "kv_num_heads": kv_heads}
    model, feeds = op_model(arrays, attrs, opset, target)
    got = session(model).run(None, feeds)[0]
    expected = reference(arrays, attrs)
    assert np.all(np.isfinite(got))
    assert relative_error([expected], [got]) < RTOL_FLOAT32


def test_bodies_refuse_what_they_cannot_compute() -> None:
    from edgeattn.errors import GraphError

    arrays = random_case(np.random.default_rng(7), 3, 2, 2, 4, 3, 3, "none", ())
    with pytest.raises(GraphError, match="3-D Q needs q_num_heads > 0"):
        op_model(arrays, {})
    five = [np.zeros((1, 1, 2, 3, 4), np.float32)] * 3
    with pytest.raises(GraphError, match="Q has rank 5"):
        op_model(five, {})
