"""Real pretrained models end to end: export, validate, run in onnxruntime, compare with PyTorch."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.models.zoo_wheels import zoo_model_or_skip

pytestmark = pytest.mark.slow


def test_smollm2_generation_equals_pytorch_greedy(exported, capsys):
    from edgeattn.cli.main import main

    loaded = zoo_model_or_skip("smollm2-135m")
    folder = exported("zoo:smollm2-135m")
    prompt = "The capital of France is"
    with pytest.raises(SystemExit) as stop:
        main(["run", str(folder), "--prompt", prompt, "--max-new-tokens", "8", "--json"])
    assert stop.value.code == 0
    result = json.loads(capsys.readouterr().out)
    ids = loaded.tokenizer(prompt, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        want = loaded.model.generate(input_ids=ids, max_new_tokens=8, do_sample=False)[0, ids.shape[1] :].tolist()
    assert result["tokens"] == want
    assert "Paris" in result["text"]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["decoder"]["num_layers"] == 30 and manifest["decoder"]["num_kv_heads"] == 3


def test_minilm_embeddings_match_pytorch(tmp_path):
    from edgeattn.exporter.api import export_model
    from edgeattn.runtime.encode import encode_texts

    loaded = zoo_model_or_skip("minilm-l6")
    manifest = export_model(loaded, tmp_path / "minilm")
    texts = ["A man is playing a guitar.", "Someone plays an instrument.", "The stock market fell today."]
    got = encode_texts(tmp_path / "minilm", manifest, loaded.tokenizer, texts)["embedding"]
    batch = loaded.tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        states = loaded.model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    want = torch.nn.functional.normalize((states * mask).sum(1) / mask.sum(1), dim=-1).numpy()
    cosine = (got * want).sum(-1) / np.linalg.norm(got, axis=-1) / np.linalg.norm(want, axis=-1)
    assert cosine.min() >= 0.9999
    assert got[0] @ got[1] > got[0] @ got[2]  # real weights: the paraphrase is nearer


def test_dinov2_vision_export_matches_pytorch(tmp_path):
    from edgeattn.exporter.api import export_model
    from edgeattn.graphs.session import session_from_onnx

    loaded = zoo_model_or_skip("dinov2-s14")
    manifest = export_model(loaded, tmp_path / "dino")
    assert manifest.vision.num_image_tokens == 257 and manifest.vision.image_size == 224
    pixels = np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32)
    got = session_from_onnx(tmp_path / "dino" / "vision.onnx").run(None, {"pixel_values": pixels})[0]
    with torch.no_grad():
        want = loaded.model(pixel_values=torch.from_numpy(pixels)).last_hidden_state.numpy()
    assert np.abs(got - want).max() <= 2e-5 * np.abs(want).max()
