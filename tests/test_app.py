"""The Python API for apps (`edgeattn.load`): one loaded model serving several threads at once, streaming
text that is whole characters, per-request visual-token budgets, one-line refusals, and the example app.

Greedy decoding is deterministic, so a request gives the same tokens whether it runs alone or beside
another one on the same model object: that is what shows per-request state never leaks between threads.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

import edgeattn
from edgeattn.app import Model
from edgeattn.errors import EdgeAttnError

ROOT = Path(__file__).resolve().parents[1]
# Encoder outputs of the same input on the same session, computed on different threads: onnxruntime's CPU
# kernels split work by its own thread count, not by the caller, so they agree to float32 rounding at most.
RTOL, ATOL = 1e-6, 1e-7


def image(seed: int, size: int = 40) -> np.ndarray:
    return (np.random.default_rng(seed).random((size, size, 3)) * 255).astype(np.uint8)


def in_threads(work: list[Callable[[], Any]]) -> list[Any]:
    """Run each callable on its own thread, all released together by a barrier; their results in order."""
    barrier = threading.Barrier(len(work))
    results: list[Any] = [None] * len(work)
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            barrier.wait()
            results[index] = work[index]()
        except BaseException as err:  # noqa: BLE001 - re-raised in the test's thread below
            errors.append(err)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(work))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads), "a request did not finish in 120 s"
    if errors:
        raise errors[0]
    return results


def streamed(model: Model, prompt: str, **settings: Any) -> tuple[list[str], Any]:
    stream = model.generate(prompt, stream=True, **settings)
    pieces = list(stream)
    return pieces, stream.result


@pytest.fixture(scope="module")
def llava(exported) -> Model:
    return edgeattn.load(exported("demo:tiny-llava"), threads=1)


@pytest.fixture(scope="module")
def dynamic_llava(exported, tmp_path_factory) -> Path:
    """A copy of the demo:tiny-llava export whose vision component is pruned by FlashVLM (guided by the
    prompt) to a run-time budget of 16 of its 64 tokens, as `export --prune flashvlm:16,dynamic=1` makes it."""
    from edgeattn.exporter.pruning import update_manifest
    from edgeattn.graphs import load, save
    from edgeattn.graphs.pruning import parse_prune, prune
    from edgeattn.manifest import read_manifest, write_manifest

    folder = tmp_path_factory.mktemp("app") / "llava_dynamic"
    shutil.copytree(exported("demo:tiny-llava"), folder)
    model, report = prune(load(folder / "vision.onnx"), parse_prune("flashvlm:16,dynamic=1"), where="vision.onnx")
    save(model, folder / "vision.onnx")
    document = read_manifest(folder).to_json()
    update_manifest(document, report.manifest_entry(), folder, "vision", "vision.onnx")
    write_manifest(folder, document)
    return folder


def test_two_threads_streaming_give_the_tokens_of_sequential_runs(llava) -> None:
    requests = [("Describe the picture.", image(1)), ("What is it?", image(2))]
    alone = [llava.generate(prompt, image=picture, max_new_tokens=10) for prompt, picture in requests]
    assert all(result.tokens for result in alone) and max(len(result.tokens) for result in alone) > 3
    assert alone[0].tokens != alone[1].tokens  # two different requests, so a mix-up would show
    for _ in range(2):
        together = in_threads([lambda p=p, i=i: streamed(llava, p, image=i, max_new_tokens=10) for p, i in requests])
        for (pieces, result), want in zip(together, alone):
            assert result.tokens == want.tokens and result.prompt_tokens == want.prompt_tokens
            assert "".join(pieces) == result.text == want.text
            assert result.ttft_ms > 0 and set(result.stages_ms) == {"vision_ms", "prefill_ms"}


def test_streamed_text_is_whole_characters(llava) -> None:
    """A byte-level tokenizer spends several tokens on one character: no piece shows half of one."""
    from edgeattn.app import TextStream
    from edgeattn.runtime.generate import Generation

    text = "naïve café — 東京 costs €5 🙂"
    ids = llava._encode(text)
    assert len(ids) == len(text.encode("utf-8"))  # one token per byte: the hard case

    def steps():
        yield from ids
        return Generation([1], list(ids), 1.0, 0.5)

    stream = TextStream(steps(), llava._decode)
    pieces = list(stream)
    assert "".join(pieces) == text == stream.result.text
    assert not any("\ufffd" in piece for piece in pieces)
    assert "東" in pieces and "🙂" in pieces and len(pieces) == len(text)


def test_a_generation_that_ends_inside_a_character_keeps_its_bytes(llava) -> None:
    from edgeattn.app import TextStream
    from edgeattn.runtime.generate import Generation

    ids = llava._encode("ok €")[:-1]  # the euro sign's last byte never comes

    def steps():
        yield from ids
        return Generation([1], list(ids), 1.0, 0.5)

    stream = TextStream(steps(), llava._decode)
    assert "".join(stream) == stream.result.text == llava._decode(ids) and stream.result.text.endswith("\ufffd")


def test_encoders_answer_from_threads_as_they_do_alone(llava, tmp_path) -> None:
    from edgeattn.exporter.api import ExportOptions, export_model
    from tests.models import hf_folders

    export_model(str(hf_folders.tiny_bert(tmp_path / "bert")), tmp_path / "out", ExportOptions(validate=False))
    bert = edgeattn.load(tmp_path / "out", threads=1)
    texts = [["the cat sat on the mat", "dogs"], ["the dog sat"]]
    pictures = [[image(3), image(4)], image(5)]
    alone = [bert.embed(t) for t in texts] + [llava.image_features(p)["image_features"] for p in pictures]
    assert alone[0].shape == (2, 32) and alone[1].shape == (1, 32)
    assert alone[2].shape == (2, 64, 64) and alone[3].shape == (1, 64, 64)
    work = [lambda t=t: bert.embed(t) for t in texts] + [lambda p=p: llava.image_features(p)["image_features"]
                                                          for p in pictures]
    for got, want in zip(in_threads(work * 2), alone * 2):
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(bert.embed("dogs")[0], alone[0][1], rtol=1e-5, atol=1e-6)  # unpadded vs padded row
    with pytest.raises(EdgeAttnError, match="give at least one prompt to embed"):
        bert.embed([])
    with pytest.raises(EdgeAttnError, match="image_features needs a VLM or a vision encoder; this folder holds a text"):
        bert.image_features(image(3))


def test_a_vision_encoder_gives_its_features(exported) -> None:
    vit = edgeattn.load(exported("demo:tiny-vit"))
    assert vit.family == "vision" and vit.manifest.vision is not None
    from PIL import Image

    as_array = vit.image_features(image(6, 32))["image_features"]
    as_pil = vit.image_features(Image.fromarray(image(6, 32)))["image_features"]
    assert as_array.shape[0] == 1 and as_array.shape[1] == vit.manifest.vision.num_image_tokens
    np.testing.assert_array_equal(as_array, as_pil)
    with pytest.raises(EdgeAttnError, match="generate needs a decoder LM or a VLM; this folder holds a vision"):
        vit.generate("hi")
    with pytest.raises(EdgeAttnError, match="image_tokens sets a VLM's visual-token budget"):
        vit.image_features(image(6), image_tokens=3)


def test_run_time_budget_per_request(dynamic_llava) -> None:
    model = edgeattn.load(dynamic_llava)
    prompt = "Describe"
    default = model.generate(prompt, image=image(7), max_new_tokens=3)
    assert default.prompt_tokens == 16 + len(prompt.encode())
    budgets = [4, 8, 16, 64]
    runs = in_threads([lambda k=k: streamed(model, prompt, image=image(7), max_new_tokens=3, image_tokens=k)
                       for k in budgets])
    for k, (pieces, result) in zip(budgets, runs):
        assert result.prompt_tokens == k + len(prompt.encode())
        assert result.tokens == model.generate(prompt, image=image(7), max_new_tokens=3, image_tokens=k).tokens
    features = model.image_features([image(7), image(8)], prompt=prompt, image_tokens=5)
    assert features["image_features"].shape == (2, 5, 64) and features["kept_indices"].shape == (2, 5)
    kept = features["kept_indices"]
    assert (np.diff(kept, axis=1) > 0).all() and kept.min() >= 0 and kept.max() < 64
    with pytest.raises(EdgeAttnError, match=r"budget must be from 1 to 64 \(got 65\)"):
        model.generate(prompt, image=image(7), image_tokens=65)
    with pytest.raises(EdgeAttnError, match="prunes visual tokens by the prompt; give image_features a prompt"):
        model.image_features(image(7))


MISSING = "missing.png"


@pytest.mark.parametrize("call, message", [
    (lambda m: m.generate("Hi", max_new_tokens=0), r"max_new_tokens must be from 1 to 1048576 \(got 0\)"),
    (lambda m: m.generate("Hi", max_new_tokens=2.5), "max_new_tokens must be an integer"),
    (lambda m: m.generate("Hi", max_new_tokens=True), "max_new_tokens must be an integer"),
    (lambda m: m.generate("a" * 5000), r"the prompt \(5000 tokens\) plus max_new_tokens \(16\) exceeds the model's "
                                       "1024 positions"),
    (lambda m: m.generate(""), "the prompt is empty"),
    (lambda m: m.generate("caf\udce9"), "prompt is not valid UTF-8 text"),
    (lambda m: m.generate(b"Hi"), "prompt must be a str"),
    (lambda m: m.generate("Hi", image_tokens=4), "image_tokens needs image"),
    (lambda m: m.generate("Hi", image=image(1), image_tokens=4), "this export has a fixed image-token budget"),
    (lambda m: m.generate("Hi", image=np.zeros((4, 4), np.float32)), "image array must be H x W x 3 uint8"),
    (lambda m: m.generate("Hi", image=MISSING), "does not exist"),
    (lambda m: m.generate("Hi", image=7), "image must be a file path, an H x W x 3 uint8 array or a PIL image"),
    (lambda m: m.embed(["a"]), "embed needs a text encoder; this folder holds a VLM"),
    (lambda m: m.image_features([image(1)] * 65), r"from 1 to 64 images per call \(got 65\)"),
    (lambda m: m.image_features(image(1), prompt="x"), "does not read the prompt"),
])
def test_bad_requests_are_refused_in_one_line(llava, call, message) -> None:
    with pytest.raises(EdgeAttnError, match=message) as refused:
        call(llava)
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize("settings, message", [
    ({"threads": 0}, r"threads must be from 1 to 1024 \(got 0\)"),
    ({"providers": ["NoSuchExecutionProvider"]}, "NoSuchExecutionProvider not available here"),
    ({"providers": [3]}, "providers must be a list of onnxruntime provider names"),
])
def test_bad_load_settings_are_refused(exported, settings, message) -> None:
    with pytest.raises(EdgeAttnError, match=message):
        edgeattn.load(exported("demo:tiny-llava"), **settings)


def test_a_folder_without_an_export_is_refused(tmp_path) -> None:
    with pytest.raises(EdgeAttnError, match="has no manifest.json"):
        edgeattn.load(tmp_path)


def test_import_edgeattn_stays_light() -> None:
    code = ("import sys, edgeattn; print(edgeattn.__version__, callable(edgeattn.load), "
            "[m for m in ('numpy', 'onnxruntime', 'transformers', 'edgeattn.app') if m in sys.modules])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split(" ", 1)[1].strip() == "True []"


def test_cli_run_gives_the_api_result(llava, exported, tmp_path, capsys) -> None:
    from PIL import Image

    from edgeattn.cli.main import main

    Image.fromarray(image(9)).save(tmp_path / "i.png")
    with pytest.raises(SystemExit) as stop:
        main(["run", str(exported("demo:tiny-llava")), "--prompt", "Hi", "--image", str(tmp_path / "i.png"),
              "--max-new-tokens", "5", "--threads", "1", "--json"])  # the threads of the `llava` fixture
    assert stop.value.code == 0
    got = json.loads(capsys.readouterr().out)
    want = llava.generate("Hi", image=tmp_path / "i.png", max_new_tokens=5)
    assert got["tokens"] == list(want.tokens) and got["text"] == want.text
    assert got["prompt_tokens"] == want.prompt_tokens
    assert list(got) == ["tokens", "text", "prompt_tokens", "ttft_ms", "tpot_ms", "vision_ms", "prefill_ms"]


def test_example_app_streams_two_requests_from_two_threads(llava, exported, tmp_path) -> None:
    from PIL import Image

    Image.fromarray(image(10)).save(tmp_path / "photo.png")
    prompts = ["Describe the picture.", "What colour is it?"]
    args = [sys.executable, str(ROOT / "examples" / "app.py"), str(exported("demo:tiny-llava")), "--image",
            str(tmp_path / "photo.png"), "--max-new-tokens", "8", "--threads", "1",
            *[a for p in prompts for a in ("--prompt", p)]]
    done = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    for number, prompt in enumerate(prompts, start=1):
        lines = [line for line in done.stdout.splitlines() if line.startswith(f"[{number}] ")]
        pieces = [json.loads(line.split(" ", 1)[1]) for line in lines[:-1]]
        last = re.fullmatch(rf"\[{number}\] done: (\d+) tokens, first token after [\d.]+ ms, text (.*)", lines[-1])
        assert last is not None, lines[-1]
        want = llava.generate(prompt, image=tmp_path / "photo.png", max_new_tokens=8)
        assert int(last.group(1)) == len(want.tokens) and json.loads(last.group(2)) == want.text == "".join(pieces)
