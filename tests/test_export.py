"""Export of every family on tiny configs: components, manifest, dynamic axes, parity, run."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from edgeattn.exporter.api import ExportOptions, export_model
from edgeattn.exporter.sources import load_model
from edgeattn.graphs.session import session_from_onnx
from edgeattn.manifest import read_manifest
from tests.models import hf_folders


def symbolic_axes(path) -> dict[str, list]:
    model = onnx.load(str(path), load_external_data=False)
    return {
        i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input
    }


def torch_greedy(model, input_ids: list[int], steps: int, **extra) -> list[int]:
    with torch.no_grad():
        out = model.generate(
            input_ids=torch.tensor([input_ids]), max_new_tokens=steps, do_sample=False, min_new_tokens=steps, **extra
        )
    return out[0, len(input_ids) :].tolist()


def test_decoder_components_and_manifest(exported):
    folder = exported("demo:tiny-llama")
    manifest = json.loads((folder / "manifest.json").read_text())
    assert set(manifest["components"]) == {"embed", "decoder"}
    assert manifest["family"] == "decoder" and manifest["opset"] == 23
    assert manifest["decoder"]["num_layers"] == 2 and manifest["decoder"]["num_kv_heads"] == 2
    axes = symbolic_axes(folder / "decoder.onnx")
    assert axes["inputs_embeds"][:2] == ["batch", "sequence"]
    assert axes["past_key_values.1.value"] == ["batch", 2, "past_sequence", 16]
    cases = [r["case"] for r in manifest["validation"]["decoder"]]
    assert {c["batch"] for c in cases} == {1, 3} and {c["past"] > 0 for c in cases} == {True, False}
    assert (folder / "tokenizer" / "tokenizer.json").is_file()
    onnx.checker.check_model(str(folder / "decoder.onnx"), full_check=True)


def test_decoder_generation_matches_pytorch(exported):
    from edgeattn.runtime.generate import DecoderRunner

    folder = exported("demo:tiny-llama")
    prompt = list(b"The capital of France is")
    gen = DecoderRunner(folder, read_manifest(folder)).generate(prompt, 8)
    model = load_model("demo:tiny-llama").model
    assert gen.tokens == torch_greedy(model, prompt, 8)
    assert gen.ttft_ms > 0 and gen.tpot_ms > 0


@pytest.mark.parametrize("kind", ["llama", "qwen2", "mistral"])
def test_llama_family_folders_export_and_generate(kind, tmp_path):
    from edgeattn.runtime.generate import DecoderRunner

    src = hf_folders.tiny_decoder(kind, tmp_path / "src")
    manifest = export_model(str(src), tmp_path / "out")
    assert manifest.document["architecture"] == kind
    gen = DecoderRunner(tmp_path / "out", manifest).generate([72, 105], 4)
    model = load_model(str(src)).model
    assert gen.tokens == torch_greedy(model, [72, 105], 4)


def test_vlm_dynamic_batch_runs_at_batch_1_and_3(exported):
    folder = exported("demo:tiny-llava")
    manifest = json.loads((folder / "manifest.json").read_text())
    assert set(manifest["components"]) == {"vision", "embed", "decoder"}
    assert manifest["image_token_count"] == 64 and manifest["image_token_id"] == 259
    vision = session_from_onnx(folder / "vision.onnx")
    decoder = session_from_onnx(folder / "decoder.onnx")
    for batch in (1, 3):
        feats = vision.run(None, {"pixel_values": np.random.rand(batch, 3, 64, 64).astype(np.float32)})[0]
        assert feats.shape == (batch, 64, 64)
        feeds = {
            "inputs_embeds": np.random.rand(batch, 5, 64).astype(np.float32),
            "attention_mask": np.ones((batch, 5), np.int64),
            "position_ids": np.tile(np.arange(5), (batch, 1)),
        }
        feeds.update({i.name: np.zeros((batch, 2, 0, 16), np.float32) for i in decoder.get_inputs()[3:]})
        assert decoder.run(["logits"], feeds)[0].shape == (batch, 5, 260)


def test_vlm_generation_with_image_matches_pytorch(exported):
    from edgeattn.runtime.generate import DecoderRunner

    folder = exported("demo:tiny-llava")
    pixels = np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype(np.float32)
    ids = [259] * 64 + list(b"Describe")
    gen = DecoderRunner(folder, read_manifest(folder)).generate(ids, 6, pixels)
    model = load_model("demo:tiny-llava").model
    assert gen.tokens == torch_greedy(model, ids, 6, pixel_values=torch.from_numpy(pixels))
    assert gen.stages_ms["vision_ms"] > 0


@pytest.mark.parametrize("kind", ["clip", "siglip", "dinov2"])
def test_vision_encoder_folders(kind, tmp_path):
    src = hf_folders.tiny_vision(kind, tmp_path / "src")
    manifest = export_model(str(src), tmp_path / "out")
    assert manifest.family == "vision" and list(manifest.components) == ["vision"]
    tokens = {"clip": 17, "siglip": 16, "dinov2": 5}[kind]
    assert manifest.vision.num_image_tokens == tokens
    out = session_from_onnx(tmp_path / "out" / "vision.onnx").run(None, {"pixel_values": np.zeros((3, 3, 28, 28), np.float32)})
    assert out[0].shape == (3, tokens, 32)


def test_bert_encoder_embeddings_match_pytorch(tmp_path):
    from transformers import AutoTokenizer

    from edgeattn.runtime.encode import encode_texts

    src = hf_folders.tiny_bert(tmp_path / "src")
    manifest = export_model(str(src), tmp_path / "out")
    texts = ["the cat sat on the mat", "dogs"]
    tok = AutoTokenizer.from_pretrained(tmp_path / "out" / "tokenizer")
    got = encode_texts(tmp_path / "out", manifest, tok, texts)["embedding"]
    model = load_model(str(src)).model
    batch = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        states = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    want = ((states * mask).sum(1) / mask.sum(1)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_opset_17_export_decomposes_attention_and_validates(exported):
    folder = exported("demo:tiny-llama", opset=17)
    model = onnx.load(str(folder / "decoder.onnx"))
    assert model.opset_import[0].version == 17 or any(o.domain == "" and o.version == 17 for o in model.opset_import)
    ops = {n.op_type for n in model.graph.node}
    assert "Softmax" in ops and "Attention" not in ops
    assert model.ir_version <= 10


def test_validation_failure_names_the_output(tmp_path, monkeypatch):
    """A component whose PyTorch output moves after export must fail validation, naming the output."""
    from edgeattn.errors import ValidationError
    from edgeattn.exporter import api

    real_capture = api.capture

    def capture_then_perturb(component, opset):
        model = real_capture(component, opset)
        component.module.register_forward_hook(lambda mod, args, out: out + 1e-2)
        return model

    monkeypatch.setattr(api, "capture", capture_then_perturb)
    with pytest.raises(ValidationError, match=r"component 'vision' output 'image_features' differs"):
        export_model("demo:tiny-vit", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".out.*")), "the staging folder must be removed on failure"


def test_existing_folder_needs_force(tmp_path):
    from edgeattn.errors import EdgeAttnError

    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(EdgeAttnError, match="already exists; pass --force"):
        export_model("demo:tiny-vit", out)
    assert (out / "keep.txt").read_text() == "mine"
    with pytest.raises(EdgeAttnError, match="not an edgeattn export"):  # --force never deletes the user's folder
        export_model("demo:tiny-vit", out, ExportOptions(force=True, validate=False))
    assert (out / "keep.txt").read_text() == "mine"
    (out / "keep.txt").unlink()  # an empty folder, or one edgeattn wrote, is replaced with --force
    export_model("demo:tiny-vit", out, ExportOptions(force=True, validate=False))
    export_model("demo:tiny-vit", out, ExportOptions(force=True, validate=False))
    assert (out / "vision.onnx").is_file() and (out / "manifest.json").is_file()
