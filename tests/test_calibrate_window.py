"""`edgeattn calibrate --method window[:sinks=S,block=B]` on demo:tiny-llama (test_calibrate's peaked
fixture): the written decoder carries the chosen window per layer and computes what calibration
measured, the measured density is the window mask's, impossible goals and bad parameters are refused
in one line with nothing written."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from edgeattn.calibrate.api import CalibrationOptions, calibrate
from edgeattn.calibrate.goals import CalibrationError, parse_method
from edgeattn.calibrate.methods import window_candidates
from edgeattn.cli.main import main
from tests.test_calibrate import _logits, peaked  # noqa: F401  (peaked is a fixture)

METHOD = "window:sinks=4,block=16"


def _window_density(length: int, window: int, sinks: int) -> float:
    """The reference's window layout on one causal L-token window: visible pairs / causal pairs."""
    pos = np.arange(length)[:, None]
    keys = np.arange(length)[None, :]
    visible = ((keys > pos - window) | (keys < sinks)) & (keys <= pos)
    return float(visible.sum() / (length * (length + 1) / 2))


def _written_perplexity(out, record) -> float:
    """Perplexity of the written decoder on the record's calibration windows (an independent run)."""
    from edgeattn.calibrate.data import load_tokenizer, read_source, token_ids
    from edgeattn.manifest import read_manifest

    manifest = read_manifest(out)
    ids = token_ids(read_source(record["data"]["source"]), load_tokenizer(out, manifest.tokenizer))
    nll, count = 0.0, 0
    for start in record["data"]["starts"]:
        window = ids[start:start + record["data"]["lengths"][0]]
        logits = _logits(out / "decoder.onnx", window, manifest, out)[0].astype(np.float64)
        top = logits.max(-1, keepdims=True)
        logp = logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))
        nll += float(-logp[np.arange(len(window) - 1), window[1:]].sum())
        count += len(window) - 1
    return math.exp(nll / count)


def test_window_per_layer_reaches_sparsity_and_writes_the_windows(peaked, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "window"
    record = calibrate(peaked, out, CalibrationOptions(METHOD, "sparsity=0.5", samples=1, max_tokens=256))
    assert record["method"] == "window" and record["tunable"] == "window"
    assert record["details"]["candidates"] == [256, 181, 128, 91, 64, 45, 32, 23, 16]
    assert record["details"]["sensitivity"].keys() == {"0", "1"}
    cal = record["calibration"]
    assert cal["sparsity"] >= 0.5
    # The measured density of each layer is the window mask's (attention_mask keeps every key).
    for layer, window in record["chosen"].items():
        assert cal["sparsity_by_site"][layer] == pytest.approx(1 - _window_density(256, int(window), 4), abs=1e-5)
    # The written decoder: the window-gather lowering with the chosen window per layer, shown by inspect.
    with pytest.raises(SystemExit):
        main(["inspect", str(out / "decoder.onnx"), "--json"])
    lowered = json.loads(capsys.readouterr().out)["lowered"]
    assert {str(s["layer"]): s["attributes"]["window"] for s in lowered} == record["chosen"]
    assert all(s["lowering"] == "window-gather" and s["attributes"]["sinks"] == 4 for s in lowered)
    # It computes what calibration measured (float32 gather vs the body: perplexity to 1e-4).
    assert _written_perplexity(out, record) == pytest.approx(cal["perplexity"], rel=1e-4)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["calibration"]["method"] == "window" and manifest["calibration"]["chosen"] == record["chosen"]
    assert manifest["sparse"]["flags"] == [METHOD]
    assert json.loads((out / "calibration.json").read_text())["chosen"] == record["chosen"]


def test_window_per_model_keeps_the_ppl_bound(peaked, tmp_path):  # noqa: F811
    out = tmp_path / "model"
    record = calibrate(peaked, out, CalibrationOptions("window:block=16", "ppl=+3%", per="model", samples=1,
                                                       max_tokens=128))
    windows = set(record["chosen"].values())
    assert len(windows) == 1 and windows < set(window_candidates(128, 16))
    assert record["calibration"]["perplexity_increase"] <= 0.03
    assert _written_perplexity(out, record) == pytest.approx(record["calibration"]["perplexity"], rel=1e-4)


def test_impossible_window_goal_is_one_line_and_writes_nothing(peaked, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "never"
    with pytest.raises(SystemExit) as stop:
        main(["calibrate", str(peaked), "--method", "window:block=16", "--target", "sparsity=0.99", "--out", str(out),
              "--max-tokens", "128", "--samples", "1"])
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 1 and len(err.splitlines()) == 1
    assert "sparsity=0.99 cannot be reached: window = 16 at every layer" in err and not out.exists()
    with pytest.raises(CalibrationError, match="block 128 is not shorter than the calibration windows"):
        calibrate(peaked, out, CalibrationOptions("window:block=128", "sparsity=0.5", samples=1, max_tokens=128))
    assert not out.exists()


@pytest.mark.parametrize("method, message", [
    ("window:size=64", "fixes window"),
    ("window:sinks=4,keep=0.5", "keep is not a parameter of the window layout"),
    ("window:mode=threshold", "mode is not a parameter of the window layout"),
    ("window:layout=select", "unknown key 'layout'"),
    ("block:sinks=4", "sinks belongs to the window layout"),
])
def test_bad_window_parameters_are_refused(method, message):
    with pytest.raises(CalibrationError, match=message):
        parse_method(method)


def test_bad_window_method_is_one_line(peaked, tmp_path, capsys):  # noqa: F811
    with pytest.raises(SystemExit) as stop:
        main(["calibrate", str(peaked), "--method", "window:size=64", "--target", "sparsity=0.5",
              "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 1 and len(err.splitlines()) == 1 and "fixes window" in err
    assert not (tmp_path / "o").exists()


def test_window_candidates():
    assert window_candidates(512, 64) == (512, 362, 256, 181, 128, 91, 64)
    assert window_candidates(500, 64)[-1] == 64 and window_candidates(500, 64)[0] == 500
    with pytest.raises(CalibrationError, match="not shorter"):
        window_candidates(64, 64)
