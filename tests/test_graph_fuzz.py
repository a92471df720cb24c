"""1,000 generated graphs (tests/fuzz_graphs.py) through `inspect` and `rewrite`: each ends in success or
a clean refusal (an EdgeAttnError), never another exception; a model onnxruntime runs still runs after
the rewrite and computes the same outputs. A subset goes through the real CLI too.

A failure names the case: `python -c "import sys; sys.path.insert(0, 'tests'); import fuzz_graphs;
print(fuzz_graphs.case(INDEX).description)"` rebuilds it (fuzz_graphs.case(INDEX).model is the graph).
"""

from __future__ import annotations

import json
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from edgeattn.cli.main import cli
from edgeattn.errors import EdgeAttnError
from edgeattn.graphs import as_model, find_sites, rewrite

import fuzz_graphs
from graphs_golden import RTOL_FLOAT32

# Parity bound. float32 graphs: RTOL_FLOAT32 = 1e-5 relative error (max|a-b| / max|a|), the bound every
# graph test uses: the rewrite only regroups the same float32 operations (scale folded into one Mul,
# masks summed), which moves results by a few ulps (float32 eps 1.2e-7) times the softmax/MatMul depth.
TOLERANCE = RTOL_FLOAT32
CASES = range(fuzz_graphs.COUNT)


class Crash(AssertionError):
    pass


def _guarded(what: str, case: fuzz_graphs.Case, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """fn(*args); None on an EdgeAttnError (a clean refusal); any other exception fails the case."""
    try:
        return fn(*args, **kwargs)
    except EdgeAttnError:
        return None
    except Exception as err:  # noqa: BLE001 - the point of the test
        raise Crash(f"{what} crashed with {type(err).__name__}: {err}\n{case.description}\n"
                    f"{traceback.format_exc()}") from err


def _node_names(graph: onnx.GraphProto) -> list[str]:
    names = []
    for node in graph.node:
        names.append(node.name)
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                names += _node_names(attr.g)
    return names


def _has_duplicate_node_names(model: onnx.ModelProto) -> bool:
    names = [n for n in _node_names(model.graph) if n]
    return len(names) != len(set(names))


def _unique_node_names(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose non-empty node names are unique (onnxruntime refuses duplicates; names carry no meaning)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    seen: set[str] = set()

    def visit(graph: onnx.GraphProto) -> None:
        for node in graph.node:
            if node.name:
                name, count = node.name, 0
                while name in seen:
                    count += 1
                    name = f"{node.name}#{count}"
                node.name = name
                seen.add(name)
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    visit(attr.g)

    visit(copy.graph)
    return copy


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray], unique_names: bool) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 4  # many generated graphs are rejected on purpose: their errors are noise
    data = (_unique_node_names(model) if unique_names else model).SerializeToString()
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"]).run(None, feeds)


def _inspect(model: onnx.ModelProto, component: str) -> dict[str, Any]:
    """What `edgeattn inspect --json` computes (imported where the command imports them)."""
    from edgeattn.graphs.pruning import pruning_nodes
    from edgeattn.graphs.sparse.lower_ort import lowered_sites

    loaded = as_model(model)
    report = find_sites(loaded, component)
    data = {**report.to_json(), "lowered": lowered_sites(loaded), "pruning": pruning_nodes(loaded)}
    json.dumps(data, default=str)
    return data


def _rewrite(model: onnx.ModelProto, target: str, component: str) -> tuple[onnx.ModelProto, Any]:
    """What `edgeattn rewrite` computes (without the file): the rewritten model as a proto and the report."""
    rewritten, report = rewrite(model, target=target, component=component)  # type: ignore[arg-type]
    json.dumps(report.to_json(), default=str)
    return ir.serde.serialize_model(rewritten), report


def _compare(case: fuzz_graphs.Case, target: str, expected: list[np.ndarray], proto: onnx.ModelProto) -> None:
    try:
        # node names the input repeated may stay repeated; edgeattn's own must be unique
        got = _run(proto, case.feeds, unique_names=_has_duplicate_node_names(case.model))
    except Exception as err:  # noqa: BLE001
        raise AssertionError(f"rewritten ({target}) model does not run, the original does: "
                             f"{type(err).__name__}: {err}\n{case.description}") from err
    assert len(got) == len(expected), case.description
    for a, b in zip(expected, got):
        a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
        assert a64.shape == b64.shape, f"{target}: output shape {b64.shape} != {a64.shape}\n{case.description}"
        diff = np.abs(a64 - b64)
        scale = float(np.abs(a64).max()) if a64.size else 0.0
        error = float(diff.max()) / scale if scale else float(diff.max()) if diff.size else 0.0
        assert np.isfinite(b64).all() and error <= TOLERANCE, (
            f"{target}: relative error {error:.3g} > {TOLERANCE:g}\n{case.description}")


def check_case(case: fuzz_graphs.Case) -> str:
    """Inspect and rewrite one case; returns its outcome (for the summary)."""
    component = f"fuzz{case.index}"
    expected = None
    if case.runnable:
        try:
            expected = _run(case.model, case.feeds, unique_names=True)
        except Exception:  # noqa: BLE001 - a graph onnxruntime cannot run: only "no crash" is checked
            pass
    if expected is not None and not all(np.isfinite(np.asarray(x, np.float64)).all() for x in expected):
        # overflow (a hostile scale of 1e30): where inf and NaN land depends on the order of operations,
        # which a rewrite may change; such a reference proves nothing
        expected = None
    _guarded("inspect", case, _inspect, case.model, component)
    outcome = "refused"
    for target in ("ort", "trt") if case.trt else ("ort",):
        result = _guarded(f"rewrite --target {target}", case, _rewrite, case.model, target, component)
        if result is None:
            continue
        proto, report = result
        if report.rewritten:
            outcome = "rewritten"
        elif outcome == "refused":
            outcome = "unchanged"
        _guarded(f"inspect of the {target} rewrite", case, _inspect, proto, component)
        if expected is not None and case.parity:
            _compare(case, target, expected, proto)
        if target == "ort" and report.rewritten and case.index % 4 == 0:
            again = _guarded("second rewrite", case, _rewrite, proto, "ort", component)
            if again is not None and expected is not None and case.parity:
                assert again[1].rewritten == () or all(r.dialect == "edgeattn" for r in again[1].rewritten)
                _compare(case, "ort twice", expected, again[0])
    return outcome + ("" if expected is not None else "/no-ort")


@pytest.mark.parametrize("index", CASES, ids=lambda i: f"case{i:04d}")
def test_generated_graph_inspects_and_rewrites_cleanly(index: int) -> None:
    check_case(fuzz_graphs.case(index))


CLI_CASES = [i for i in CASES if i % 50 == 7]


@pytest.mark.parametrize("index", CLI_CASES, ids=lambda i: f"case{i:04d}")
def test_generated_graph_through_the_cli(index: int, tmp_path: Path) -> None:
    case = fuzz_graphs.case(index)
    path = tmp_path / f"fuzz{index}.onnx"
    onnx.save_model(case.model, path)
    runs = [["inspect", str(path), "--json"], ["inspect", str(path)],
            ["rewrite", str(path), str(tmp_path / "out.onnx"), "--json"],
            ["rewrite", str(path), str(tmp_path / "out_trt.onnx"), "--target", "trt"]]
    for args in runs:
        result = CliRunner().invoke(cli, args)
        context = f"edgeattn {' '.join(args[:1])} -> {result.exit_code}: {result.output[-2000:]}\n{case.description}"
        assert result.exit_code in (0, 1), context
        assert "Traceback" not in result.output, context
        if result.exit_code == 1:
            # CliRunner catches what `main`'s error boundary would: only a user error may end the command
            assert isinstance(result.exception, (SystemExit, EdgeAttnError)), (
                f"{context}\n{''.join(traceback.format_exception(result.exception))}")


def test_the_generator_is_deterministic_and_covers_every_family() -> None:
    first, again = fuzz_graphs.case(123), fuzz_graphs.case(123)
    assert first.description == again.description
    assert first.model.SerializeToString(deterministic=True) == again.model.SerializeToString(deterministic=True)
    assert all(np.array_equal(first.feeds[k], again.feeds[k]) for k in first.feeds)
    families = {fuzz_graphs.case(i).family for i in range(0, fuzz_graphs.COUNT, 7)}
    assert families == {f for f, _ in fuzz_graphs.FAMILIES}


# ------------------------------------------------------------------------------------------------
# Regressions: each crash (or silently wrong rewrite) the generator found, as one focused graph.

from onnx import TensorProto, helper  # noqa: E402

from edgeattn.graphs import values  # noqa: E402

from graphs_golden import Dialect, build, parity  # noqa: E402


def _refusals(model: onnx.ModelProto) -> list[str]:
    report = find_sites(as_model(model))
    return [reason for item in report.unmatched for reason in item.reasons]


def _scale_constants(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    return fuzz_graphs._scale_constants(model)


@pytest.mark.parametrize("value", [0.0, float("inf"), float("nan"), 1e-30 ** 2])
def test_a_scale_that_is_not_a_positive_float32_is_refused(value: float) -> None:
    """A negative or zero scale was written as is, and the op reads scale <= 0 as 1/sqrt(d): a wrong
    result (relative error 1.37); inf crashed in assign_op with a ValueError. Fixed in
    rules/base.py:attention_attributes (a negative scale is now rewritten exactly: the test below)."""
    model = build(Dialect(scale="after_div" if value else "after_mul")).model
    (tensor,) = _scale_constants(model)
    fuzz_graphs._set_tensor(tensor, np.array(value if value else 0.0, np.float32))
    if value == 1e-30 ** 2:  # a float64 product that is 0 in float32: 1e-30 on Q and on Kᵀ
        model = build(Dialect(scale="sqrt_q_k")).model
        for tensor in _scale_constants(model):
            fuzz_graphs._set_tensor(tensor, np.array(1e-30, np.float32))
    assert any("is not a positive finite float32" in r for r in _refusals(model)), _refusals(model)
    rewritten, report = rewrite(model)
    assert report.rewritten == () and not any(n.domain == "edgeattn" for n in rewritten.graph)


def test_a_negative_scale_becomes_its_magnitude_on_minus_q() -> None:
    from graphs_golden import parity

    golden = build(Dialect(scale="after_div"))
    (tensor,) = _scale_constants(golden.model)
    fuzz_graphs._set_tensor(tensor, np.array(-1.0, np.float32))
    rewritten, report = rewrite(golden.model)
    assert len(report.rewritten) == 1 and any(n.op_type == "Neg" for n in rewritten.graph)
    proto = ir.serde.serialize_model(rewritten)
    assert parity(golden.model, proto, golden.feeds()) < RTOL_FLOAT32


def _onnx_attention(**attrs: Any) -> onnx.ModelProto:
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["B", "S", 8]) for n in ("q", "k", "v")]
    node = helper.make_node("Attention", ["q", "k", "v"], ["y"], name="attention", **attrs)
    graph = helper.make_graph([node], "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)], ir_version=10)


@pytest.mark.parametrize(("attrs", "reason"), [
    ({"q_num_heads": 2, "kv_num_heads": 2, "scale": 0.0}, "scale attribute 0 is not a positive finite number"),
    ({"q_num_heads": 2, "kv_num_heads": 2, "scale": -0.5}, "scale attribute -0.5 is not a positive finite number"),
    ({"q_num_heads": 0, "kv_num_heads": 2}, "q_num_heads 0 of Attention is not a positive head count"),
    ({"q_num_heads": 3, "kv_num_heads": 2}, "q_num_heads 3 does not divide the hidden size 8"),
    ({"q_num_heads": 2, "kv_num_heads": 2, "is_causal": "yes"}, "attribute 'is_causal' of the Attention node"),
])
def test_onnx_attention_attributes_are_checked(attrs: dict, reason: str) -> None:
    """An explicit ONNX Attention scale of 0 multiplies the scores by 0; it was read as 'default'
    (relative error 0.84). Head counts of 0 or that do not divide the hidden size, and attributes of the
    wrong type, are refused (rules/fused.py:_default_scale, _heads; rules/base.py:attribute)."""
    model = _onnx_attention(**attrs)
    assert any(reason in r for r in _refusals(model)), _refusals(model)
    assert rewrite(model)[1].rewritten == ()


def test_onnx_attention_with_positive_scale_is_still_rewritten_with_parity() -> None:
    model = _onnx_attention(q_num_heads=2, kv_num_heads=2, scale=0.3)
    rewritten, report = rewrite(model)
    assert len(report.rewritten) == 1
    rng = np.random.default_rng(0)
    feeds = {n: rng.standard_normal((2, 5, 8)).astype(np.float32) for n in ("q", "k", "v")}
    assert parity(model, ir.serde.serialize_model(rewritten), feeds) <= RTOL_FLOAT32


@pytest.mark.parametrize("op", ["Attention", "MultiHeadAttention"])
@pytest.mark.parametrize("heads", [0, -2, 5])
def test_ms_ops_with_a_bad_head_count_are_refused(op: str, heads: int) -> None:
    """com.microsoft.Attention with num_heads=0 raised ZeroDivisionError (rules/fused.py)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "S", 12])
    if op == "Attention":
        inputs, names = [x], ["x", "w", "b"]
        inits = [fuzz_graphs._const("w", np.zeros((12, 36))), fuzz_graphs._const("b", np.zeros(36))]
    else:
        inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["B", "S", 12]) for n in ("x", "k", "v")]
        names, inits = ["x", "k", "v"], []
    node = helper.make_node(op, names, ["y"], domain="com.microsoft", name="ms", num_heads=heads)
    graph = helper.make_graph([node], "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    imports = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=imports)
    reasons = _refusals(model)
    assert any(f"num_heads {heads}" in r for r in reasons), reasons
    assert rewrite(model)[1].rewritten == ()


@pytest.mark.parametrize("change", ["attribute_type", "layer_text"])
def test_rewritten_nodes_with_tampered_attributes_or_metadata_are_inspected(change: str) -> None:
    """detect.py:_existing_site read an edgeattn node's scale with get_float (TypeError when it is a
    STRING) and its layer with int() on any str.isdigit() text (ValueError on '²')."""
    rewritten, _ = rewrite(build(Dialect()).model)
    proto = ir.serde.serialize_model(rewritten)
    node = next(n for n in proto.graph.node if n.domain == "edgeattn")
    if change == "attribute_type":
        index = next(i for i, a in enumerate(node.attribute) if a.name == "scale")
        node.attribute[index].CopyFrom(helper.make_attribute("scale", "0.5"))
    else:
        for prop in node.metadata_props:
            if prop.key == "edgeattn.layer":
                prop.value = "²"
    site = find_sites(as_model(proto)).sites[0]
    assert site.dialect == "edgeattn"
    assert site.layer == 0  # unreadable: the site's position
    if change == "attribute_type":
        with pytest.raises(EdgeAttnError, match="attribute 'scale' takes a float"):
            rewrite(proto)


def test_a_constant_whose_value_is_not_a_tensor_is_not_static() -> None:
    """values.py:static_array let get_const_tensor's TypeError out (a Constant with value=INTS)."""
    model = build(Dialect(constants="node")).model
    mul = next(n for n in model.graph.node if n.op_type == "Mul")
    constant = next(n for n in model.graph.node if n.op_type == "Constant" and n.output[0] in mul.input)
    constant.attribute[0].CopyFrom(helper.make_attribute("value", [1, 2]))
    assert any("not a constant scalar" in r for r in _refusals(model))


def test_the_score_chain_reason_stops_at_a_constant_fill() -> None:
    """reasons.py:_score_chain followed Where's fill (a Constant node, no inputs): IndexError."""
    model = build(Dialect(mask="bool_drop", constants="node")).model
    fuzz_graphs._softcap(None, model, None, None)
    assert any("there is Tanh, not a scale/mask/cast chain" in r for r in _refusals(model)), _refusals(model)


def test_a_softmax_without_outputs_is_not_attention() -> None:
    """reasons.py:_value_matmuls read softmax.outputs[0] of a Softmax with none: IndexError."""
    nodes = [helper.make_node("Softmax", ["q"], [], name="bare"), helper.make_node("Identity", ["q"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("q", TensorProto.FLOAT, ["B", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert _refusals(model) == [
        "no MatMul takes this Softmax's output as attention weights (not an attention softmax)"]


@pytest.mark.parametrize("attribute", ["perm_length", "perm_type", "axis_type", "axis_ref"])
def test_attributes_of_the_wrong_shape_or_type_are_refused(attribute: str) -> None:
    """A Transpose perm shorter than K's rank crashed in operands.compose (IndexError); attributes of
    another type (or references outside a function) raised TypeError from onnx_ir's get_int/get_ints.
    Now: rules/base.py:attribute and operands.py:read_key refuse them with the reason."""
    model = onnx.shape_inference.infer_shapes(build(Dialect()).model)  # ranks known before the tampering
    transpose = next(n for n in model.graph.node if n.op_type == "Transpose")
    softmax = next(n for n in model.graph.node if n.op_type == "Softmax")
    if attribute == "perm_length":
        transpose.attribute[0].CopyFrom(helper.make_attribute("perm", [1, 0]))
        expected = "the Transpose of K has perm [1, 0], not a permutation of its 4 axes"
    elif attribute == "perm_type":
        transpose.attribute[0].CopyFrom(helper.make_attribute("perm", "0,1,3,2"))
        expected = "attribute 'perm' of the Transpose node"
    elif attribute == "axis_type":
        softmax.attribute[0].CopyFrom(helper.make_attribute("axis", -1.0))
        expected = "attribute 'axis' of the Softmax node"
    else:
        softmax.attribute[0].CopyFrom(onnx.AttributeProto(name="axis", ref_attr_name="a", type=onnx.AttributeProto.INT))
        expected = "is a reference to 'a', not INT"
    reasons = _refusals(model)
    assert any(expected in r for r in reasons), reasons
    assert rewrite(model)[1].rewritten == ()


@pytest.mark.parametrize("pick", ["gather_out_of_range", "slice_step_zero", "gather_without_indices"])
def test_shape_vectors_with_impossible_picks_are_unknown(pick: str) -> None:
    """values.py:_pick indexed a shape vector with a Gather index out of range (IndexError), sliced it
    with step 0 (ValueError) and read a Gather's missing indices (IndexError); they are unknown now."""
    inits = [fuzz_graphs._const(n, v, np.int64) for n, v in (("i7", [7]), ("s0", [0]), ("e2", [2]), ("a0", [0]))]
    picks = {"gather_out_of_range": helper.make_node("Gather", ["shape", "i7"], ["picked"]),
             "slice_step_zero": helper.make_node("Slice", ["shape", "s0", "e2", "a0", "s0"], ["picked"]),
             "gather_without_indices": helper.make_node("Gather", ["shape"], ["picked"])}
    nodes = [helper.make_node("Shape", ["x"], ["shape"]), picks[pick]]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 4, "T", 8])],
                              [helper.make_tensor_value_info("picked", TensorProto.INT64, None)], inits)
    model = as_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    picked = model.graph.outputs[0]
    assert values.shape_vector(picked) is None
    assert values.static_array(picked) is None


def test_static_values_read_through_a_shared_chain_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """values.py:static_array walked every path: a scale computed as x+x, (x+x)+(x+x), ... 18 deep took
    27 s to inspect (2**depth evaluations; 24 deep: half an hour). Results are memoised per call now."""
    calls = []
    add = values._EVALUATORS["Add"]
    monkeypatch.setitem(values._EVALUATORS, "Add", lambda node, depth: calls.append(node) or add(node, depth))
    depth = 20
    model = fuzz_graphs.deep_chain(Dialect(), "scale", depth)
    report = find_sites(as_model(model))
    assert [site.scale for site in report.sites] == [pytest.approx(8 ** -0.5)]
    assert len(calls) <= 20 * depth * depth, len(calls)  # polynomial; 2**20 before


def test_inspect_writes_no_file_into_the_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """onnxruntime's SymbolicShapeInference.infer_shapes saves sym_shape_infer_temp.onnx into the current
    directory when its inference is incomplete (an op it does not know); shapes.py:_symbolic_shapes runs
    it without that side effect."""
    nodes = [helper.make_node("Mystery", ["x"], ["s"], domain="custom"), helper.make_node("Softmax", ["s"], ["p"]),
             helper.make_node("MatMul", ["p", "v"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 4, "S", "T"]),
                                           helper.make_tensor_value_info("v", TensorProto.FLOAT, ["B", 4, "T", 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("custom", 1)])
    monkeypatch.chdir(tmp_path)
    find_sites(as_model(model))
    rewrite(model)
    assert list(tmp_path.iterdir()) == []
