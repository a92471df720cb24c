"""Recipes: selecting sites by component, layers and name, choosing ops and parameters (including a
tunable parameter read from a graph input, with a test-only op), and every kind of recipe error."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from edgeattn.errors import GraphError, RecipeError
from edgeattn.graphs import Recipe, find_sites, rewrite
from edgeattn.ops.attention.function import build_function as attention_body
from edgeattn.ops.registry import default_registry, get_op
from edgeattn.ops.spec import AttrSpec, CallFacts, IOSpec, OpSpec
from edgeattn.ops.attention.spec import SITE_INPUTS

from graphs_golden import RTOL_FLOAT32, Dialect, build, parity, relative_error, session

THREE_LAYERS = Dialect(layers=3, mask="bool_keep")


def _rewrite(recipe: Any, component: str | None = "decoder", registry: Any = None) -> tuple[onnx.ModelProto, Any]:
    model, report = rewrite(build(THREE_LAYERS).model, recipe, component=component, registry=registry)
    return ir.serde.serialize_model(model), report


def _edgeattn_layers(proto: onnx.ModelProto) -> list[str]:
    return sorted(next(p.value for p in n.metadata_props if p.key == "edgeattn.layer")
                  for n in proto.graph.node if n.domain == "edgeattn")


def test_layers_of_a_golden_model_come_from_node_names() -> None:
    sites = find_sites(ir.serde.deserialize_model(build(THREE_LAYERS).model)).sites
    assert [s.layer for s in sites] == [0, 1, 2]
    assert [s.name.split("/")[1] for s in sites] == ["layers.0", "layers.1", "layers.2"]


def test_keep_leaves_selected_sites_as_they_are_with_parity() -> None:
    recipe = {"site": [{"layers": "1", "op": "keep"}]}
    proto, report = _rewrite(recipe)
    assert _edgeattn_layers(proto) == ["0", "2"]
    assert [n.op_type for n in proto.graph.node].count("Softmax") == 1
    assert len(report.kept) == 1 and "layers.1" in report.kept[0]
    golden = build(THREE_LAYERS)
    assert parity(golden.model, proto, golden.feeds()) < RTOL_FLOAT32


def test_default_op_keep_and_later_entries_override_earlier_ones() -> None:
    recipe = {"default_op": "keep", "site": [{"layers": "0-2"}, {"layers": [0, 2], "op": "keep"}]}
    proto, _ = _rewrite(recipe)
    assert _edgeattn_layers(proto) == ["1"]


def test_entries_for_other_components_are_skipped_and_names_are_globs() -> None:
    recipe = {"default_op": "keep", "site": [{"component": "vision", "op": "Attention"},
                                             {"component": "dec*", "name": "/layers.2/*"}]}
    proto, _ = _rewrite(recipe, component="decoder")
    assert _edgeattn_layers(proto) == ["2"]


def test_recipe_file_is_read_from_toml(tmp_path: Path) -> None:
    path = tmp_path / "recipe.toml"
    path.write_text('version = 1\ndefault_op = "keep"\n\n[[site]]\nlayers = "1-2"\nop = "Attention"\n')
    proto, _ = _rewrite(path)
    assert _edgeattn_layers(proto) == ["1", "2"]


RECIPE_ERRORS = {
    "unknown-top-key": ({"sites": []}, "unknown key 'sites' in the top level of <recipe>; known keys: version, default_op, site"),
    "unknown-entry-key": ({"site": [{"layer": "1"}]}, "unknown key 'layer' in [[site]] #1 of <recipe>"),
    "unknown-op": ({"site": [{"op": "FlashAttention"}]}, "asks for op 'FlashAttention', which is not registered"),
    "site-attribute": ({"site": [{"scale": 0.5}]}, "sets 'scale', which Attention takes from the site itself"),
    "reversed-range": ({"site": [{"layers": "3-1"}]}, "has the reversed range '3-1'; write it as \"1-3\""),
    "malformed-range": ({"site": [{"layers": "one-two"}]}, "has the bad range 'one-two'"),
    "negative-layer": ({"site": [{"layers": [-1]}]}, "must list numbers >= 0"),
    "beyond-last-layer": ({"site": [{"layers": "0-40"}]}, "asks for layers 0-40, but the last layer is 2"),
    "selects-nothing": ({"site": [{"name": "*cross_attn*"}]}, "selects no attention site; the 3 sites are named like"),
    "not-tunable": ({"site": [{"inputs": {"scale": "s"}}]}, "'scale', which is not a tunable parameter of Attention"),
    "version": ({"version": 2}, "has version 2; this edgeattn reads version 1"),
    "site-not-table": ({"site": "all"}, "must be an array of tables"),
}


@pytest.mark.parametrize("name", list(RECIPE_ERRORS))
def test_recipe_errors_are_sentences(name: str) -> None:
    recipe, message = RECIPE_ERRORS[name]
    with pytest.raises(RecipeError) as caught:
        _rewrite(recipe)
    assert message in str(caught.value)


def test_component_selection_needs_a_known_component() -> None:
    with pytest.raises(RecipeError, match="model's component is unknown; pass --component"):
        _rewrite({"site": [{"component": "decoder"}]}, component=None)


def test_recipe_file_errors(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="does not exist"):
        Recipe.load(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[[site]\nlayers = 1\n")
    with pytest.raises(RecipeError, match="is not valid TOML"):
        Recipe.load(bad)


# A test-only op of kind "attention" with a tunable parameter: Y = Attention(Q, K, V, mask) * temperature.
# It shows what a later op package provides, and exercises recipes' parameters and graph inputs.
def _scaled_body(call: CallFacts, target: str, overload: str) -> ir.Function:
    attention = CallFacts(call.attributes, call.inputs[:4], call.opset)
    function = attention_body(attention, target, overload)  # type: ignore[arg-type]
    graph = function.graph
    temperature = ir.Value(name="temperature")
    graph.inputs.append(temperature)
    old = graph.outputs[0]
    old.name = "Y_unscaled"
    cast = ir.node("CastLike", [temperature, old], name="cast_temperature")
    scaled = ir.node("Mul", [old, cast.outputs[0]], name="scale_output")
    cast.outputs[0].name, scaled.outputs[0].name = "temperature_cast", "Y"
    graph.extend([cast, scaled])
    graph.outputs[0] = scaled.outputs[0]
    function.name = "ScaledAttention"
    function.attributes.add(ir.Attr("note", ir.AttributeType.STRING, ""))
    return function


def _scaled_attention() -> OpSpec:
    attention = get_op("Attention")
    return dataclasses.replace(
        attention,
        name="ScaledAttention",
        inputs=(*SITE_INPUTS, IOSpec("temperature", "output factor", optional=True, tunable_for="temperature")),
        attributes=(*attention.attributes, AttrSpec("temperature", "float", 1.0, "output factor", tunable=True),
                    AttrSpec("note", "string", "", "free text")),
        function_key=lambda call, target: "r" + attention.function_key(
            CallFacts(call.attributes, call.inputs[:4], call.opset), target),
        build_function=_scaled_body,
    )


def test_an_op_from_another_package_gets_parameters_and_a_graph_input() -> None:
    registry = default_registry().with_op(_scaled_attention())
    recipe = {"site": [{"layers": "0-1", "op": "ScaledAttention", "note": "first two",
                        "inputs": {"temperature": "temperature"}}]}
    proto, report = _rewrite(recipe, registry=registry)
    assert [r.op for r in report.rewritten] == ["ScaledAttention", "ScaledAttention", "Attention"]
    scaled = [n for n in proto.graph.node if n.op_type == "ScaledAttention"]
    assert all(n.input[4] == "temperature" for n in scaled)
    assert {a.name: onnx.helper.get_attribute_value(a) for a in scaled[0].attribute}["note"] == b"first two"
    assert [i.name for i in proto.graph.input][-1] == "temperature"
    onnx.checker.check_model(proto, full_check=True)
    golden = build(THREE_LAYERS)
    feeds = golden.feeds()
    base = session(golden.model).run(None, feeds)
    same = session(proto).run(None, {**feeds, "temperature": np.array(1.0, np.float32)})
    assert relative_error(base, same) < RTOL_FLOAT32
    doubled = session(proto).run(None, {**feeds, "temperature": np.array(2.0, np.float32)})
    assert relative_error(base, doubled) > 0.1
    with pytest.raises(GraphError, match="reads 'temperature' from a graph input"):
        rewrite(proto, target="trt", registry=registry)


def test_existing_edgeattn_nodes_change_only_when_an_entry_selects_them() -> None:
    registry = default_registry().with_op(_scaled_attention())
    once, _ = _rewrite(None)
    again, report = rewrite(once, {"default_op": "ScaledAttention"}, component="decoder", registry=registry)
    assert report.rewritten == ()
    third, report = rewrite(again, {"site": [{"layers": "2", "op": "ScaledAttention", "temperature": 0.5}]},
                            component="decoder", registry=registry)
    assert [(r.layer, r.op) for r in report.rewritten] == [(2, "ScaledAttention")]
    node = next(n for n in third.graph if n.op_type == "ScaledAttention")
    assert node.attributes["temperature"].value == 0.5 and node.attributes["q_num_heads"].value == 4
