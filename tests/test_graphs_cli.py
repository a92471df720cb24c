"""`edgeattn inspect`, `rewrite` and `ops` through click's CliRunner, and their one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner

from edgeattn.cli.main import cli, main
from edgeattn.errors import RecipeError

from graphs_golden import RTOL_FLOAT32, Dialect, build, parity


@pytest.fixture()
def model_path(tmp_path: Path) -> Path:
    path = tmp_path / "decoder.onnx"
    onnx.save_model(build(Dialect(layers=2, gqa=True, heads=4, kv_heads=2)).model, path)
    return path


def _run(*args: str) -> dict:
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_ops_lists_attention_and_its_attributes() -> None:
    result = CliRunner().invoke(cli, ["ops"])
    assert result.exit_code == 0
    assert "edgeattn.Attention (version 1, kind attention)" in result.output
    assert "causal: int = 0 [from site]" in result.output
    ops = _run("ops", "--json")["ops"]
    assert ops[0]["name"] == "Attention" and {a["name"] for a in ops[0]["attributes"]} >= {"scale", "causal"}


def test_inspect_json_has_sites_ops_and_unmatched(model_path: Path) -> None:
    data = _run("inspect", str(model_path), "--json")
    assert data["component"] == "decoder" and data["edgeattn_ops"] == {} and data["unmatched"] == []
    assert [s["layer"] for s in data["sites"]] == [0, 1]
    site = data["sites"][0]
    assert {k: site[k] for k in ("dialect", "num_heads", "kv_num_heads", "head_size", "causal")} == {
        "dialect": "eager", "num_heads": 4, "kv_num_heads": 2, "head_size": 8, "causal": False}
    assert site["name"].startswith("/layers.0/attn/Softmax")


def test_rewrite_json_then_inspect_shows_the_ops_and_rule(model_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "out" / "decoder.onnx"
    data = _run("rewrite", str(model_path), str(out), "--json")
    assert data["output"] == str(out) and data["target"] == "ort" and data["refused"] == []
    assert [r["rule"] for r in data["rewritten"]] == ["DecomposedAttention"] * 2
    assert parity(str(model_path), str(out), build(Dialect(layers=2, gqa=True, heads=4, kv_heads=2)).feeds()) < RTOL_FLOAT32
    inspected = _run("inspect", str(out), "--json")
    assert inspected["edgeattn_ops"] == {"Attention": 2}
    assert {n["rule"] for n in inspected["edgeattn_nodes"]} == {"DecomposedAttention"}
    text = CliRunner().invoke(cli, ["inspect", str(out)]).output
    assert "edgeattn ops: {'Attention': 2}" in text and "rule DecomposedAttention" in text


def test_rewrite_text_reports_refusals(tmp_path: Path) -> None:
    golden = build(Dialect(layers=2))
    softmax = next(n for n in golden.model.graph.node if n.op_type == "Softmax")
    golden.model.graph.output.append(onnx.helper.make_tensor_value_info(softmax.output[0], onnx.TensorProto.FLOAT, None))
    path = tmp_path / "model.onnx"
    onnx.save_model(golden.model, path)
    result = CliRunner().invoke(cli, ["rewrite", str(path), str(tmp_path / "out.onnx"), "--target", "trt"])
    assert result.exit_code == 0, result.output
    assert "1 sites rewritten for trt" in result.output
    assert "refused /layers.0/attn/Softmax" in result.output and "is a graph output" in result.output
    text = CliRunner().invoke(cli, ["inspect", str(path)]).output
    assert "unmatched Softmax /layers.0/attn/Softmax" in text


def test_recipe_errors_and_models_without_attention_exit_1_with_one_line(model_path: Path, tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    recipe = tmp_path / "recipe.toml"
    recipe.write_text('[[site]]\nlayers = "5-1"\n')
    result = CliRunner().invoke(cli, ["rewrite", str(model_path), str(tmp_path / "o.onnx"), "--recipe", str(recipe)])
    assert isinstance(result.exception, RecipeError)
    with pytest.raises(SystemExit) as exited:
        main(["rewrite", str(model_path), str(tmp_path / "o.onnx"), "--recipe", str(recipe)])
    assert exited.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: 'layers' in [[site]] #1 of") and "reversed range '5-1'" in err[-1]
    plain = tmp_path / "plain.onnx"
    graph = onnx.helper.make_graph([onnx.helper.make_node("Relu", ["x"], ["y"])], "g",
                                   [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])],
                                   [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])])
    onnx.save_model(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)]), plain)
    with pytest.raises(SystemExit):
        main(["rewrite", str(plain), str(tmp_path / "p.onnx")])
    assert "error: no attention site matched in" in capsys.readouterr().err
    assert not (tmp_path / "p.onnx").exists()
    with pytest.raises(SystemExit):
        main(["inspect", str(tmp_path / "missing.onnx")])
    assert "no such file" in capsys.readouterr().err
