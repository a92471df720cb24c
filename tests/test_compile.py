"""`edgeattn compile`: real TensorRT engines built on this machine (no GPU) by TensorRT-RTX for SM89.

Every edgeattn op in its TensorRT form builds with no plugin registered (TensorRT inlines the function body),
and runs in onnxruntime like the onnxruntime form; exported folders (a rewritten decoder, a pruned VLM vision
component, a block-sparse decoder) compile into engines whose layers and compile.json are checked.

The TensorRT tests skip, with the pip line as the reason, where `tensorrt_rtx` does not import, unless
EDGEATTN_REQUIRE_TRT=1 (what `make test`, i.e. CI, sets): then they fail instead.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from click.testing import CliRunner

from edgeattn.cli.main import cli
from edgeattn.errors import EdgeAttnError, RuntimeUnavailableError
from edgeattn.graphs.attach import attach_bodies
from edgeattn.ops.registry import default_registry, get_op
from edgeattn.runtime import tensorrt as rt
from tests.models.sparse_graphs import session

REQUIRED = os.environ.get("EDGEATTN_REQUIRE_TRT") == "1"
HAVE_RTX = importlib.util.find_spec("tensorrt_rtx") is not None
F, I64, BOOL = ir.DataType.FLOAT, ir.DataType.INT64, ir.DataType.BOOL
ARCH = "sm_89"


def _skip_without_trt() -> None:
    """Skip (or, with EDGEATTN_REQUIRE_TRT=1, go on and fail) where TensorRT-RTX is not installed."""
    if not HAVE_RTX and not REQUIRED:
        pytest.skip(f"TensorRT-RTX is not installed: pip install {rt.RTX_PIN} (make test installs it and sets "
                    "EDGEATTN_REQUIRE_TRT=1, which turns this skip into a failure)")


@pytest.fixture
def trt_ready() -> None:
    _skip_without_trt()


# -- one node of every op --------------------------------------------------------------------------------

R = np.random.default_rng(0)


def _f(*shape: int) -> np.ndarray:
    return R.standard_normal(shape).astype(np.float32)


B, H, HKV, S, D, N = 1, 4, 2, 32, 8, 24
Q4, K4, V4 = _f(B, H, S, D), _f(B, HKV, S, D), _f(B, HKV, S, D)
PADDING = np.ones((B, 1, 1, S), bool)
PADDING[0, 0, 0, :2] = False
BLOCK_MASK = np.ones((B, HKV, 2, 2), bool)
BLOCK_MASK[0, :, 1, 0] = False

# (id, op, inputs (None: absent), attributes, outputs (name, type, rank))
NODE_CASES: list[tuple[str, str, list, dict[str, Any], list[tuple[str, Any, int]]]] = [
    ("attention-3d-gqa-bool-mask", "Attention",
     [_f(B, S, H * D), _f(B, S, HKV * D), _f(B, S, HKV * D), np.tril(np.ones((S, S), bool))],
     {"q_num_heads": H, "kv_num_heads": HKV}, [("Y", F, 3)]),
    ("attention-4d-causal", "Attention", [Q4, K4, V4], {"causal": 2}, [("Y", F, 4)]),
    ("skip-softmax-padding-mask", "SkipSoftmaxAttention", [Q4, K4, V4, PADDING],
     {"scale_factor": 4.0, "block_m": 16, "block_n": 8, "causal": 2}, [("Y", F, 4)]),
    ("block-select", "BlockSelect", [Q4, K4], {"block_size": 16, "keep": 0.5, "causal": 1}, [("block_mask", BOOL, 4)]),
    ("block-sparse-select", "BlockSparseAttention", [Q4, K4, V4],
     {"layout": "select", "block_size": 16, "keep": 0.5, "causal": 1}, [("Y", F, 4)]),
    ("block-sparse-window", "BlockSparseAttention", [Q4, K4, V4, PADDING],
     {"layout": "window", "window": 8, "sinks": 2, "block_size": 16, "causal": 1}, [("Y", F, 4)]),
    ("block-sparse-mask-skips-an-input", "BlockSparseAttention", [Q4, K4, V4, None, BLOCK_MASK],
     {"layout": "mask", "block_size": 16}, [("Y", F, 4)]),
    ("token-score-cls", "TokenScore", [_f(B, H, N + 1, D), _f(B, H, N + 1, D)], {"source": "cls"}, [("scores", F, 2)]),
    ("token-score-text-prior", "TokenScore", [_f(B, N, D), _f(B, 5, D), np.abs(_f(B, N))], {"source": "text"},
     [("scores", F, 2)]),
    ("token-score-weights-skip-prior", "TokenScore", [_f(B, N, 3, D), _f(B, N, 3, D), None, np.abs(_f(N))],
     {"source": "sensitivity"}, [("scores", F, 2)]),
    *[(f"token-select-{mode}", "TokenSelect", [np.abs(_f(B, N)), _f(B, N + 1, D)],
       {"k": 6, "mode": mode, "prefix": 1, "regions": 4}, [("selected", F, 3), ("kept_indices", I64, 2)])
      for mode in ("topk", "regions", "diversity", "maxmin")],
    ("token-select-keys-skip-num-tokens", "TokenSelect", [np.abs(_f(B, N)), _f(B, N, D), None, _f(B, N, 4)],
     {"k": 5, "mode": "maxmin"}, [("selected", F, 3), ("kept_indices", I64, 2)]),
]


def node_model(op: str, arrays: list, attrs: dict[str, Any], outputs: list[tuple[str, Any, int]],
               target: str) -> ir.Model:
    """One edgeattn node; its inputs in0, in1, ... (batch and lengths symbolic), lowered for `target`."""
    values: list[ir.Value | None] = []
    inputs = []
    for index, array in enumerate(arrays):
        if array is None:
            values.append(None)
            continue
        dims: list[Any] = list(array.shape)
        if array.ndim > 1 and array.shape[0] == B:
            dims[0] = "batch"
        value = ir.val(f"in{index}", ir.DataType.from_numpy(array.dtype), ir.Shape(dims))
        inputs.append(value)
        values.append(value)
    spec = get_op(op)
    attributes = [ir.convenience.convert_attribute(k, v) for k, v in attrs.items()]
    assert all(spec.attribute(k) for k in attrs)
    node = ir.Node("edgeattn", op, values, attributes=attributes, num_outputs=len(outputs), name=f"the_{op}")
    for value, (name, dtype, rank) in zip(node.outputs, outputs):
        value.name, value.dtype, value.shape = name, dtype, ir.Shape([None] * rank)
    graph = ir.Graph(inputs, list(node.outputs), nodes=[node], opset_imports={"": 23, "edgeattn": 1}, name="one")
    model = ir.Model(graph, ir_version=10)
    attach_bodies(model, target, default_registry())  # type: ignore[arg-type]
    return model


def _feeds(arrays: list) -> dict[str, np.ndarray]:
    return {f"in{i}": a for i, a in enumerate(arrays) if a is not None}


@pytest.mark.parametrize("case", NODE_CASES, ids=[c[0] for c in NODE_CASES])
def test_the_tensorrt_form_runs_in_onnxruntime_like_the_onnxruntime_form(case: tuple) -> None:
    _, op, arrays, attrs, outputs = case
    trt_form = node_model(op, arrays, attrs, outputs, "trt")
    node = next(n for n in trt_form.graph if n.domain == "edgeattn")
    assert node.op_type == f"Edge{op}" and node.attributes["plugin_namespace"].value == "edgeattn"
    assert node.attributes["plugin_version"].value == "1" and None not in node.inputs  # no empty input names
    function = trt_form.functions[("edgeattn", f"Edge{op}", "")]
    assert len(function.inputs) == len(node.inputs)  # TensorRT maps them one to one
    last = max(i for i, a in enumerate(arrays) if a is not None)
    if any(a is None for a in arrays[:last]):
        assert list(node.attributes["present_inputs"].value) == [i for i, a in enumerate(arrays) if a is not None]
    proto = ir.serde.serialize_model(trt_form)
    onnx.checker.check_model(proto, full_check=True)
    got = session(proto).run(None, _feeds(arrays))
    want = session(node_model(op, arrays, attrs, outputs, "ort")).run(None, _feeds(arrays))
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_the_tensorrt_form_reads_back_into_the_onnxruntime_form() -> None:
    _, op, arrays, attrs, outputs = NODE_CASES[6]  # a skipped input: present_inputs
    model = node_model(op, arrays, attrs, outputs, "trt")
    attach_bodies(model, "ort", default_registry())
    node = next(n for n in model.graph if n.domain == "edgeattn")
    assert node.op_type == op and "plugin_namespace" not in node.attributes
    assert [v is not None for v in node.inputs] == [a is not None for a in arrays]
    got = session(model).run(None, _feeds(arrays))
    want = session(node_model(op, arrays, attrs, outputs, "ort")).run(None, _feeds(arrays))
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-6)


def test_nodes_of_one_op_with_different_bodies_get_one_name_each() -> None:
    """TensorRT finds local functions by name alone: two TokenSelect modes cannot share `EdgeTokenSelect`."""
    scores, features = np.abs(_f(B, N)), _f(B, N, D)
    model = node_model("TokenSelect", [scores, features], {"k": 4, "mode": "topk"},
                       [("selected", F, 3), ("kept_indices", I64, 2)], "ort")
    first = next(n for n in model.graph if n.domain == "edgeattn")
    second = ir.Node("edgeattn", "TokenSelect", list(first.inputs), num_outputs=2, name="second",
                     attributes=[ir.AttrInt64("k", 4), ir.AttrString("mode", "maxmin")])
    for value, (name, dtype) in zip(second.outputs, (("selected2", F), ("kept2", I64))):
        value.name, value.dtype, value.shape = name, dtype, ir.Shape([None, None, None][: 3 if dtype == F else 2])
        model.graph.outputs.append(value)
    model.graph.append(second)
    attach_bodies(model, "trt", default_registry())
    names = sorted(n.op_type for n in model.graph if n.domain == "edgeattn")
    assert len(set(names)) == 2 and all(n.startswith("EdgeTokenSelect_") for n in names)
    assert sorted(name for _, name, _ in model.functions) == names
    got = session(model).run(None, {"in0": scores, "in1": features})
    assert got[1].shape == got[3].shape == (B, 4)


@pytest.mark.parametrize("case", NODE_CASES, ids=[c[0] for c in NODE_CASES])
def test_every_op_builds_an_sm89_engine_without_plugins(case: tuple, trt_ready: None, tmp_path: Path) -> None:
    name, op, arrays, attrs, outputs = case
    path = tmp_path / "one.onnx"
    ir.save(node_model(op, arrays, attrs, outputs, "trt"), path)
    options = rt.CompileOptions(arch=ARCH, shapes=f"batch={B}", plugins=False)
    document = rt.compile_engines(path, _empty(tmp_path / "out"), options)
    engine = document["engines"]["one"]
    assert engine["bytes"] > 0 and (tmp_path / "out" / "one.engine").stat().st_size == engine["bytes"]
    (summary,) = engine["edgeattn_nodes"]
    assert summary["op"] == op and summary["as"] == "inlined body" and summary["layers"] > 0
    assert summary["reason"] == "plugins turned off (--no-plugins)"
    types = {layer["type"] for layer in engine["layers"]}
    assert not any(t.startswith("PLUGIN") for t in types)
    if get_op(op).kind == "attention":
        assert "MATRIX_MULTIPLY" in summary["layer_types"]  # the body's QKᵀ and P·V, inlined


def _h(*shape: int) -> np.ndarray:
    return R.standard_normal(shape).astype(np.float16)


D16 = 16
# fp16 nodes the kernels compute (head size 16): each becomes a plugin layer
PLUGIN_CASES: list[tuple[str, str, list, dict[str, Any], list[tuple[str, Any, int]]]] = [
    ("attention-causal", "Attention", [_h(B, H, S, D16), _h(B, HKV, S, D16), _h(B, HKV, S, D16)], {"causal": 2},
     [("Y", ir.DataType.FLOAT16, 4)]),
    ("skip-softmax", "SkipSoftmaxAttention", [_h(B, H, S, D16), _h(B, HKV, S, D16), _h(B, HKV, S, D16)],
     {"scale_factor": 4.0, "block_m": 16, "block_n": 16, "causal": 2}, [("Y", ir.DataType.FLOAT16, 4)]),
    ("block-sparse-select", "BlockSparseAttention", [_h(B, H, S, D16), _h(B, HKV, S, D16), _h(B, HKV, S, D16)],
     {"layout": "select", "block_size": 16, "keep": 0.5, "causal": 2}, [("Y", ir.DataType.FLOAT16, 4)]),
    ("block-sparse-window", "BlockSparseAttention", [_h(B, H, S, D16), _h(B, HKV, S, D16), _h(B, HKV, S, D16)],
     {"layout": "window", "window": 16, "sinks": 2, "block_size": 16}, [("Y", ir.DataType.FLOAT16, 4)]),
    ("block-select", "BlockSelect", [_h(B, H, S, D16), _h(B, HKV, S, D16)], {"block_size": 16, "keep": 0.5,
     "causal": 2}, [("block_mask", BOOL, 4)]),
    ("token-score-cls", "TokenScore", [_h(B, H, N + 1, D16), _h(B, H, N + 1, D16)], {"source": "cls"},
     [("scores", F, 2)]),
    ("token-select-regions", "TokenSelect", [np.abs(_f(B, N)), _h(B, N + 1, D16)],
     {"k": 6, "mode": "regions", "prefix": 1, "regions": 4}, [("selected", ir.DataType.FLOAT16, 3),
                                                              ("kept_indices", I64, 2)]),
]


@pytest.mark.parametrize("case", PLUGIN_CASES, ids=[c[0] for c in PLUGIN_CASES])
def test_every_plugin_op_builds_an_sm89_plugin_layer(case: tuple, trt_ready: None, tmp_path: Path) -> None:
    name, op, arrays, attrs, outputs = case
    path = tmp_path / "one.onnx"
    ir.save(node_model(op, arrays, attrs, outputs, "trt"), path)
    document = rt.compile_engines(path, _empty(tmp_path / "out"), rt.CompileOptions(arch=ARCH, shapes=f"batch={B}"))
    engine = document["engines"]["one"]
    (summary,) = engine["edgeattn_nodes"]
    assert summary["op"] == op and summary["as"] == "plugin", summary
    assert engine["layer_types"].get("PLUGIN_V3") == 1
    resolved = get_op(op).resolve(attrs)
    for key, value in attrs.items():  # the fields TensorRT handed the plugin are the node's attributes
        assert summary["fields"][key] == pytest.approx(resolved[key]), key


def _empty(folder: Path) -> Path:
    folder.mkdir()
    return folder


# -- exported folders -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> dict[str, Path]:
    """demo:tiny-llama exported with --rewrite --target trt (float32, and fp16), and demo:tiny-llava with --prune
    --target trt."""
    _skip_without_trt()
    from edgeattn.exporter.api import ExportOptions, export_model

    root = tmp_path_factory.mktemp("compile_exports")
    export_model("demo:tiny-llama", root / "llama", ExportOptions(validate=False, rewrite=True, target="trt"))
    export_model("demo:tiny-llava", root / "llava", ExportOptions(validate=False, prune="fastervlm:16", target="trt",
                                                                  dtype="fp16"))
    export_model("demo:tiny-vit", root / "vit", ExportOptions(validate=False, dtype="fp16"))
    export_model("demo:tiny-llama", root / "llama16", ExportOptions(validate=False, dtype="fp16"))
    return {"llama": root / "llama", "llava": root / "llava", "vit": root / "vit", "llama16": root / "llama16"}


def _compile(args: list[str]) -> Any:
    return CliRunner().invoke(cli, ["compile", *args])


def _engines(out: Path) -> dict[str, Any]:
    return json.loads((out / "compile.json").read_text())


def test_a_rewritten_decoder_folder_compiles(exports: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "engines"
    result = _compile([str(exports["llama"]), "--out", str(out), "--arch", ARCH])
    assert result.exit_code == 0, result.output
    assert "built 2 engines with tensorrt-rtx" in result.output
    document = _engines(out)
    assert document["format"] == "edgeattn.compile/1" and document["arch"] == [ARCH]
    assert document["backend"]["name"] == "tensorrt-rtx" and document["backend"]["version"].startswith("1.7")
    assert document["model"] == "demo:tiny-llama" and set(document["engines"]) == {"embed", "decoder"}
    assert document["dims"]["batch"] == [1, 1, 4] and document["dims"]["past_sequence"][0] == 0
    decoder = document["engines"]["decoder"]
    profile = decoder["profiles"][0]
    assert profile["inputs_embeds"]["max"][1] == document["dims"]["sequence"][2]
    assert decoder["build_seconds"] > 0 and decoder["bytes"] == (out / "decoder.engine").stat().st_size
    nodes = decoder["edgeattn_nodes"]
    assert len(nodes) == 2 and {(n["op"], n["op_type"], n["as"]) for n in nodes} == {
        ("Attention", "EdgeAttention", "inlined body")}
    # float32 has no kernel (the causal part of the decoder's mask is the `causal` attribute now, the rest a key
    # mask the kernels take: see the fp16 decoders below), and compile.json says so
    assert all(n["reason"].startswith("fp32") for n in nodes)
    assert all(n["layer_types"].get("MATRIX_MULTIPLY", 0) >= 2 and n["layer_types"].get("SOFTMAX") == 1 for n in nodes)
    layers = decoder["layers"]
    assert not any(layer["type"].startswith("PLUGIN") for layer in layers)
    assert any(layer["name"].startswith("EdgeAttention/") and layer["type"] == "SOFTMAX" for layer in layers)
    assert decoder["engine_layers"]["available"] or "CUDA" in decoder["engine_layers"]["reason"]


def test_a_pruned_fp16_vision_component_compiles_with_plugin_layers(exports: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "engines"
    result = _compile([str(exports["llava"]), "--out", str(out), "--arch", ARCH, "--component", "vision",
                       "--shapes", "batch=1/1/2", "--json"])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.output)
    assert "layers" not in printed["engines"]["vision"]  # --json leaves the layer lists in the file
    document = _engines(out)
    vision = document["engines"]["vision"]
    assert vision["profiles"][0]["pixel_values"]["max"][0] == 2 and document["kernel_archs"] == [89]
    nodes = {n["op"]: n for n in vision["edgeattn_nodes"]}
    assert {op: n["as"] for op, n in nodes.items()} == {"TokenScore": "plugin", "TokenSelect": "plugin"}
    assert nodes["TokenScore"]["kernel"] == "tokens/score_cls_qk_d16_fp16_hmean"
    assert nodes["TokenSelect"]["kernel"] == "tokens/select_topk_n64_fp16"
    # the fields TensorRT handed each plugin are the node's attributes
    manifest = json.loads((exports["llava"] / "manifest.json").read_text())
    assert nodes["TokenSelect"]["fields"]["k"] == manifest["pruning"]["k"] == 16
    assert nodes["TokenSelect"]["fields"]["mode"] == "topk" and nodes["TokenScore"]["fields"]["source"] == "cls"
    plugin_layers = [la for la in vision["layers"] if la["type"] == "PLUGIN_V3"]
    assert sorted(la["name"] for la in plugin_layers) == sorted(n["node"] for n in nodes.values())
    assert "TOPK" not in vision["layer_types"]  # the selection runs in the plugin, not as an inlined body
    assert sorted(p.name for p in out.iterdir()) == ["compile.json", "vision.engine"]
    listed = CliRunner().invoke(cli, ["inspect", str(out / "vision.engine")])  # no GPU: read from compile.json
    assert listed.exit_code == 0 and "compile.json" in listed.output and "plugin layer prune/TokenSelect" in listed.output


def test_without_plugins_the_same_folder_inlines_the_bodies(exports: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "engines"
    result = _compile([str(exports["llava"]), "--out", str(out), "--arch", ARCH, "--component", "vision",
                       "--no-plugins"])
    assert result.exit_code == 0, result.output
    vision = _engines(out)["engines"]["vision"]
    assert {(n["op"], n["as"]) for n in vision["edgeattn_nodes"]} == {("TokenScore", "inlined body"),
                                                                        ("TokenSelect", "inlined body")}
    assert "TOPK" in vision["layer_types"] and not any(t.startswith("PLUGIN") for t in vision["layer_types"])


@pytest.mark.parametrize(("flag", "op"), [("dense", "Attention"), ("blasst:scale_factor=10", "SkipSoftmaxAttention")])
def test_fp16_vision_attention_compiles_to_plugin_layers(exports: dict[str, Path], tmp_path: Path, flag: str,
                                                         op: str) -> None:
    rewritten = tmp_path / "vision_trt.onnx"
    result = CliRunner().invoke(cli, ["rewrite", str(exports["vit"] / "vision.onnx"), str(rewritten), "--sparse", flag,
                                      "--target", "trt"])
    assert result.exit_code == 0, result.output
    listed = CliRunner().invoke(cli, ["inspect", str(rewritten), "--json"])
    assert {(r["op"], r["as"]) for r in json.loads(listed.output)["tensorrt"]} == {(op, "plugin")}
    out = tmp_path / "engines"
    result = _compile([str(rewritten), "--out", str(out), "--arch", ARCH, "--timing-cache", str(tmp_path / "t.cache")])
    assert result.exit_code == 0, result.output
    engine = _engines(out)["engines"]["vision_trt"]
    assert {(n["op"], n["as"]) for n in engine["edgeattn_nodes"]} == {(op, "plugin")}
    assert all(n["kernel"].startswith("skip_softmax/prefill_d16_fp16_full") for n in engine["edgeattn_nodes"])
    tiles = {tuple(v.rsplit("_", 1)[1] for v in n["tactics"]) for n in engine["edgeattn_nodes"]}
    # dense attention offers TensorRT two tile shapes to time; skip-softmax keeps the op's own tiles
    assert tiles == ({("m128n64", "m64n64")} if op == "Attention" else {("m128n64",)})
    assert engine["layer_types"]["PLUGIN_V3"] == 2
    # the bodies build too: half-precision attention with dynamo's placeholder mask crashed TensorRT-RTX 1.7
    # (a segfault); the rewrite drops a mask that hides nothing, and compile builds in a child process
    bodies = tmp_path / "bodies"
    assert _compile([str(rewritten), "--out", str(bodies), "--arch", ARCH, "--no-plugins"]).exit_code == 0
    assert {n["as"] for n in _engines(bodies)["engines"]["vision_trt"]["edgeattn_nodes"]} == {"inlined body"}
    timing = _engines(out)["timing_cache"]  # TensorRT-RTX times nothing: the cache is recorded as unused
    assert timing["used"] is False and "no-op" in timing["why"] and not (tmp_path / "t.cache").exists()


# (--sparse flag or None for the dense rewrite, op, kernel family/variant start)
DECODER_CASES = [
    (None, "Attention", "skip_softmax/prefill_d16_fp16_causal_dense"),
    ("block:keep=0.5,block=16", "BlockSparseAttention", "block_sparse/select_topk"),
    ("blasst:scale_factor=10", "SkipSoftmaxAttention", "skip_softmax/prefill_d16_fp16_causal_sf10"),
]


@pytest.mark.parametrize("case", DECODER_CASES, ids=["dense", "block", "blasst"])
def test_fp16_decoders_compile_their_attention_to_plugin_layers(case: tuple, exports: dict[str, Path],
                                                                tmp_path: Path) -> None:
    """A decoder's mask (causal and padding) is taken apart by the rewrite for TensorRT: causal = 2 and a key
    mask [B, 1, 1, T], which the kernels add to the scores; every attention site becomes a plugin layer. The
    same file without plugins inlines the function bodies."""
    flag, op, kernel = case
    rewritten = tmp_path / "decoder_trt.onnx"
    args = ["rewrite", str(exports["llama16"] / "decoder.onnx"), str(rewritten), "--target", "trt"]
    result = CliRunner().invoke(cli, args + (["--sparse", flag] if flag else []))
    assert result.exit_code == 0, result.output
    model = ir.load(rewritten)
    sites = [n for n in model.graph if n.domain == "edgeattn"]
    assert len(sites) == 2 and all(n.attributes["causal"].value == 2 for n in sites)
    assert all(n.inputs[3].shape is not None and list(n.inputs[3].shape)[1:3] == [1, 1] for n in sites)
    shapes = ["--shapes", "batch=1/2/2,sequence=1/32/64,total_sequence=1/32/64,past_sequence=0/16/64"]
    out = tmp_path / "engines"
    result = _compile([str(rewritten), "--out", str(out), "--arch", ARCH, *shapes])
    assert result.exit_code == 0, result.output
    engine = _engines(out)["engines"]["decoder_trt"]
    nodes = engine["edgeattn_nodes"]
    assert {(n["op"], n["as"]) for n in nodes} == {(op, "plugin")}, [n.get("reason") for n in nodes]
    assert all(n["kernel"].startswith(kernel) and n["kernel"].endswith("_kbias") for n in nodes)
    assert engine["layer_types"]["PLUGIN_V3"] == 2 and engine["profiles"][0]["inputs_embeds"]["max"][:2] == [2, 64]
    for node in nodes:  # the fields TensorRT handed each plugin are the node's attributes
        site = next(n for n in sites if n.name == node["node"])
        assert node["fields"]["causal"] == 2
        for name, attr in site.attributes.items():
            if name in node["fields"] and isinstance(attr.value, (int, float, str)):
                assert node["fields"][name] == pytest.approx(attr.value), name
    bodies = tmp_path / "bodies"
    result = _compile([str(rewritten), "--out", str(bodies), "--arch", ARCH, "--no-plugins", *shapes])
    assert result.exit_code == 0, result.output
    engine = _engines(bodies)["engines"]["decoder_trt"]
    assert {(n["op"], n["as"]) for n in engine["edgeattn_nodes"]} == {(op, "inlined body")}
    assert not any(t.startswith("PLUGIN") for t in engine["layer_types"])


def test_a_third_party_fp16_encoder_compiles_its_attention_to_plugin_layers(trt_ready: None, tmp_path: Path) -> None:
    """A BERT written by torch's TorchScript exporter, rewritten with --target trt: its float padding mask,
    built from the shape of the hidden states, is found to be key-only (the geometry factors hide nothing), so
    both sites become plugin layers; the rewritten file gives the original's outputs in onnxruntime."""
    import warnings

    import onnxruntime as ort

    from tests.models.hf_folders import torchscript_bert_fp16

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        source = torchscript_bert_fp16(tmp_path / "bert.onnx")
    rewritten = tmp_path / "bert_trt.onnx"
    result = CliRunner().invoke(cli, ["rewrite", str(source), str(rewritten), "--target", "trt"])
    assert result.exit_code == 0, result.output
    sites = [n for n in ir.load(rewritten).graph if n.domain == "edgeattn"]
    assert len(sites) == 2 and all(list(n.inputs[3].shape)[1:3] == [1, 1] for n in sites)
    rng = np.random.default_rng(0)
    for batch, length in ((2, 16), (3, 7)):
        ids = rng.integers(0, 100, (batch, length))
        mask = np.ones((batch, length), np.int64)
        mask[0, :2], mask[-1, length // 2:] = 0, 0  # left and right padding
        feeds = {"input_ids": ids, "attention_mask": mask}
        want = ort.InferenceSession(str(source)).run(None, feeds)[0].astype(np.float32)
        got = ort.InferenceSession(str(rewritten)).run(None, feeds)[0].astype(np.float32)
        # fp16 outputs of size ~3: one fp16 step there is 2**-9 ~ 2e-3
        np.testing.assert_allclose(got, want, atol=2e-3, rtol=1e-3)
    out = tmp_path / "engines"
    result = _compile([str(rewritten), "--out", str(out), "--arch", ARCH, "--shapes", "batch=1/2/4,sequence=1/16/64"])
    assert result.exit_code == 0, result.output
    engine = _engines(out)["engines"]["bert_trt"]
    assert {(n["op"], n["as"]) for n in engine["edgeattn_nodes"]} == {("Attention", "plugin")}
    assert all(n["kernel"].startswith("skip_softmax/prefill_d16_fp16_full") and n["kernel"].endswith("_kbias")
               for n in engine["edgeattn_nodes"])
    assert engine["layer_types"]["PLUGIN_V3"] == 2


# -- one line, exit 1 ------------------------------------------------------------------------------------


def _one_line_error(result: Any, *needles: str) -> None:
    assert result.exit_code == 1
    message = str(result.exception) if isinstance(result.exception, EdgeAttnError) else result.output
    assert "\n" not in message.strip() and "Traceback" not in result.output
    for needle in needles:
        assert needle in message, message


def test_an_arch_the_backend_cannot_target_is_one_line(trt_ready: None, tmp_path: Path) -> None:
    path = tmp_path / "one.onnx"
    ir.save(node_model("Attention", [Q4, K4, V4], {}, [("Y", F, 4)], "trt"), path)
    for arch, needle in (("sm_87", "cannot build for sm_87"), ("sm_90", "cannot build for sm_90"),
                         ("hopper", "not a compute capability"), ("native,sm_89", "stands alone")):
        _one_line_error(_compile([str(path), "--out", str(tmp_path / arch), "--arch", arch]), needle)
        assert not (tmp_path / arch).exists()


def test_a_missing_backend_is_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(rt, "_import", lambda module: None)
    source, out = str(tmp_path / "src"), str(tmp_path / "out")
    _one_line_error(_compile([source, "--out", out]), "no TensorRT is installed", rt.RTX_PIN)
    _one_line_error(_compile([source, "--out", out, "--backend", "tensorrt"]), "backend tensorrt is not installed")
    with pytest.raises(RuntimeUnavailableError):
        rt.load_backend()


def test_the_missing_parser_link_is_one_line_before_anything_parses(monkeypatch: pytest.MonkeyPatch,
                                                                    tmp_path: Path, trt_ready: None) -> None:
    missing = tmp_path / "tensorrt_rtx_libs" / "libtensorrt_rtx.so"
    monkeypatch.setattr(rt, "rtx_parser_library", lambda: missing)
    _one_line_error(_compile([str(tmp_path / "src"), "--out", str(tmp_path / "out"), "--backend", "tensorrt-rtx"]),
                    f"ln -s libtensorrt_rtx.so.1 {missing}")


def test_full_tensorrt_builds_only_for_its_own_gpu() -> None:
    backend = rt.Backend("tensorrt", object(), "10.3.0")
    assert rt.parse_arch(None, backend) == ("native",)
    with pytest.raises(EdgeAttnError, match="needs --backend tensorrt-rtx"):
        rt.parse_arch("sm_87", backend)


def test_shapes_are_checked(trt_ready: None, tmp_path: Path) -> None:
    assert rt.parse_shapes("batch=1/2/4,sequence=16") == {"batch": rt.DimRange(1, 2, 4),
                                                          "sequence": rt.DimRange(16, 16, 16)}
    for text in ("batch=4/2/1", "batch=1/2", "batch", "batch=x"):
        with pytest.raises(EdgeAttnError):
            rt.parse_shapes(text)
    path = tmp_path / "one.onnx"
    ir.save(node_model("Attention", [Q4, K4, V4], {}, [("Y", F, 4)], "trt"), path)
    _one_line_error(_compile([str(path), "--out", str(tmp_path / "out"), "--arch", ARCH, "--shapes", "seq=1/2/3"]),
                    "--shapes names seq", "batch")


def test_a_file_written_for_onnxruntime_is_brought_to_the_tensorrt_form(trt_ready: None, tmp_path: Path) -> None:
    path = tmp_path / "ort.onnx"
    ir.save(node_model("TokenSelect", [np.abs(_f(B, N)), _f(B, N, D)], {"k": 3, "mode": "diversity"},
                       [("selected", F, 3), ("kept_indices", I64, 2)], "ort"), path)
    document = rt.compile_engines(path, _empty(tmp_path / "out"), rt.CompileOptions(arch=ARCH))
    engine = document["engines"]["ort"]
    assert engine["converted_to_trt_form"] == 1
    assert [(n["op_type"], n["as"]) for n in engine["edgeattn_nodes"]] == [("EdgeTokenSelect", "inlined body")]


def test_a_builder_crash_is_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A TensorRT builder that dies by a signal ends its child process; compile says so in one line."""
    import subprocess

    crashed = subprocess.CompletedProcess(args=[], returncode=-11, stdout="", stderr="Segmentation fault")
    monkeypatch.setattr(rt.subprocess, "run", lambda *args, **kwargs: crashed)
    request = {"backend": "tensorrt-rtx", "component": {"name": "vision"}}
    with pytest.raises(EdgeAttnError) as caught:
        rt.build_in_child(request)
    message = str(caught.value)
    assert "\n" not in message and "crashed (SIGSEGV) while building vision" in message
