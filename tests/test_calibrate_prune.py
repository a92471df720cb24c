"""`edgeattn calibrate --method prune:NAME` on demo:tiny-llava: the chosen budget k is the smallest that
keeps the kl bound (checked here with plain onnxruntime sessions of the written folder and of a folder
pruned to k - 1, against the dense folder), it is the written TokenSelect's attribute and what `inspect`
shows, the folder runs, and bad requests are refused in one line with nothing written.

The demo model has random weights: its KL values are small (~1e-3 to 1e-2 nats), so the bounds here
are small too; the mechanics need a curve, not a trained model."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from edgeattn.calibrate.api import CalibrationOptions, calibrate
from edgeattn.calibrate.goals import CalibrationError, parse_goals
from edgeattn.calibrate.images import read_images
from edgeattn.calibrate.prune import budget_grid, fixed_budget, parse_prune_method
from edgeattn.cli.main import main

BOUND = 0.003
PROMPT = "Describe the image."


@pytest.fixture
def llava(exported):
    """demo:tiny-llava, exported once for the session (conftest's `exported`); calibration only reads it."""
    return exported("demo:tiny-llava")


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    """A folder of two deterministic PNG pictures (and a non-image file calibration skips)."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("pictures")
    rng = np.random.default_rng(7)
    y, x = np.mgrid[0:96, 0:96] / 95.0
    for index in range(2):
        rgb = np.stack([x, y, (x * y) ** (index + 1)], axis=-1) * 200 + rng.integers(0, 55, (96, 96, 3))
        Image.fromarray(rgb.astype(np.uint8)).save(folder / f"picture{index}.png")
    (folder / "notes.txt").write_text("not an image")
    return folder


def _invoke(args, capsys):
    with pytest.raises(SystemExit) as stop:
        main(args)
    out, err = capsys.readouterr()
    return stop.value.code, out, err


def _text_log_probs(folder, vision_path, pixels, ids):
    """Independent of edgeattn's runtime: onnxruntime sessions, the prompt after the image's placeholders."""
    import onnxruntime as ort

    from edgeattn.manifest import read_manifest

    manifest = read_manifest(folder)
    features = ort.InferenceSession(str(vision_path)).run(["image_features"], {"pixel_values": pixels})[0]
    rows = features.shape[1]
    prompt = np.asarray([[manifest.image_token_id] * rows + ids], np.int64)
    embeds = ort.InferenceSession(str(folder / "embed.onnx")).run(None, {"input_ids": prompt})[0]
    embeds[0, :rows] = features[0]
    decoder = ort.InferenceSession(str(folder / "decoder.onnx"))
    g = manifest.decoder
    feeds = {"inputs_embeds": embeds, "attention_mask": np.ones(prompt.shape, np.int64),
             "position_ids": np.arange(prompt.shape[1])[None]}
    for item in decoder.get_inputs():
        if item.name.startswith("past_key_values."):
            feeds[item.name] = np.zeros((1, g.num_kv_heads, 0, g.head_size), np.float32)
    logits = decoder.run(["logits"], feeds)[0][0, rows:].astype(np.float64)
    shifted = logits - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def _mean_kl(dense_folder, vision_path, pictures, ids):
    from edgeattn.manifest import read_manifest
    from edgeattn.runtime.images import load_image, pixel_values

    preprocess = read_manifest(dense_folder).vision.preprocess()
    kls = []
    for path in sorted(pictures.glob("*.png")):
        pixels = pixel_values(load_image(path), preprocess)
        dense = _text_log_probs(dense_folder, dense_folder / "vision.onnx", pixels, ids)
        pruned = _text_log_probs(dense_folder, vision_path, pixels, ids)
        kls.append(float((np.exp(dense) * (dense - pruned)).sum(-1).mean()))
    return float(np.mean(kls))


def test_kl_bound_chooses_the_smallest_k_and_writes_it(llava, pictures, tmp_path, capsys):
    from edgeattn.app import load
    from edgeattn.graphs import load as load_graph, save
    from edgeattn.graphs.pruning import prune
    from edgeattn.manifest import read_manifest
    from edgeattn.runtime.tokenizer import load_tokenizer

    prompts = tmp_path / "prompts.txt"
    prompts.write_text(f"{PROMPT}\n\n")
    out = tmp_path / "cal"
    code, stdout, err = _invoke(["calibrate", str(llava), "--method", "prune:fastervlm", "--target", f"kl={BOUND}",
                                 "--data", f"images:{pictures}", "--prompts", str(prompts), "--out", str(out),
                                 "--json"], capsys)
    assert code == 0, err
    record = json.loads(stdout)
    k = record["chosen"]["k"]
    curve = {m["k"]: m["kl"] for m in record["curve"]}
    assert record["tokens"] == 64 and set(budget_grid(64)) <= set(curve) and curve[64] == pytest.approx(0, abs=1e-9)
    assert record["data"]["samples"] == 2 and [i["name"] for i in record["data"]["images"]] == \
        ["picture0.png", "picture1.png"]
    # The rule: the chosen k keeps the bound, k - 1 (probed by the bisection) does not.
    assert 1 < k < 64 and curve[k] <= BOUND < curve[k - 1] and record["search"]["below"] == k - 1

    # The written vision graph: TokenSelect's attribute k, shown by inspect; the manifest and the files.
    nodes = [n for n in load_graph(out / "vision.onnx").graph if n.op_type == "TokenSelect"]
    assert len(nodes) == 1 and nodes[0].attributes["k"].as_int() == k
    assert not any(i.name in ("calibrate.k", "num_tokens") for i in load_graph(out / "vision.onnx").graph.inputs)
    code, shown, _ = _invoke(["inspect", str(out / "vision.onnx"), "--json"], capsys)
    assert code == 0 and [site["k"] for site in json.loads(shown)["calibrated"]] == [k]
    code, shown, _ = _invoke(["inspect", str(out / "vision.onnx")], capsys)
    assert code == 0 and f"TokenSelect: k = {k} (prune:fastervlm for kl={BOUND})" in shown
    manifest = read_manifest(out)
    assert manifest.pruning["k"] == k and manifest.image_token_count == k
    assert manifest.calibration["chosen"] == {"k": k} and manifest.document["variant"]["prune"] == f"fastervlm:{k}"
    assert json.loads((out / "calibration.json").read_text())["chosen"] == {"k": k}
    if record["plot"] == "calibration.png":
        assert (out / "calibration.png").stat().st_size > 1000

    # Measured independently: the written folder at k, and a folder pruned to k - 1 by the graph API.
    ids = list(load_tokenizer(llava, read_manifest(llava))(PROMPT)["input_ids"])
    at_k = _mean_kl(llava, out / "vision.onnx", pictures, ids)
    model, _ = prune(load_graph(llava / "vision.onnx"), f"fastervlm:{k - 1}")
    save(model, tmp_path / "below.onnx")
    below = _mean_kl(llava, tmp_path / "below.onnx", pictures, ids)
    assert at_k == pytest.approx(curve[k], rel=1e-3, abs=1e-7) and at_k <= BOUND
    assert below == pytest.approx(curve[k - 1], rel=1e-3, abs=1e-7) and below > BOUND

    # The folder runs like any pruned export.
    from PIL import Image

    generated = load(out).generate(PROMPT, Image.open(pictures / "picture0.png"), max_new_tokens=3)
    assert len(generated.kept_indices) == k and generated.tokens


def test_python_api_tokens_goal_on_builtin_images_with_eval(llava, pictures, tmp_path):
    out = tmp_path / "tokens"
    record = calibrate(llava, out, CalibrationOptions("prune:fastervlm", "tokens=16", data="builtin:images",
                                                      samples=2, eval=f"images:{pictures}"))
    assert record["chosen"] == {"k": 16} and record["calibration"]["k"] == 16
    assert [i["name"] for i in record["data"]["images"]] == ["china.jpg/whole", "china.jpg/mirrored"]
    assert len(record["data"]["prompts"]) == 2 and len(record["data"]["prompts_sha256"]) == 64
    assert record["baseline"]["method"] == "random" and record["baseline"]["calibration"]["k"] == 16
    assert record["evaluation"]["chosen"]["k"] == 16 and record["evaluation"]["samples"] == 4
    assert (out / "calibration.json").is_file() and (out / "vision.onnx").is_file()


def _decoder_only(llava, tmp_path):
    """A decoder-only folder: the VLM's language model with the manifest a decoder export writes (the
    keys of demo:tiny-llama's), so that no second export is needed."""
    folder = tmp_path / "decoder-only"
    shutil.copytree(llava, folder)
    document = json.loads((folder / "manifest.json").read_text())
    document["family"] = "decoder"
    del document["components"]["vision"]
    for key in ("vision", "image_token_id", "image_token_count"):
        document.pop(key)
    (folder / "manifest.json").write_text(json.dumps(document))
    (folder / "vision.onnx").unlink()
    return folder


@pytest.mark.parametrize("case, method, target, extra, message", [
    ("impossible", "prune:fastervlm", "kl=1e-9,tokens=4", [], "tokens=4 and kl=1e-09 cannot both hold"),
    ("decoder-only", "prune:fastervlm", "kl=0.01", [], "without a vision component"),
    ("text data", "prune:fastervlm", "kl=0.01", ["--data", "builtin:text"], "calibrates on images"),
    ("images to blasst", "blasst", "sparsity=0.3", ["--data", "builtin:images"], "images calibrate prune:NAME"),
    ("empty folder", "prune:fastervlm", "kl=0.01", ["--data", "images:EMPTY"], "holds no image file"),
    ("unknown name", "prune:nosuch", "kl=0.01", [], "unknown pruning method 'nosuch'"),
    ("ppl", "prune:fastervlm", "ppl=+2%", [], "ppl has no meaning"),
    ("per layer", "prune:fastervlm", "kl=0.01", ["--per", "layer"], "one pruning site"),
    ("fixed k", "prune:fastervlm:8", "kl=0.01", [], "calibration chooses k"),
])
def test_bad_requests_are_one_line_and_write_nothing(llava, tmp_path, capsys, case, method, target, extra, message):
    folder = _decoder_only(llava, tmp_path) if case == "decoder-only" else llava
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no pictures here")
    extra = [item.replace("EMPTY", str(tmp_path / "empty")) for item in extra]
    out = tmp_path / "never"
    code, _, err = _invoke(["calibrate", str(folder), "--method", method, "--target", target, "--out", str(out),
                            "--samples", "1", *extra], capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert message in err and not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith((".never", "never"))]


def test_goal_and_method_parsing():
    assert [(g.name, g.value) for g in parse_goals("kl=0.05,tokens=16", prune=True)] == [("kl", 0.05), ("tokens", 16)]
    with pytest.raises(CalibrationError, match="image-token budget of prune:NAME"):
        parse_goals("tokens=16")
    with pytest.raises(CalibrationError, match="whole number"):
        parse_goals("tokens=2.5", prune=True)
    assert parse_prune_method("prune:holov,regions=4").prune_flag(8) == "holov:8,regions=4"
    assert budget_grid(64) == [64, 32, 16, 8, 4, 2, 1] and budget_grid(5) == [5, 3, 2, 1]
    assert fixed_budget(parse_goals("sparsity=0.75", prune=True), 64) == 16
    assert fixed_budget(parse_goals("sparsity=0.999,kl=1", prune=True), 64) == 1
    with pytest.raises(CalibrationError, match="give one of them"):
        fixed_budget(parse_goals("sparsity=0.5,tokens=8", prune=True), 64)
    with pytest.raises(CalibrationError, match="exceeds the 64 image tokens"):
        fixed_budget(parse_goals("tokens=65", prune=True), 64)
    with pytest.raises(CalibrationError, match="is not a folder"):
        read_images("images:/nonexistent", 4)
    assert [p.name for p in read_images("builtin:images", 8).pictures][2:4] == ["china.jpg/centre-square",
                                                                              "china.jpg/top-left-quarter"]
