"""benchmarks/pruning_reader.py at a tiny size: demo:tiny-vit (a [CLS] and 4 x 4 patches), 2 x 2 canvases.

The benchmark's numbers need DINOv2 and half an hour; here every piece runs end to end on a model that
exports in seconds, to check the task, the JSON, and that what the reader is scored on is what the
pruned ONNX graphs output.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the benchmarks are scripts beside the package, not part of it
    sys.path.insert(0, str(ROOT))

from benchmarks import pruning_reader as pr  # noqa: E402

MODEL = "demo:tiny-vit"


def test_canvases_split_by_source_digit_and_hold_distinct_digits():
    data = pr.prepare(3, 5, 40, 20)
    assert not set(data["train"].ravel()) & set(data["test"].ravel())  # no test digit image in training
    assert all(len(set(row)) == 9 for row in data["labels"][data["test"]])
    again = pr.prepare(3, 5, 40, 20)
    assert (again["test"] == data["test"]).all() and (pr.prepare(3, 6, 40, 20)["test"] != data["test"]).any()


def test_cells_and_strokes_follow_the_canvas_layout():
    assert np.bincount(pr.patch_cells(2, 16)).tolist() == [64] * 4
    three = pr.patch_cells(3, 16).reshape(16, 16)
    assert three[0, 0] == 0 and three[0, 15] == 2 and three[15, 0] == 6 and three[8, 8] == 4
    data = pr.prepare(2, 0, 4, 4)
    strokes = pr.patch_strokes(data["images"], data["test"], 2, 16).reshape(-1, 16, 16)
    # at 2 x 2 every source pixel covers exactly one patch: the top-left cell is the first digit itself
    first = data["images"][data["test"][:, 0]] >= 8
    assert (strokes[:, :8, :8] == first).all()


def test_budgets_are_fractions_of_the_tokens():
    geo = pr.Geometry(16, 384, {})
    assert [geo.budget(f) for f in pr.FRACTIONS] == [64, 28, 16]


def test_accuracy_and_paired_standard_errors_are_per_canvas():
    correct = np.array([[1, 1], [1, 0], [0, 0], [1, 1]], bool)
    assert pr.accuracy(correct) == {"accuracy": 0.625, "stderr": round(float(np.std([1, .5, 0, 1], ddof=1) / 2), 4)}
    base = np.array([[1, 0], [1, 0], [0, 0], [0, 1]], bool)
    assert pr.paired(correct, base)["difference"] == 0.25


@pytest.mark.parametrize("layout", pr.LAYOUTS)
def test_reader_layouts_decide_whether_image_tokens_read_each_other(layout):
    """cross: an image token's state depends on itself only, so dropping others leaves the kept ones as in
    training; self: every image token reads the others. The question reads the image tokens in both."""
    import torch

    rng = np.random.default_rng(0)
    basis = rng.standard_normal((12, 6)).astype(np.float32)
    reader = pr.make_reader(4, 5, 0, basis, np.zeros(12, np.float32), layout).eval()
    states = []
    reader.layers.register_forward_hook(lambda module, args, out: states.append(out.detach()))
    tokens = torch.from_numpy(rng.standard_normal((1, 5, 6)).astype(np.float32))
    changed = tokens.clone()
    changed[0, 4] = torch.from_numpy(rng.standard_normal(6).astype(np.float32))  # a different token 4
    positions, asked = torch.arange(5)[None], torch.tensor([[2]])
    with torch.no_grad():
        logits = [reader(t, positions, asked) for t in (tokens, changed)]
    others = (states[1][0, :4] - states[0][0, :4]).abs().max().item()  # image tokens 0-3
    assert (others == 0.0) if layout == "cross" else (others > 1e-3)
    assert (logits[1] - logits[0]).abs().max().item() > 1e-4  # the question still reads token 4


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Every method and budget on 4 test canvases (8 training canvases, a reader trained on them)."""
    return pr.collect(2, 0, 8, 4, tmp_path_factory.mktemp("reader"), threads=1, model=MODEL)


def test_the_reader_is_scored_on_what_the_deployed_pruned_graphs_output(tiny, tmp_path, monkeypatch):
    from edgeattn.graphs.pruning import prune_file
    from edgeattn.graphs.session import session_from_onnx

    graphs, data, guide = tiny["graphs"], tiny["data"], tiny["guide"]
    checks = tiny["check"].values()
    assert all(c["indices_equal"] == c["canvases"] and c["max_abs_token_difference"] <= 1e-5 for c in checks)
    pixels = pr.canvas_pixels(data["images"], data["test"], 2, graphs.geo)
    seen = []
    monkeypatch.setattr(pr, "predict", lambda _r, tokens, positions, asked: seen.append((tokens, positions, asked))
                        or np.zeros(asked.shape, np.int64))
    for method in ("fastervlm", "holov", "flashvlm", "zeroth-order", "random"):
        fraction = "1/4"
        spec = pr.spec_text(method, graphs.geo.budget(fraction), 0, graphs.final_norm(), None, pr.DEFAULT_LAYER)
        prune_file(graphs.vision, tmp_path / "deployed.onnx", spec)  # afresh: what `export --prune` writes
        session = session_from_onnx(tmp_path / "deployed.onnx")
        seen.clear()
        pr.answer_all(None, tiny["kept"][method, fraction], 2)
        questions = range(4) if method == "flashvlm" else [None]
        assert len(seen) == len(questions)
        for (tokens, positions, asked), q in zip(seen, questions):
            feeds = {"pixel_values": pixels}
            if q is not None:
                feeds["text_embeds"] = np.repeat(guide[q][None, None], len(pixels), 0)
            want_tokens, want_indices = session.run(["image_features", "kept_indices"], feeds)
            assert (positions == want_indices).all(), (method, q)
            np.testing.assert_allclose(tokens, want_tokens, rtol=1e-3, atol=1e-3)  # stored as float16: 2^-11 relative
            assert (asked == (np.arange(4)[None] if q is None else q)).all()
    assert tiny["dense"].shape == (4, graphs.geo.tokens, graphs.geo.width)


def test_the_run_reports_every_method_and_fraction(tiny, tmp_path):
    from benchmarks.common import write_json_at

    path = write_json_at(tmp_path / "out.json", {"machine": {}, **pr.summarise(tiny)})
    data = json.loads(path.read_text())
    assert 0.0 <= data["all_tokens"]["accuracy"] <= 1.0 and data["all_tokens"]["in_cell_share"] == 0.25
    for method in pr.METHODS:
        assert set(data[method]) == set(pr.FRACTIONS)
        for fraction, row in data[method].items():
            assert row["k"] == max(1, round(16 / pr.FRACTIONS[fraction]))
            assert 0.0 <= row["accuracy"] <= 1.0 and row["stderr"] >= 0.0
            assert ("vs_random" in row) == (method != "random")
            if method != "flashvlm":  # blind to the question: on average 1/4 of the kept tokens in the asked cell
                assert row["in_cell_share"] == pytest.approx(0.25)
            bins = row["by_tokens_in_cell"]  # every question in exactly one bin of kept tokens in its cell
            assert sum(b["questions"] for b in bins) == 4 * 4
    # the default layer, -2: the first of the tiny encoder's two
    assert data["config"]["attention_layer"]["fastervlm"] == 0 and data["config"]["attention_layer"]["random"] is None
    assert len(data["deployed_check"]) == len(pr.METHODS) * len(pr.FRACTIONS)
    assert data["config"]["budgets"] == {"1/4": 4, "1/9": 2, "1/16": 1}
    assert "| fastervlm |" in pr.markdown(data, {"date": "d", "cpu": "c", "cores": 2}, pr.METHODS)
