"""`debias[:NAME][,param=value...]` calibration: the positional debias weights of an attention-score
pruning method, fitted on images.

    calibrate("llava", "llava-debias", CalibrationOptions("debias:fastervlm,layer=-2", data="builtin:images"))

One scoring graph: the folder's vision graph pruned by NAME with its fixed parameters, cut down to the
attention TokenScore node (the score `debias=FILE` multiplies: the [CLS] row for fastervlm, holov and
flashvlm, the attention received for mean-received), its output the only graph output, in one
onnxruntime session; every calibration image is one run. The mean score at each of the N candidate
positions is fitted by f(p) = A·exp(b·p) (least squares on log scores,
`graphs.pruning.debias.fit_recency`), and the weights are w[p] = f(0)/f(p) (`fit_recency_weights`).

No goal: the fit has nothing to choose, so `--target` is refused. The written folder is the input
folder (unchanged components) plus `debias_weights.npy` (N float32 weights, what
`--prune NAME:K,debias=FILE` loads), calibration.json, calibration.png and the manifest's
`calibration` record; nothing is written when the data or the scores are bad.
"""

from __future__ import annotations

import json
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from edgeattn.calibrate.goals import RECORD_FORMAT, CalibrationError
from edgeattn.calibrate.images import ImageSet, check_image_options, read_image_data
from edgeattn.errors import EdgeAttnError, PruningError
from edgeattn.manifest import Manifest

DEFAULT_METHOD = "fastervlm"
WEIGHTS_FILE = "debias_weights.npy"
DEFAULT_IMAGES = 64  # images per fit (--samples): one vision run each (builtin:images has 8)
OWN_PARAMS = ("debias", "dynamic")  # NAME's parameters calibration sets itself


@dataclass(frozen=True)
class DebiasMethod:
    name: str  # an attention-score pruning method of edgeattn.graphs.pruning.METHODS
    flag: str  # the method as written: debias:fastervlm,layer=-2
    params: Mapping[str, str] = field(default_factory=dict)  # NAME's fixed parameters, as typed

    def spec(self) -> Any:
        from edgeattn.graphs.pruning.methods import make_spec

        return make_spec(self.name, 1, self.params)

    def prune_flag(self, weights: str) -> str:
        """The `--prune` flag that uses the weights: NAME:K with the fixed parameters and debias=`weights`."""
        return ",".join([f"{self.name}:K", *(f"{key}={value}" for key, value in self.params.items()),
                         f"debias={weights}"])


def is_debias_method(text: str) -> bool:
    return text.strip().lower().partition(":")[0].partition(",")[0].strip() == "debias"


def parse_debias_method(text: str) -> DebiasMethod:
    """`debias[:NAME][,param=value...]`: the pruning method whose attention score is debiased (default
    fastervlm) and its fixed parameters."""
    from edgeattn.graphs.pruning.methods import METHODS, make_spec
    from edgeattn.ranges import flag_items

    rest = text.strip()[len("debias"):]
    head, _, params_text = rest.partition(",")
    if head and not head.startswith(":"):
        raise CalibrationError(f"--method {text!r}: write debias[:NAME][,param=value...], e.g. debias:fastervlm")
    name = head[1:].strip().lower() or DEFAULT_METHOD
    if ":" in name:
        raise CalibrationError(f"--method {text!r} gives a budget; the weights serve every k: write "
                               f"debias:{name.partition(':')[0]}")
    if name not in METHODS:
        raise CalibrationError(f"--method {text!r}: unknown pruning method {name!r}; choose one of: "
                               f"{', '.join(METHODS)}")
    if not METHODS[name].uses_attention:
        scored = ", ".join(m.name for m in METHODS.values() if m.uses_attention)
        raise CalibrationError(f"--method {text!r}: {name} has no attention score to debias; use one of: {scored}")
    try:
        params = dict(flag_items(params_text, "--method", text))
    except ValueError as err:
        raise CalibrationError(str(err)) from None
    for key in OWN_PARAMS:
        if key in params:
            raise CalibrationError(f"--method {text!r} sets {key}; debias calibration fits the weights of "
                                   f"{name}'s plain score: drop it")
    try:
        make_spec(name, 1, params)
    except PruningError as err:
        raise CalibrationError(f"--method {text!r}: {err}") from None
    return DebiasMethod(name, text.strip(), params)


def scoring_graph(path: Path, method: DebiasMethod) -> tuple[Any, int, int | None]:
    """The vision graph pruned by `method`, cut down to its attention TokenScore node: the only output is
    that node's scores [B, N]. Returns the model, N and the attention layer scored."""
    import onnx_ir.passes.common as common

    from edgeattn.graphs import load
    from edgeattn.graphs.pruning import prune

    try:
        model, report = prune(load(path), method.spec(), where=path.name)
    except EdgeAttnError as err:
        raise CalibrationError(f"cannot score {path} with {method.name}: {err}") from None
    node = next(n for n in model.graph if n.op_type == "TokenScore" and n.attributes["source"].as_string() != "text")
    model.graph.outputs.clear()
    model.graph.outputs.append(node.outputs[0])
    common.RemoveUnusedNodesPass()(model)
    for value in [v for v in model.graph.inputs if not v.uses()]:
        model.graph.inputs.remove(value)
    common.RemoveUnusedFunctionsPass()(model)
    return model, int(report.tokens), report.layer


class Scorer:
    """One onnxruntime session of the scoring graph; `scores(pixels)` is NAME's attention score [N]."""

    def __init__(self, folder: Path, manifest: Manifest, method: DebiasMethod, threads: int | None = None) -> None:
        from edgeattn.graphs import save
        from edgeattn.graphs.session import session_from_onnx

        model, self.tokens, self.layer = scoring_graph(folder / manifest.file_of("vision"), method)
        with tempfile.TemporaryDirectory(prefix="edgeattn-calibrate-") as work:
            path = save(model, Path(work) / "vision_scores.onnx")
            del model
            self.session = session_from_onnx(path, threads=threads)
        self.output = self.session.get_outputs()[0].name
        self.inputs = {i.name for i in self.session.get_inputs()}

    def scores(self, pixels: np.ndarray) -> np.ndarray:
        feeds: dict[str, np.ndarray] = {"pixel_values": pixels}
        if "patch_valid" in self.inputs:  # images are resized to the square input: no padding patches
            feeds["patch_valid"] = np.ones((1, self.tokens), bool)
        return np.asarray(self.session.run([self.output], feeds)[0], np.float64).reshape(-1)


def collect_scores(scorer: Scorer, images: ImageSet, preprocess: dict[str, Any], tick: Any) -> np.ndarray:
    """The scores of every image [images, N], checked: finite, and a positive mean at every position
    (the fit takes logs)."""
    from edgeattn.runtime.images import pixel_values

    rows = []
    for picture in images.pictures:
        row = scorer.scores(pixel_values(picture.image, preprocess))
        if not np.isfinite(row).all():
            raise CalibrationError(f"the scores of {picture.name} ({images.source}) hold NaN or infinity; "
                                   "nothing was written")
        rows.append(row)
        tick()
    scores = np.stack(rows)
    check_scores(scores, images.source)
    return scores


def check_scores(scores: np.ndarray, source: str) -> None:
    """Refuse scores the fit cannot take: non-finite values, or a mean of 0 or less at some position."""
    if not np.isfinite(scores).all():
        raise CalibrationError(f"the scores on {source} hold NaN or infinity; nothing was written")
    mean = scores.mean(axis=0)
    if (mean <= 0).any():
        raise CalibrationError(f"the mean score on {source} is 0 or less at {int((mean <= 0).sum())} positions "
                               f"(first: {int(np.argmax(mean <= 0))}); the exponential fit needs positive scores")


def trend(mean: np.ndarray) -> dict[str, float]:
    """The positional trend of mean scores: slope b' and R² of a least-squares line through log mean
    against position, and the RMS of its log residuals (a flat profile: slope and R² near 0)."""
    positions = np.arange(mean.size, dtype=np.float64)
    logs = np.log(np.maximum(mean, 1e-12))
    slope, intercept = np.polyfit(positions, logs, 1)
    return {"slope": float(slope), **_quality(logs, intercept + slope * positions)}


def fit_quality(mean: np.ndarray, a: float, b: float) -> dict[str, float]:
    """How well f(p) = A·exp(b·p) predicts mean scores: R² and RMS of the residuals, in log space."""
    positions = np.arange(mean.size, dtype=np.float64)
    return _quality(np.log(np.maximum(mean, 1e-12)), np.log(a) + b * positions)


def _quality(logs: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    residual = logs - predicted
    total = float(((logs - logs.mean()) ** 2).sum())
    r2 = 1.0 - float((residual**2).sum()) / total if total > 0 else 0.0
    return {"r2": r2, "rms_log_residual": float(np.sqrt((residual**2).mean()))}


def calibrate_debias(folder: Path, out: Path, options: Any, progress: Any = None) -> dict[str, Any]:
    """`calibrate` for a `debias[:NAME]` method (options: `api.CalibrationOptions`); returns the record."""
    from edgeattn.exporter.files import check_output_folder
    from edgeattn.graphs.pruning.debias import fit_recency, fit_recency_weights
    from edgeattn.manifest import read_manifest

    started = time.perf_counter()
    folder, out = Path(folder), Path(out)
    method = parse_debias_method(options.method)
    _check_options(options)
    check_output_folder(out, options.force, [folder])
    manifest = read_manifest(folder)
    _check_folder(folder, manifest)
    images, eval_images = read_image_data(options, DEFAULT_IMAGES)
    bar = progress or (lambda description: nullcontext(lambda: None))
    scorer = Scorer(folder, manifest, method, options.threads)
    assert manifest.vision is not None
    preprocess = manifest.vision.preprocess()
    with bar(f"scoring {_count(images)} with {method.name}") as tick:
        scores = collect_scores(scorer, images, preprocess, tick)
    a, b = fit_recency(scores)
    weights = fit_recency_weights(scores)
    if not np.isfinite(weights).all():
        raise CalibrationError(f"the fit (b = {b:.4g} over {scorer.tokens} positions) gives weights beyond float32; "
                               "nothing was written")
    mean = scores.mean(axis=0)
    evaluation = None
    if eval_images is not None:
        with bar(f"scoring {_count(eval_images)} of {options.eval} (evaluation)") as tick:
            held = collect_scores(scorer, eval_images, preprocess, tick).mean(axis=0)
        evaluation = {**eval_images.to_json(), "fit": fit_quality(held, a, b), "undebiased": trend(held),
                      "debiased": trend(held * weights), "mean_scores": [round(float(v), 8) for v in held]}
    record: dict[str, Any] = {
        "format": RECORD_FORMAT, "method": "debias", "flag": method.flag, "scores": method.name,
        "params": dict(method.params), "layer": scorer.layer, "tokens": scorer.tokens, "target": None,
        "per": "model", "data": images.to_json(),
        "fit": {"model": "f(p) = A*exp(b*p), least squares on log mean score", "A": a, "b": b,
                **fit_quality(mean, a, b)},
        "weights": {"file": WEIGHTS_FILE, "rule": "w[p] = f(0)/f(p)", "first": float(weights[0]),
                    "last": float(weights[-1]), "min": float(weights.min()), "max": float(weights.max())},
        "prune": method.prune_flag(WEIGHTS_FILE),
        "calibration": {"undebiased": trend(mean), "debiased": trend(mean * weights)},
        "mean_scores": [round(float(v), 8) for v in mean], "evaluation": evaluation,
        "runs": len(images.pictures) + (len(eval_images.pictures) if eval_images is not None else 0),
    }
    _write(folder, out, manifest, weights, record, options.force)
    record["seconds"] = round(time.perf_counter() - started, 2)
    return record


def _count(images: ImageSet) -> str:
    return f"{len(images.pictures)} image{'' if len(images.pictures) == 1 else 's'}"


def _check_options(options: Any) -> None:
    if options.target:
        raise CalibrationError(f"--target {options.target}: debias fits weights to the data and has no goal; "
                               "drop --target")
    if options.per not in (None, "model"):
        raise CalibrationError(f"--per {options.per}: debias fits one weight per position, for the model")
    if options.prompts is not None:
        raise CalibrationError("--prompts: debias scores images without a prompt; drop it")
    check_image_options(options, "debias")


def _check_folder(folder: Path, manifest: Manifest) -> None:
    if "vision" not in manifest.components or manifest.vision is None:
        raise CalibrationError(f"{folder} is a {manifest.family} export without a vision component; debias "
                               "fits the weights of a vision encoder's attention scores")
    if manifest.pruning:
        raise CalibrationError(f"{folder} is already pruned ({manifest.pruning.get('method')}:"
                               f"{manifest.pruning.get('k')}); calibrate the unpruned export")


def _write(folder: Path, out: Path, manifest: Manifest, weights: np.ndarray, record: dict[str, Any],
           force: bool) -> None:
    from edgeattn.calibrate.report import write_debias_plot
    from edgeattn.exporter.files import staged_folder
    from edgeattn.exporter.variant import share_folder
    from edgeattn.manifest import write_manifest

    with staged_folder(out, force, [folder]) as stage:
        share_folder(folder, stage)
        for name in (WEIGHTS_FILE, "calibration.json", "calibration.png"):  # never write through a hard link
            (stage / name).unlink(missing_ok=True)
        np.save(stage / WEIGHTS_FILE, weights.astype(np.float32))
        missing = write_debias_plot(stage / "calibration.png", record, weights)
        record["plot"] = "calibration.png" if missing is None else f"not written: {missing}"
        (stage / "calibration.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        document = manifest.to_json()
        document["calibration"] = {
            "file": "calibration.json", "method": "debias", "flag": record["flag"], "scores": record["scores"],
            "weights": WEIGHTS_FILE, "tokens": record["tokens"], "layer": record["layer"], "per": "model",
            "target": None, "prune": record["prune"], "data_sha256": record["data"]["sha256"],
            "fit": {key: record["fit"][key] for key in ("A", "b", "r2")},
            "evaluation": None if record["evaluation"] is None else record["evaluation"]["fit"]}
        write_manifest(stage, document)


__all__ = ["DEFAULT_METHOD", "WEIGHTS_FILE", "DebiasMethod", "Scorer", "calibrate_debias", "check_scores",
           "collect_scores", "fit_quality", "is_debias_method", "parse_debias_method", "scoring_graph", "trend"]
