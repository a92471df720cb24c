"""`export --dtype fp16|bf16`: the files' types, validation against PyTorch in the same dtype, the manifest's
dtype, `run` on the result, and the refusals (one line, exit 1)."""

from __future__ import annotations

import json

import numpy as np
import onnx_ir as ir
import pytest
from click.testing import CliRunner

from edgeattn.cli.main import cli, main
from edgeattn.exporter.validate import TOLERANCES
from edgeattn.manifest import read_manifest

ONNX_TYPES = {"fp16": ir.DataType.FLOAT16, "bf16": ir.DataType.BFLOAT16}
INT_INPUTS = {"input_ids", "attention_mask", "position_ids"}


def invoke(args: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as stop:
        main(args)
    out, err = capsys.readouterr()
    return stop.value.code, out, err


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """tiny-llava (vision + embed + decoder) exported once per dtype through the CLI, pruned to 16 tokens in
    fp16 (the pruning ops' bodies in half precision); ``exports(dtype) -> (folder, --json document)``."""
    made: dict[str, tuple] = {}

    def get(dtype: str):
        if dtype not in made:
            out = tmp_path_factory.mktemp("dtype") / dtype
            args = ["export", "demo:tiny-llava", "--out", str(out), "--dtype", dtype, "--json"]
            if dtype == "fp16":
                args += ["--prune", "fastervlm:16"]
            result = CliRunner().invoke(cli, args)
            assert result.exit_code == 0, result.output
            made[dtype] = (out, json.loads(result.stdout))
        return made[dtype]

    return get


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_graph_types_follow_the_dtype(exports, dtype) -> None:
    folder, document = exports(dtype)
    assert document["dtype"] == dtype and read_manifest(folder).dtype == dtype
    wanted = ONNX_TYPES[dtype]
    for name in ("vision", "embed", "decoder"):
        model = ir.load(folder / f"{name}.onnx")
        for value in (*model.graph.inputs, *model.graph.outputs):
            if value.name in INT_INPUTS or value.name == "kept_indices":
                assert value.dtype == ir.DataType.INT64, (name, value.name)
            else:  # embeddings, pixels, logits, image features and the whole KV cache
                assert value.dtype == wanted, (name, value.name, value.dtype)
        weights = [v for v in model.graph.initializers.values() if v.const_value is not None and v.const_value.size > 64]
        assert weights and all(v.dtype == wanted for v in weights), (name, {v.name: v.dtype for v in weights})
        described = document["components"][name]
        assert {item["dtype"] for item in described["outputs"]} <= {wanted.name.lower(), "int64"}


def test_llama_keeps_its_float32_norms_and_rotary(exports) -> None:
    """HF Llama's RMSNorm squares and averages in float32, and its rotary frequencies are float32: tracing in
    fp16 keeps both (the file casts up around them), as transformers' own fp16 model computes."""
    folder, _ = exports("fp16")
    model = ir.load(folder / "decoder.onnx")
    nodes = list(model.graph.all_nodes())
    norms = [n for n in nodes if n.op_type == "ReduceMean"]
    assert len(norms) == 5 and all(n.inputs[0].dtype == ir.DataType.FLOAT for n in norms)  # 2 layers x 2 + final
    assert any(n.op_type == "Cast" and n.attributes["to"].as_int() == ir.DataType.FLOAT16.value for n in nodes)
    rotary = [v for v in model.graph.initializers.values() if v.dtype == ir.DataType.FLOAT and v.shape == ir.Shape([8])]
    assert len(rotary) == 1  # inv_freq, head_size / 2 frequencies


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_validation_is_within_the_dtype_row(exports, dtype) -> None:
    folder, document = exports(dtype)
    row = TOLERANCES[{"fp16": "float16", "bf16": "bfloat16"}[dtype]]
    ran_as = "float16 in onnxruntime" if dtype == "fp16" else "float32 widening in onnxruntime (no bfloat16 CPU kernels)"
    worst = {}
    for component in ("vision", "embed", "decoder"):
        records = document["validation"][component]
        assert len(records) >= 2 and all(record["ran_as"] == ran_as for record in records)
        worst[component] = max(out["max_rel"] for record in records for out in record["outputs"].values())
    assert worst["embed"] == 0.0  # a table lookup: exact in any dtype
    # Half-precision rounding is there (a float32 comparison would be ~1e-6) and within the row.
    assert all(row.rtol / 20 < worst[c] <= row.rtol for c in ("vision", "decoder")), worst


def test_fp16_export_runs_with_image_and_pruning(exports, capsys) -> None:
    folder, document = exports("fp16")
    assert document["pruning"]["k"] == 16 and document["image_token_count"] == 16
    assert all(check["max_abs_vs_dense"] == 0.0 for check in document["validation"]["vision_pruned"])
    image = folder.parent / "image.png"
    from PIL import Image

    Image.fromarray((np.random.default_rng(0).random((40, 40, 3)) * 255).astype(np.uint8)).save(image)
    code, out, err = invoke(["run", str(folder), "--prompt", "Hi", "--image", str(image), "--max-new-tokens", "3",
                             "--json"], capsys)
    assert code == 0, err
    result = json.loads(out)
    assert len(result["tokens"]) >= 1 and result["prompt_tokens"] == 16 + 2


def test_fp16_runtime_steps_follow_pytorch_in_fp16(exports) -> None:
    """The runtime feeds the fp16 files fp16 embeddings and an fp16 KV cache: a prefill and a decode step give
    PyTorch's fp16 logits within the fp16 row, and the cache it carries is fp16."""
    import torch

    from edgeattn.exporter.api import cast_model
    from edgeattn.exporter.demo import load_demo
    from edgeattn.exporter.validate import compare
    from edgeattn.runtime.generate import DecoderRunner

    folder, _ = exports("fp16")
    loaded = load_demo("tiny-llava")
    cast_model(loaded, "fp16")
    prompt = [256, 72, 105, 33, 10, 200]
    runner = DecoderRunner(folder, read_manifest(folder))
    embeds = runner.prompt_embeddings(prompt[:-1], None)
    _, past = runner._step(embeds, runner._empty_past(), 0)
    assert all(p.dtype == np.float16 and p.shape[2] == 5 for p in past)
    logits, _ = runner._step(runner.prompt_embeddings(prompt[-1:], None), past, 5)
    with torch.no_grad():
        want = loaded.model(input_ids=torch.tensor([prompt])).logits[:, -1:].numpy()
    check = compare("logits", logits, want)
    assert check.dtype == "float16" and check.ok and check.max_rel > 0, check


def test_bf16_run_is_refused_in_one_line(exports, capsys) -> None:
    folder, _ = exports("bf16")
    code, out, err = invoke(["run", str(folder), "--prompt", "Hi", "--max-new-tokens", "2"], capsys)
    assert code == 1 and out == "" and len(err.strip().splitlines()) == 1
    assert "bf16 export" in err and "no bfloat16 kernel for Conv" in err and "--dtype fp16" in err


def test_widening_is_exact(exports) -> None:
    """The float32 copy onnxruntime validates holds exactly the bf16 file's weights and no bfloat16 left."""
    from edgeattn.exporter.widen import widen_bfloat16

    folder, _ = exports("bf16")
    narrow, wide = ir.load(folder / "decoder.onnx"), ir.load(folder / "decoder.onnx")
    assert widen_bfloat16(wide) > 0
    for name, value in narrow.graph.initializers.items():
        if value.dtype == ir.DataType.BFLOAT16:
            assert np.array_equal(value.const_value.numpy().astype(np.float32), wide.graph.initializers[name].const_value.numpy())
    assert not any(v.dtype == ir.DataType.BFLOAT16 for n in wide.graph.all_nodes() for v in n.outputs)
    assert not any(n.op_type == "Cast" and n.attributes["to"].as_int() == ir.DataType.BFLOAT16.value
                   for n in wide.graph.all_nodes())


@pytest.mark.parametrize("value", ["fp8", "float16", "FP16"])
def test_a_bad_dtype_is_one_line(tmp_path, capsys, value) -> None:
    code, out, err = invoke(["export", "demo:tiny-llama", "--out", str(tmp_path / "x"), "--dtype", value], capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1 and "--dtype" in err and "fp16" in err
    assert not (tmp_path / "x").exists()


def test_the_library_refuses_a_bad_dtype_before_loading(tmp_path) -> None:
    from edgeattn.errors import ExportError
    from edgeattn.exporter.api import ExportOptions, export_model

    with pytest.raises(ExportError, match="unknown dtype 'half'; choose one of fp32, fp16, bf16"):
        export_model("demo:no-such-model", tmp_path / "x", ExportOptions(dtype="half"))
