"""`export --prune` and `run` on pruned VLMs: the CLI, the manifest, onnxruntime vs PyTorch end to end,
run-time budgets, and the refusals (one line, exit 1)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from edgeattn.manifest import read_manifest
from edgeattn.exporter.sources import load_model
from edgeattn.graphs.pruning import prune_file
from edgeattn.runtime.generate import DecoderRunner
from edgeattn.graphs.session import session_from_onnx
from tests.test_cli import invoke

IMAGE_ID, K = 259, 16


def pixels(seed: int = 0, size: int = 64) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((1, 3, size, size)).astype(np.float32)


def torch_pruned_generation(ids_text: list[int], pixel_values: np.ndarray, k: int, steps: int):
    """The pruned tiny VLM in PyTorch: the [CLS] attention row of the feature layer (-2), head mean, top-k in
    raster order, projected tokens spliced at the image positions, greedy decoding."""
    model = load_model("demo:tiny-llava").model
    model.model.vision_tower.set_attn_implementation("eager")
    px = torch.from_numpy(pixel_values)
    with torch.no_grad():
        out = model.model.vision_tower(px, output_attentions=True, output_hidden_states=True)
        scores = out.attentions[-2][:, :, 0, 1:].mean(1)  # [1, 64]
        kept = torch.sort(torch.sort(scores, descending=True, stable=True).indices[:, :k]).values
        features = model.model.multi_modal_projector(out.hidden_states[-2][:, 1:])
        chosen = torch.gather(features, 1, kept[..., None].expand(-1, -1, features.shape[-1]))
        ids = torch.tensor([[IMAGE_ID] * k + ids_text])
        embeds = model.get_input_embeddings()(ids)
        embeds[0, :k] = chosen[0]
        tokens = model.generate(inputs_embeds=embeds, attention_mask=torch.ones_like(ids), max_new_tokens=steps,
                                min_new_tokens=steps, do_sample=False)
    return kept[0].tolist(), chosen[0].numpy(), tokens[0, -steps:].tolist()


def test_pruned_tiny_vlm_matches_pytorch_end_to_end(exported, tmp_path):
    dense = exported("demo:tiny-llava")
    prune_file(dense / "vision.onnx", tmp_path / "vision.onnx", f"fastervlm:{K}")
    manifest = read_manifest(dense)
    runner = DecoderRunner(dense, manifest)
    runner.vision = session_from_onnx(tmp_path / "vision.onnx")
    assert_runs_as_pytorch_pruned(runner)


def assert_runs_as_pytorch_pruned(runner: DecoderRunner) -> None:
    """The kept tokens, features and greedy tokens of `runner` (the tiny VLM pruned to K by fastervlm) are
    the pruned model's in PyTorch (float32: features to rtol 2e-5, the export tolerance)."""
    image = pixels()
    outputs = runner.image_features(image)
    text = list(b"Describe")
    kept, features, tokens = torch_pruned_generation(text, image, K, 6)
    assert outputs["kept_indices"][0].tolist() == kept
    np.testing.assert_allclose(outputs["image_features"][0], features, rtol=2e-5, atol=1e-6)
    assert runner.generate([IMAGE_ID] * K + text, 6, image).tokens == tokens


def test_export_prune_cli_manifest_run_and_run_time_budget(tmp_path, capsys):
    out = tmp_path / "llava"
    code, stdout, _ = invoke(["export", "demo:tiny-llava", "--out", str(out), "--prune", f"flashvlm:{K},dynamic=1",
                              "--json"], capsys)
    assert code == 0
    manifest = json.loads(stdout)
    pruning = manifest["pruning"]
    assert pruning["method"] == "flashvlm" and pruning["k"] == K and pruning["tokens_before"] == 64
    assert pruning["layer"] == 1 and pruning["dynamic_k"] and pruning["keeps_original_positions"] is False
    assert "consecutive position ids" in pruning["positions"]
    assert manifest["image_token_count"] == K and manifest["vision"]["num_image_tokens_unpruned"] == 64
    outputs = {o["name"]: o["shape"] for o in manifest["components"]["vision"]["outputs"]}
    assert outputs == {"image_features": ["batch", "num_tokens", 64], "kept_indices": ["batch", "num_tokens"]}
    assert {i["name"] for i in manifest["components"]["vision"]["inputs"]} == {"pixel_values", "text_embeds", "num_tokens"}
    assert [c["kept"] for c in manifest["validation"]["vision_pruned"]] == [K, K]
    from PIL import Image

    Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)).save(tmp_path / "i.png")
    base = ["run", str(out), "--prompt", "Describe", "--image", str(tmp_path / "i.png"), "--max-new-tokens", "3"]
    code, stdout, _ = invoke([*base, "--json"], capsys)
    assert code == 0 and json.loads(stdout)["prompt_tokens"] == K + len(b"Describe")
    code, stdout, _ = invoke([*base, "--image-tokens", "8", "--json"], capsys)
    assert code == 0 and json.loads(stdout)["prompt_tokens"] == 8 + len(b"Describe")
    code, _, stderr = invoke([*base, "--image-tokens", "65"], capsys)
    assert code == 1 and "budget must be from 1 to 64 (got 65)" in stderr and stderr.count("\n") == 1


@pytest.mark.parametrize("args, message", [
    (["demo:tiny-llama", "--prune", "fastervlm:16"], "has no vision component"),
    (["demo:tiny-llava", "--prune", "fastervlm:0"], "at least 1 token"),
    (["demo:tiny-llava", "--prune", "sparsevlm:16"], "unknown pruning method 'sparsevlm'"),
    (["demo:tiny-llava", "--prune", "holov:16,chunks=4"], "holov takes no parameter 'chunks'"),
])
def test_export_prune_refusals_are_one_line(tmp_path, capsys, args, message):
    code, _, stderr = invoke(["export", args[0], "--out", str(tmp_path / "o"), *args[1:]], capsys)
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert code == 1 and len(errors) == 1 and message in errors[0]
    assert "Traceback" not in stderr and not (tmp_path / "o").exists()


def test_fixed_budget_export_refuses_a_run_time_budget(exported, tmp_path):
    dense = exported("demo:tiny-llava")
    prune_file(dense / "vision.onnx", tmp_path / "vision.onnx", f"uniform:{K}")
    runner = DecoderRunner(dense, read_manifest(dense))
    runner.vision = session_from_onnx(tmp_path / "vision.onnx")
    from edgeattn.errors import EdgeAttnError

    with pytest.raises(EdgeAttnError, match="fixed token budget"):
        runner.image_features(pixels(), num_tokens=8)


@pytest.mark.slow
def test_real_dinov2_export_prunes_by_the_last_layer_cls_attention(tmp_path):
    """zoo:dinov2-s14 (real weights): --prune fastervlm:64 keeps the patches PyTorch's [CLS] attention ranks highest."""
    from edgeattn.exporter.api import ExportOptions, export_model
    from edgeattn.graphs.pruning import parse_prune

    manifest = export_model("zoo:dinov2-s14", tmp_path / "d", ExportOptions(prune=parse_prune("fastervlm:64")))
    assert manifest.pruning["layer"] == 11 and manifest.pruning["tokens_before"] == 256
    assert manifest.vision.num_image_tokens == 64
    loaded = load_model("zoo:dinov2-s14")
    model = loaded.model
    model.set_attn_implementation("eager")
    image = np.random.default_rng(3).random((1, 3, 224, 224)).astype(np.float32)
    got = session_from_onnx(tmp_path / "d" / "vision.onnx").run(None, {"pixel_values": image})
    with torch.no_grad():
        out = model(pixel_values=torch.from_numpy(image), output_attentions=True)
    scores = out.attentions[-1][:, :, 0, 1:].mean(1)[0]
    assert got[1].shape == (1, 64) and got[0].shape == (1, 64, 384)
    top = set(torch.argsort(scores, descending=True)[:60].tolist())  # near-ties at the boundary may swap
    assert top <= set(got[1][0].tolist())
    np.testing.assert_allclose(got[0][0], out.last_hidden_state[0, 1:][got[1][0]].numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("opset", [23])
def test_prune_after_rewrite_scores_at_the_edgeattn_site(exported, opset):
    """A vision graph whose attention was first rewritten into edgeattn.Attention prunes the same tokens."""
    import onnx_ir as ir
    import onnxruntime as ort

    from edgeattn.graphs import load, rewrite
    from edgeattn.graphs.pruning import prune

    path = exported("demo:tiny-llava", opset) / "vision.onnx"
    image = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    kept = []
    for rewritten in (False, True):
        model = load(path)
        if rewritten:
            model, _ = rewrite(model, None, "ort", component="vision")
        model, report = prune(model, f"fastervlm:{K}")
        assert report.dialect == ("edgeattn" if rewritten else "onnx-attention") and report.layer == 1
        session = ort.InferenceSession(ir.serde.serialize_model(model).SerializeToString())
        kept.append(session.run(["kept_indices"], {"pixel_values": image})[0])
    np.testing.assert_array_equal(kept[0], kept[1])


def test_rewrite_prune_and_inspect_cli(exported, tmp_path, capsys):
    source = exported("demo:tiny-llava") / "vision.onnx"
    out = tmp_path / "pruned.onnx"
    code, stdout, _ = invoke(["rewrite", str(source), str(out), "--prune", f"holov:{K},dynamic=1", "--json"], capsys)
    assert code == 0
    report = json.loads(stdout)
    assert report["pruning"]["method"] == "holov" and report["pruning"]["layer"] == 1 and len(report["rewritten"]) == 2
    code, stdout, _ = invoke(["inspect", str(out), "--json"], capsys)
    rows = {row["op"]: row for row in json.loads(stdout)["pruning"]}
    assert rows["TokenSelect"]["mode"] == "regions" and rows["TokenSelect"]["k_input"] == "num_tokens"
    assert rows["TokenSelect"]["k_default"] == K and rows["TokenScore"]["layer"] == "1"
    code, stdout, _ = invoke(["inspect", str(out)], capsys)
    assert "TokenSelect mode=regions k from input num_tokens (default 16)" in stdout
    code, _, stderr = invoke(["rewrite", str(source), str(tmp_path / "x.onnx"), "--prune", "fastervlm:65"], capsys)
    assert code == 1 and "k = 65 is out of range: vision.onnx has 64 candidate tokens" in stderr
    assert not (tmp_path / "x.onnx").exists()
