"""`edgeattn calibrate` on demo:tiny-llama: goals met on the calibration data, values folded into the
written decoder (which computes what calibration measured), impossible goals and bad data refused in
one line with nothing written, and the search helpers on known curves.

The demo model's random weights give nearly uniform attention, where BLASST skips nothing until
λ = 1; the fixture multiplies each Attention node's `scale` so attention is peaked and the skip ratio
grows smoothly with the scale factor (the mechanics need a curve, not a trained model)."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import onnx_ir as ir
import pytest

from edgeattn.calibrate.api import CalibrationOptions, calibrate
from edgeattn.calibrate.goals import CalibrationError, parse_goals, parse_method
from edgeattn.calibrate.search import fit_exponential, greedy_path, length_law, water_fill
from edgeattn.cli.main import main

PEAKED_SCALE = 60.0


@pytest.fixture(scope="module")
def peaked(exported, tmp_path_factory):
    from edgeattn.graphs import load, save

    folder = tmp_path_factory.mktemp("calibrate") / "llama"
    shutil.copytree(exported("demo:tiny-llama"), folder)
    model = load(folder / "decoder.onnx")
    for node in model.graph:
        if node.op_type == "Attention":
            node.attributes["scale"] = ir.AttrFloat32("scale", PEAKED_SCALE)
    save(model, folder / "decoder.onnx")
    return folder


def _logits(path, window_ids, manifest, folder, extra=None):
    import onnxruntime as ort

    g = manifest.decoder
    embed = ort.InferenceSession(str(folder / "embed.onnx")).run(None, {"input_ids": window_ids[None]})[0]
    feeds = {"inputs_embeds": embed, "attention_mask": np.ones((1, len(window_ids)), np.int64),
             "position_ids": np.arange(len(window_ids))[None]}
    session = ort.InferenceSession(str(path))
    for item in session.get_inputs():
        if item.name.startswith("past_key_values."):
            feeds[item.name] = np.zeros((1, g.num_kv_heads, 0, g.head_size), np.float32)
    feeds.update(extra or {})
    return session.run(["logits"], feeds)[0]


def test_blasst_reaches_sparsity_and_writes_the_length_law(peaked, tmp_path, capsys):
    from edgeattn.calibrate.data import load_tokenizer, read_source, token_ids
    from edgeattn.calibrate.graph import CALIBRATION_TAG, CalibrationRunner
    from edgeattn.graphs import load
    from edgeattn.manifest import read_manifest

    out = tmp_path / "cal"
    options = CalibrationOptions("blasst:block_m=16,block_n=16", "sparsity=0.1", samples=1, max_tokens=512)
    record = calibrate(peaked, out, options)
    # A length whose windows cannot skip 10 % even at the largest λ is reported; the law goes through
    # the others, each reached within 0.05.
    unreachable = record["details"]["unreachable"]
    assert all(cap < 0.1 for cap in unreachable.values()) and len(unreachable) < 3
    by_length = record["calibration"]["sparsity_by_length"]
    for length in {"128", "256", "512"} - set(unreachable):
        assert 0.1 <= by_length[length] <= 0.1 + 0.05, by_length
    assert set(record["length_law"]) == {"0", "1"} and record["baseline"]["calibration"] is not None
    saved = json.loads((out / "calibration.json").read_text())
    assert saved["chosen"] == record["chosen"] and saved["data"]["sha256"] == record["data"]["sha256"]
    manifest = read_manifest(out)
    assert manifest.calibration["method"] == "blasst" and manifest.calibration["chosen"] == record["chosen"]
    nodes = [n for n in load(out / "decoder.onnx").graph if n.op_type == "SkipSoftmaxAttention"]
    assert len(nodes) == 2
    for node in nodes:
        tag = json.loads(node.metadata_props[CALIBRATION_TAG])
        law = record["length_law"][node.metadata_props["edgeattn.layer"]]
        assert tag["law"]["c"] == law["c"] and tag["law"]["p"] == law["p"]
    with pytest.raises(SystemExit):
        main(["inspect", str(out / "decoder.onnx"), "--json"])
    shown = json.loads(capsys.readouterr().out)["calibrated"]
    assert {site["layer"]: site["law"]["p"] for site in shown} == {k: v["p"] for k, v in record["length_law"].items()}
    # The written decoder computes what calibration measured: its in-graph law at L = 256 equals the
    # calibration graph fed c·L^p (float32 logits of the same graph arithmetic: 1e-5 relative).
    runner = CalibrationRunner(peaked, read_manifest(peaked), parse_method(options.method))
    ids = token_ids(read_source("builtin:text"), load_tokenizer(peaked, manifest.tokenizer))[1000:1256]
    from edgeattn.calibrate.data import Window

    values = {site: law["c"] * 256 ** law["p"] for site, law in record["length_law"].items()}
    expected, _ = runner.run(Window(ids, 1000), values)
    got = _logits(out / "decoder.onnx", ids, manifest, out)[0]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


def test_block_keeps_the_kl_bound_per_layer(peaked, tmp_path):
    from edgeattn.graphs import load
    from edgeattn.graphs.sparse.lower_ort import lowered_sites

    out = tmp_path / "block"
    record = calibrate(peaked, out, CalibrationOptions("block:block=16", "kl=0.02", samples=1, max_tokens=256))
    cal = record["calibration"]
    assert cal["kl"] <= 0.02 and cal["sparsity"] > 0.0
    assert record["details"]["sensitivity"].keys() == {"0", "1"}
    sites = lowered_sites(load(out / "decoder.onnx"))
    assert {str(s["layer"]): s["attributes"]["keep"] for s in sites} == pytest.approx(record["chosen"])
    assert all(s["lowering"] == "block-gather" for s in sites)
    if record["plot"] == "calibration.png":
        assert (out / "calibration.png").stat().st_size > 1000


def test_impossible_goal_is_one_line_and_writes_nothing(peaked, tmp_path, capsys):
    out = tmp_path / "never"
    args = ["calibrate", str(peaked), "--method", "block:block=16", "--target", "sparsity=0.99,ppl=+0.1%",
            "--out", str(out), "--max-tokens", "128", "--samples", "1"]
    with pytest.raises(SystemExit) as stop:
        main(args)
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 1 and len(err.splitlines()) == 1
    assert "sparsity=0.99 cannot be reached" in err and not out.exists()
    with pytest.raises(CalibrationError, match="kl 0.* \\(bound 1e-09\\)"):
        calibrate(peaked, out, CalibrationOptions("block:block=16", "sparsity=0.3,kl=1e-9", samples=1, max_tokens=128))
    assert not out.exists()


@pytest.mark.parametrize("content, name, message", [
    ("", "empty.txt", "holds no text"),
    ("short text", "short.txt", "fewer than the 128 one window needs"),
    ('{"txt": "x"}\n', "bad.jsonl", 'has no "text" string'),
    ("not json\n", "bad2.jsonl", "is not a JSON object"),
])
def test_bad_data_is_refused(peaked, tmp_path, content, name, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(CalibrationError, match=message):
        calibrate(peaked, tmp_path / "o", CalibrationOptions("block", "kl=0.1", data=f"text:{path}", max_tokens=128))
    assert not (tmp_path / "o").exists()


def test_a_lowered_decoder_is_refused(peaked, tmp_path):
    from edgeattn.exporter.rewrite_step import sparsify_decoder

    folder = tmp_path / "sparse"
    shutil.copytree(peaked, folder)
    sparsify_decoder(folder, ["block:keep=0.5,block=16"])
    with pytest.raises(CalibrationError, match="lowered for onnxruntime .*without --sparse"):
        calibrate(folder, tmp_path / "o", CalibrationOptions("block", "kl=0.1", max_tokens=128))


@pytest.mark.parametrize("method, target, message", [
    ("block:window=64", "sparsity=0.5", "window belongs to the window layout"),
    ("bogus", "sparsity=0.5", "names no calibration method"),
    ("block:keep=0.5", "sparsity=0.5", "fixes keep"),
    ("block", "tokens=64", "image-token budget of prune:NAME"),
    ("block", "ppl=2", "relative increase"),
    ("block", "sparsity=1.5", "in \\(0, 1\\)"),
    ("block", "kl=nan", "finite"),
    ("block", "speed=2", "unknown goal"),
])
def test_bad_method_and_goals(method, target, message):
    with pytest.raises(CalibrationError, match=message):
        parse_method(method)
        parse_goals(target)


def test_goal_parsing():
    goals = parse_goals("sparsity=0.5, ppl=+2%,kl=0.02")
    assert [(g.name, g.value) for g in goals] == [("sparsity", 0.5), ("ppl", pytest.approx(0.02)), ("kl", 0.02)]
    assert parse_method("block:mode=threshold,block=64").tunable == "threshold"


def test_search_helpers_on_known_curves():
    s = np.linspace(0.05, 0.6, 8)
    exact = fit_exponential(list(3.0 * np.exp(5.0 * s)), list(s))
    assert exact.a == pytest.approx(3.0, rel=1e-6) and exact.b == pytest.approx(5.0, rel=1e-6)
    assert fit_exponential([1.0, 2.0], [0.0, 0.0]) is None
    c, p = length_law([256, 512, 1024], [2.0 * L ** 0.5 for L in (256, 512, 1024)])
    assert c == pytest.approx(2.0) and p == pytest.approx(0.5)
    shares = water_fill(0.4, {"a": 0.1, "b": 0.9, "c": 0.9})
    assert shares["a"] == 0.1 and math.isclose(sum(shares.values()) / 3, 0.4) and shares["b"] == pytest.approx(0.55)
    path = greedy_path(["x", "y"], [1.0, 0.5, 0.25], {"x": [0, 0.1, 0.5], "y": [0, 1.0, 2.0]},
                       {"x": [0, 0.3, 0.6], "y": [0, 0.3, 0.6]})
    assert path[1] == {"x": 0.5, "y": 1.0} and path[2] == {"x": 0.25, "y": 1.0} and path[-1] == {"x": 0.25, "y": 0.25}
