"""`edgeattn calibrate --method debias[:NAME]` on demo:tiny-llava: the written weights are
`fit_recency_weights` of [CLS] scores read here from the pruned vision graph's TokenScore node with
plain onnxruntime, `rewrite --prune fastervlm:K,debias=FILE` takes them and keeps other tokens than the
undebiased graph, and bad requests are refused in one line with nothing written.

The demo model has random weights: its positional trend is weak (weights within a few percent of 1),
enough to move the top-k choice among near-equal scores."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from test_calibrate_prune import _decoder_only, _invoke, pictures  # noqa: F401  (pictures: a fixture)

from edgeattn.calibrate.api import CalibrationOptions, calibrate
from edgeattn.calibrate.debias import check_scores, is_debias_method, parse_debias_method, scoring_graph
from edgeattn.calibrate.goals import CalibrationError
from edgeattn.graphs.pruning.debias import fit_recency_weights

SAMPLES = 4  # builtin:images: china.jpg in its four views


@pytest.fixture(scope="module")
def llava(exported):
    return exported("demo:tiny-llava")


def _pixels(folder, count):
    from edgeattn.calibrate.images import builtin_images
    from edgeattn.manifest import read_manifest
    from edgeattn.runtime.images import pixel_values

    preprocess = read_manifest(folder).vision.preprocess()
    return [pixel_values(picture.image, preprocess) for picture in builtin_images()[:count]]


def _token_scores(vision, spec, pixels, work):
    """TokenScore's output of `vision` pruned by `spec`, exposed as an extra graph output with onnx and
    run with onnxruntime: [images, N]."""
    import onnx
    import onnxruntime as ort

    from edgeattn.graphs import load, save
    from edgeattn.graphs.pruning import prune

    model, _ = prune(load(vision), spec)
    save(model, work / "scored.onnx")
    proto = onnx.load(str(work / "scored.onnx"))
    name = next(n.output[0] for n in proto.graph.node if n.op_type == "TokenScore")
    proto.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(proto.SerializeToString())
    return np.stack([session.run([name], {"pixel_values": p})[0].reshape(-1) for p in pixels]).astype(np.float64)


def _kept(vision, pixels):
    import onnxruntime as ort

    session = ort.InferenceSession(str(vision))
    return [session.run(["kept_indices"], {"pixel_values": p})[0] for p in pixels]


def test_weights_are_the_fit_of_the_scores_and_rewrite_uses_them(llava, pictures, tmp_path, capsys):  # noqa: F811
    from edgeattn.graphs import load, save
    from edgeattn.graphs.pruning import prune
    from edgeattn.manifest import read_manifest

    out = tmp_path / "debiased"
    code, stdout, err = _invoke(["calibrate", str(llava), "--method", "debias", "--data", "builtin:images",
                                 "--samples", str(SAMPLES), "--eval", f"images:{pictures}", "--out", str(out),
                                 "--json"], capsys)
    assert code == 0, err
    record = json.loads(stdout)
    assert record["method"] == "debias" and record["scores"] == "fastervlm" and record["tokens"] == 64
    assert record["prune"] == "fastervlm:K,debias=debias_weights.npy" and record["target"] is None
    assert [i["name"] for i in record["data"]["images"]][:2] == ["china.jpg/whole", "china.jpg/mirrored"]

    # The weights: fit_recency_weights of scores read here from the fastervlm graph's TokenScore node.
    pixels = _pixels(llava, SAMPLES)
    scores = _token_scores(llava / "vision.onnx", "fastervlm:1", pixels, tmp_path)
    written = np.load(out / "debias_weights.npy")
    assert written.dtype == np.float32 and written.shape == (64,)
    np.testing.assert_allclose(written, fit_recency_weights(scores), atol=1e-6, rtol=0)
    np.testing.assert_allclose(record["mean_scores"], scores.mean(0), atol=1e-7)
    slope, intercept = np.polyfit(np.arange(64), np.log(scores.mean(0)), 1)
    assert record["fit"]["b"] == pytest.approx(slope, rel=1e-4) and record["fit"]["A"] == pytest.approx(
        np.exp(intercept), rel=1e-4)
    assert written.max() > 1.001 or written.min() < 0.999  # a non-trivial fit
    assert abs(record["calibration"]["debiased"]["slope"]) < 1e-8 < abs(record["calibration"]["undebiased"]["slope"])
    evaluation = record["evaluation"]
    assert evaluation["source"] == f"images:{pictures}" and len(evaluation["images"]) == 2
    assert {"r2", "rms_log_residual"} <= set(evaluation["fit"]) and "slope" in evaluation["debiased"]

    # The folder: the input's files, the weights, the record and the manifest's calibration record.
    assert {p.name for p in llava.iterdir()} <= {p.name for p in out.iterdir()}
    manifest = read_manifest(out)
    assert manifest.calibration["weights"] == "debias_weights.npy" and manifest.calibration["method"] == "debias"
    assert manifest.calibration["fit"]["b"] == record["fit"]["b"] and manifest.pruning is None
    assert json.loads((out / "calibration.json").read_text())["weights"]["file"] == "debias_weights.npy"
    if record["plot"] == "calibration.png":
        assert (out / "calibration.png").stat().st_size > 1000

    # rewrite takes the weights; the debiased graph keeps other tokens than the undebiased one.
    code, _, err = _invoke(["rewrite", str(out), str(tmp_path / "pruned"), "--prune",
                            f"fastervlm:16,debias={out / 'debias_weights.npy'}"], capsys)
    assert code == 0, err
    model, _ = prune(load(llava / "vision.onnx"), "fastervlm:16")
    save(model, tmp_path / "plain.onnx")
    debiased, plain = _kept(tmp_path / "pruned" / "vision.onnx", pixels), _kept(tmp_path / "plain.onnx", pixels)
    assert any(not np.array_equal(a, b) for a, b in zip(debiased, plain))


def test_python_api_with_a_method_and_its_params(llava, pictures, tmp_path):  # noqa: F811
    record = calibrate(llava, tmp_path / "mr", CalibrationOptions("debias:mean-received,layer=0",
                                                                 data=f"images:{pictures}"))
    assert record["scores"] == "mean-received" and record["layer"] == 0 and record["params"] == {"layer": "0"}
    assert record["prune"] == "mean-received:K,layer=0,debias=debias_weights.npy"
    assert len(record["data"]["images"]) == 2 and record["evaluation"] is None
    assert np.load(tmp_path / "mr" / "debias_weights.npy").shape == (64,)


def test_a_vision_only_folder(llava, tmp_path):
    """A vision export (family vision: the VLM's vision graph alone) calibrates too."""
    folder = tmp_path / "vision-only"
    folder.mkdir()
    shutil.copy2(llava / "vision.onnx", folder / "vision.onnx")
    document = json.loads((llava / "manifest.json").read_text())
    document.update(family="vision", components={"vision": document["components"]["vision"]})
    for key in ("decoder", "tokenizer", "image_token_id", "image_token_count"):
        document.pop(key)
    (folder / "manifest.json").write_text(json.dumps(document))
    record = calibrate(folder, tmp_path / "out", CalibrationOptions("debias", samples=2))
    names = {p.name for p in (tmp_path / "out").iterdir()}
    assert record["tokens"] == 64
    assert {"calibration.json", "debias_weights.npy", "manifest.json", "vision.onnx"} <= names


def test_flashvlm_debiases_its_cls_score_without_a_prompt(llava, tmp_path):
    """flashvlm's debias weights multiply its [CLS] attention score: the scoring graph keeps that node
    only (no text_embeds input), and it scores as fastervlm's does."""
    import onnxruntime as ort

    from edgeattn.graphs import save

    pixels = _pixels(llava, 1)
    runs = {}
    for name in ("flashvlm", "fastervlm"):
        model, tokens, layer = scoring_graph(llava / "vision.onnx", parse_debias_method(f"debias:{name}"))
        assert [v.name for v in model.graph.inputs] == ["pixel_values"] and tokens == 64
        save(model, tmp_path / f"{name}.onnx")
        runs[name] = ort.InferenceSession(str(tmp_path / f"{name}.onnx")).run(None, {"pixel_values": pixels[0]})[0]
    np.testing.assert_allclose(runs["flashvlm"], runs["fastervlm"], atol=1e-7)


def _poisoned(llava, tmp_path):
    """A copy of the folder whose vision patch embedding weights are NaN: every score is NaN."""
    import onnx

    folder = tmp_path / "poisoned"
    shutil.copytree(llava, folder)
    model = onnx.load(str(folder / "vision.onnx"))
    weight = next(t for t in model.graph.initializer if len(t.dims) == 4)  # the patch convolution
    values = onnx.numpy_helper.to_array(weight).copy()
    values[:] = np.nan
    weight.CopyFrom(onnx.numpy_helper.from_array(values, weight.name))
    onnx.save(model, str(folder / "vision.onnx"))
    return folder


@pytest.mark.parametrize("case, method, extra, message", [
    ("decoder-only", "debias", [], "without a vision component"),
    ("unknown name", "debias:nosuch", [], "unknown pruning method 'nosuch'"),
    ("no attention score", "debias:random", [], "random has no attention score to debias"),
    ("zeroth-order", "debias:zeroth-order", [], "zeroth-order has no attention score to debias"),
    ("text data", "debias", ["--data", "builtin:text"], "debias calibrates on images"),
    ("empty folder", "debias", ["--data", "images:EMPTY"], "holds no image file"),
    ("a target", "debias", ["--target", "kl=0.01"], "has no goal; drop --target"),
    ("own parameter", "debias:fastervlm,debias=w.npy", [], "sets debias"),
    ("a budget", "debias:fastervlm:16", [], "the weights serve every k"),
    ("nan scores", "debias", [], "hold NaN or infinity"),
    ("prune without target", "prune:fastervlm", [], "needs --target"),
])
def test_bad_requests_are_one_line_and_write_nothing(llava, tmp_path, capsys, case, method, extra, message):
    folder = {"decoder-only": _decoder_only, "nan scores": _poisoned}.get(case, lambda f, _: f)(llava, tmp_path)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no pictures here")
    extra = [item.replace("EMPTY", str(tmp_path / "empty")) for item in extra]
    out = tmp_path / "never"
    code, _, err = _invoke(["calibrate", str(folder), "--method", method, "--out", str(out), "--samples", "2",
                            *extra], capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert message in err and not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith((".never", "never"))]


def test_method_parsing_and_score_checks():
    assert is_debias_method("debias") and is_debias_method("debias,layer=-2") and not is_debias_method("prune:holov")
    default = parse_debias_method("debias,layer=-2")
    assert default.name == "fastervlm" and dict(default.params) == {"layer": "-2"}
    assert default.prune_flag("w.npy") == "fastervlm:K,layer=-2,debias=w.npy"
    assert parse_debias_method("debias:holov,regions=4").prune_flag("w.npy") == "holov:K,regions=4,debias=w.npy"
    with pytest.raises(CalibrationError, match="write debias"):
        parse_debias_method("debiasx")
    with pytest.raises(CalibrationError, match="takes no parameter 'nosuch'"):
        parse_debias_method("debias:fastervlm,nosuch=1")
    check_scores(np.full((2, 4), 0.25), "x")
    with pytest.raises(CalibrationError, match="NaN or infinity"):
        check_scores(np.array([[0.1, np.nan], [0.1, 0.2]]), "images:x")
    with pytest.raises(CalibrationError, match="0 or less at 1 positions"):
        check_scores(np.array([[0.1, 0.0], [0.1, 0.0]]), "images:x")
