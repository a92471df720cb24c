"""`edgeattn rewrite FOLDER OUT`: variants of an exported folder without exporting again (pruned vision,
sparse decoder, rewritten sites), what they share with the input, and the refusals."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from edgeattn.graphs.session import session_from_onnx
from edgeattn.manifest import read_manifest
from edgeattn.runtime.generate import DecoderRunner
from tests.test_cli import invoke
from tests.test_pruning_export import K, assert_runs_as_pytorch_pruned, pixels


def digest(folder: Path) -> dict[str, str]:
    """Every file of a folder (recursively) and its content hash."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_pruned_variant_of_a_vlm_folder_matches_pytorch_and_shares_the_rest(exported, tmp_path, capsys):
    dense = exported("demo:tiny-llava")
    before = digest(dense)
    out = tmp_path / "pruned"
    code, stdout, err = invoke(["rewrite", str(dense), str(out), "--prune", f"fastervlm:{K}", "--json"], capsys)
    assert code == 0, err
    record = json.loads(stdout)
    assert record["pruning"]["k"] == K and len(record["pruning"]["checks"]) == 2
    assert digest(dense) == before  # the input folder is untouched
    manifest = read_manifest(out)
    assert manifest.image_token_count == K and manifest.pruning["method"] == "fastervlm"
    assert manifest.document["variant"]["from"] == str(dense)
    for name in ("embed.onnx", "decoder.onnx"):  # unchanged components are the same files
        assert (out / name).stat().st_ino == (dense / name).stat().st_ino
    assert (out / "vision.onnx").stat().st_ino != (dense / "vision.onnx").stat().st_ino

    # The variant runs as an export with --prune would: as the pruned model in PyTorch.
    assert_runs_as_pytorch_pruned(DecoderRunner(out, manifest))


def test_variant_refusals(exported, tmp_path, capsys):
    dense = exported("demo:tiny-llava")
    pruned = tmp_path / "pruned"
    assert invoke(["rewrite", str(dense), str(pruned), "--prune", "fastervlm:8"], capsys)[0] == 0
    cases = [
        (["rewrite", str(pruned), str(tmp_path / "again"), "--prune", "fastervlm:4"], "already pruned"),
        (["rewrite", str(exported("demo:tiny-llama")), str(tmp_path / "x"), "--prune", "fastervlm:4"],
         "needs a folder with a vision component"),
        (["rewrite", str(dense), str(dense / "inside"), "--prune", "fastervlm:4"], "is, holds or sits inside"),
        (["rewrite", str(dense), str(pruned), "--prune", "fastervlm:4"], "already exists"),
        (["rewrite", str(dense), str(tmp_path / "y"), "--prune", "fastervlm:4", "--lowering", "fast"],
         "applies to an .onnx file"),
        (["rewrite", str(dense), str(tmp_path / "z"), "--component", "audio"], "is not in"),
    ]
    for args, message in cases:
        code, _, err = invoke(args, capsys)
        assert code == 1 and message in err and "Traceback" not in err, (args, err)
        assert len(err.strip().splitlines()) == 1
    for name in ("again", "x", "y", "z"):
        assert not (tmp_path / name).exists()


def test_sparse_variant_of_a_decoder_folder(exported, tmp_path, capsys):
    dense = exported("demo:tiny-llama")
    out = tmp_path / "sparse"
    code, stdout, err = invoke(["rewrite", str(dense), str(out), "--sparse", "window:size=4,sinks=1", "--json"], capsys)
    assert code == 0, err
    manifest = read_manifest(out)
    assert manifest.sparse["flags"] == ["window:size=4,sinks=1"]
    assert (out / "embed.onnx").stat().st_ino == (dense / "embed.onnx").stat().st_ino
    assert invoke(["rewrite", str(out), str(tmp_path / "twice"), "--sparse", "block:keep=0.5"], capsys)[0] == 1
    # A window of 4 with 1 sink changes the attention of a 12-token prompt: the logits differ from the
    # dense decoder's, and agree with them while the prompt fits the window (3 tokens).
    ids = list(b"window check")
    dense_run, sparse_run = DecoderRunner(dense, read_manifest(dense)), DecoderRunner(out, manifest)
    short = [np.asarray(r._step(r.embed.run(None, {"input_ids": np.asarray([ids[:3]])})[0], r._empty_past(), 0)[0])
             for r in (dense_run, sparse_run)]
    np.testing.assert_allclose(short[1], short[0], rtol=1e-5, atol=1e-5)
    full = [np.asarray(r._step(r.embed.run(None, {"input_ids": np.asarray([ids])})[0], r._empty_past(), 0)[0])
            for r in (dense_run, sparse_run)]
    assert np.abs(full[1] - full[0]).max() > 1e-3


def test_plain_rewrite_of_a_folder_keeps_the_outputs(exported, tmp_path, capsys):
    dense = exported("demo:tiny-vit")
    out = tmp_path / "rewritten"
    code, _, err = invoke(["rewrite", str(dense), str(out)], capsys)
    assert code == 0, err
    manifest = read_manifest(out)
    assert manifest.rewrite["components"]["vision"]["rewritten"] == 2
    image = pixels(1, read_manifest(dense).vision.image_size)
    want, got = (session_from_onnx(folder / "vision.onnx").run(None, {"pixel_values": image})[0]
                 for folder in (dense, out))
    # edgeattn.Attention's function body computes what the standard Attention op does (float32 sums in
    # another order: 1e-5 relative).
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(np.abs(want).max()))


@pytest.mark.parametrize("flag", ["--prune", "--sparse"])
def test_variant_folders_are_accepted_by_run(exported, tmp_path, capsys, flag):
    folder = exported("demo:tiny-llava") if flag == "--prune" else exported("demo:tiny-llama")
    value = "fastervlm:8" if flag == "--prune" else "block:keep=0.5,block=4"
    out = tmp_path / "variant"
    assert invoke(["rewrite", str(folder), str(out), flag, value], capsys)[0] == 0
    code, stdout, err = invoke(["run", str(out), "--prompt", "Hi", "--max-new-tokens", "2", "--json"], capsys)
    assert code == 0, err
    assert len(json.loads(stdout)["tokens"]) == 2


def test_compile_builds_a_pruned_variant_with_its_pruning_plugins(exported, tmp_path, capsys):
    """`compile` accepts a variant folder: TensorRT-RTX builds its three engines, the pruning ops of the
    vision component as plugin layers (see tests/test_compile.py for when TensorRT-RTX is absent)."""
    from tests.test_compile import _skip_without_trt

    _skip_without_trt()
    variant = tmp_path / "pruned"
    assert invoke(["rewrite", str(exported("demo:tiny-llava")), str(variant), "--prune", "fastervlm:8"], capsys)[0] == 0
    code, _, err = invoke(["compile", str(variant), "--out", str(tmp_path / "engines")], capsys)
    assert code == 0, err
    record = json.loads((tmp_path / "engines" / "compile.json").read_text())
    assert set(record["engines"]) == {"vision", "embed", "decoder"}
    assert record["engines"]["vision"]["layer_types"]["PLUGIN_V3"] == 2


def test_run_shows_the_kept_tokens_of_a_pruned_folder(exported, tmp_path, capsys):
    from PIL import Image

    from edgeattn.runtime.images import load_image, pixel_values

    variant = tmp_path / "pruned"
    assert invoke(["rewrite", str(exported("demo:tiny-llava")), str(variant), "--prune", "fastervlm:8"], capsys)[0] == 0
    photo = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(photo)
    code, stdout, err = invoke(["run", str(variant), "--prompt", "Hi", "--image", str(photo), "--max-new-tokens", "1",
                                "--json"], capsys)
    assert code == 0, err
    manifest = read_manifest(variant)
    pixels_in = pixel_values(load_image(str(photo)), manifest.vision.preprocess())
    want = session_from_onnx(variant / "vision.onnx").run(["kept_indices"], {"pixel_values": pixels_in})[0][0]
    assert json.loads(stdout)["kept_indices"] == want.tolist() and len(want) == 8
