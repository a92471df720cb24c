"""`prune:NAME` calibration: the image-token budget k of a visual-token pruning method, chosen on images.

    calibrate("llava", "llava-cal", CalibrationOptions("prune:fastervlm", "kl=0.05", data="builtin:images"))

One calibration graph: the folder's vision graph pruned by NAME with TokenSelect's k read from the graph
input `calibrate.k` (int64 scalar, the op's `tunable_for="k"` input), in one onnxruntime session; every
candidate k is a feed. For each image and prompt the VLM runs as `runtime.generate` runs it
(`image_features`, `prompt_embeddings`, a prefill step), once with the dense vision graph (all N image
tokens) and once per candidate with the pruned one; the fidelity of k is the mean over the (image,
prompt) samples of the mean over the prompt's text positions (after the image) of KL(dense ‖ pruned)
of the next-token distribution, in nats.

Goals (all must hold): `kl=X` is a bound: the smallest k whose KL <= X (`choose_budget` gives the rule);
`tokens=N` fixes k = N; `sparsity=s` fixes k = max(1, floor((1 - s) * N)). The written folder is what
`edgeattn rewrite DENSE OUT --prune NAME:K` writes with the chosen K (an attribute of TokenSelect), plus
the `calibration` manifest record, calibration.json and calibration.png; nothing is written when a goal
cannot be met or the data is bad.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from edgeattn.calibrate.goals import RECORD_FORMAT, CalibrationError, Goal, parse_goals
from edgeattn.calibrate.images import ImageSet, check_image_options, read_image_data, read_prompts
from edgeattn.errors import EdgeAttnError, PruningError
from edgeattn.manifest import Manifest

K_INPUT = "calibrate.k"
DEFAULT_IMAGES = 4  # images per calibration (--samples); each runs with every prompt
BASELINES = ("random", "uniform")  # the uniform reference at the chosen k: random, or uniform when NAME is random
SHARED_PARAMS = ("cls", "keep_cls", "output", "padding")  # NAME's parameters the baseline takes too


@dataclass(frozen=True)
class PruneMethod:
    name: str  # a pruning method of edgeattn.graphs.pruning.METHODS
    flag: str  # the method as written: prune:fastervlm,layer=-2
    params: Mapping[str, str] = field(default_factory=dict)  # its fixed parameters, as typed

    def spec(self, k: int, dynamic: bool = False) -> Any:
        from edgeattn.graphs.pruning.methods import make_spec

        return make_spec(self.name, k, {**self.params, "dynamic": int(dynamic)})

    def prune_flag(self, k: int) -> str:
        """The `--prune` flag of the written folder: NAME:K with the fixed parameters."""
        return ",".join([f"{self.name}:{k}", *(f"{key}={value}" for key, value in self.params.items())])


def is_prune_method(text: str) -> bool:
    return text.strip().lower().partition(":")[0].strip() == "prune"


def parse_prune_method(text: str) -> PruneMethod:
    """`prune:NAME[,param=value...]`: a pruning method and its fixed parameters; calibration chooses k."""
    from edgeattn.graphs.pruning.methods import make_spec
    from edgeattn.ranges import flag_items

    _, sep, rest = text.strip().partition(":")
    head, _, params_text = rest.partition(",")
    name = head.strip().lower()
    if not sep or not name:
        raise CalibrationError(f"--method {text!r}: write prune:NAME[,param=value...], e.g. prune:fastervlm")
    if ":" in name:
        raise CalibrationError(f"--method {text!r} fixes the budget; calibration chooses k: write "
                               f"prune:{name.partition(':')[0]}")
    try:
        params = dict(flag_items(params_text, "--method", text))
    except ValueError as err:
        raise CalibrationError(str(err)) from None
    if "dynamic" in params:
        raise CalibrationError(f"--method {text!r} sets dynamic; calibration writes k as an attribute: drop it")
    try:
        make_spec(name, 1, params)
    except PruningError as err:
        raise CalibrationError(f"--method {text!r}: {err}") from None
    return PruneMethod(name, text.strip(), params)


@dataclass(frozen=True)
class Sample:
    image: str  # the picture's name
    prompt: int  # index into the prompts
    pixels: np.ndarray  # [1, 3, S, S]
    ids: list[int]  # the prompt's token ids (no image placeholders)
    text_embeds: np.ndarray  # [1, T, D] the prompt's token embeddings (text-guided pruning reads them)


class PruneRunner:
    """The dense folder's sessions (`DecoderRunner`) and the pruned vision sessions: NAME's calibration
    graph (k from `calibrate.k`) and the baseline's, made on first use."""

    def __init__(self, folder: Path, manifest: Manifest, method: PruneMethod, threads: int | None = None) -> None:
        from edgeattn.runtime.generate import DecoderRunner

        self.folder, self.manifest, self.method, self.threads = folder, manifest, method, threads
        self.dense = DecoderRunner(folder, manifest, threads)
        self.sessions: dict[str, Any] = {}
        self.tokens = 0  # N, the candidate image tokens
        self.session(method.name, method.params)

    def session(self, name: str, params: Mapping[str, str] | None = None) -> Any:
        """The calibration vision session of pruning method `name` (built once)."""
        if name not in self.sessions:
            from edgeattn.graphs import save
            from edgeattn.graphs.session import session_from_onnx

            model, tokens = calibration_vision(self.folder / self.manifest.file_of("vision"),
                                               PruneMethod(name, f"prune:{name}", dict(params or {})))
            self.tokens = self.tokens or tokens
            with tempfile.TemporaryDirectory(prefix="edgeattn-calibrate-") as work:
                path = save(model, Path(work) / "vision_calibration.onnx")
                del model
                self.sessions[name] = session_from_onnx(path, threads=self.threads)
        return self.sessions[name]

    def features(self, sample: Sample, k: int | None, name: str | None = None) -> np.ndarray:
        """The image features the decoder gets: dense (k None), or pruned to k by `name` (default NAME)."""
        if k is None:
            return self.dense.image_features(sample.pixels)["image_features"]
        session = self.session(name or self.method.name)
        inputs = {i.name: i for i in session.get_inputs()}
        feeds: dict[str, np.ndarray] = {"pixel_values": sample.pixels, K_INPUT: np.asarray(k, np.int64)}
        if "text_embeds" in inputs:
            feeds["text_embeds"] = sample.text_embeds
        if "patch_valid" in inputs:  # images are resized to the square input: no padding patches
            feeds["patch_valid"] = np.ones((1, self.tokens), bool)
        return session.run(["image_features"], feeds)[0]

    def text_log_probs(self, sample: Sample, features: np.ndarray) -> np.ndarray:
        """log softmax of the logits at the prompt's text positions [T, V], float64: the prompt after the
        image's placeholders, as `edgeattn run` builds it."""
        rows = int(features.shape[1])
        ids = [self.manifest.image_token_id] * rows + sample.ids
        logits = self.dense.prefill(self.dense.prompt_embeddings(ids, features))[0, rows:].astype(np.float64)
        if not np.isfinite(logits).all():
            raise CalibrationError(f"the decoder's logits hold NaN or infinity on {sample.image} ({rows} image "
                                   "tokens); nothing was written")
        shifted = logits - logits.max(axis=-1, keepdims=True)
        return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def calibration_vision(path: Path, method: PruneMethod) -> tuple[Any, int]:
    """The vision graph pruned by `method` with k read from the int64 scalar input `calibrate.k` (no
    default); returns the model and N, the candidate tokens."""
    from edgeattn.graphs import load
    from edgeattn.graphs.pruning import prune
    from edgeattn.graphs.pruning.insert import BUDGET_INPUT

    try:
        model, report = prune(load(path), method.spec(1, dynamic=True), where=path.name)
    except EdgeAttnError as err:
        raise CalibrationError(f"cannot prune {path} with {method.name} for calibration: {err}") from None
    budget = next(v for v in model.graph.inputs if v.name == BUDGET_INPUT)
    model.graph.initializers.pop(BUDGET_INPUT, None)
    budget.const_value = None
    budget.name = K_INPUT
    return model, int(report.tokens)


class Fidelity:
    """KL(dense ‖ pruned) of samples at a budget k, each measurement made once; `tick` after every run."""

    def __init__(self, runner: PruneRunner, samples: list[Sample], tick: Callable[[], None]) -> None:
        self.runner, self.samples, self.tick = runner, samples, tick
        self.dense = []
        for sample in samples:
            self.dense.append(runner.text_log_probs(sample, runner.features(sample, None)))
            tick()
        self.done: dict[tuple[str, int], dict[str, Any]] = {}
        self.runs = len(samples)

    def measure(self, k: int, name: str | None = None) -> dict[str, Any]:
        """{"k", "kl" (the mean over samples of the mean over text positions), "kl_per_sample", "kl_max"}."""
        key = (name or self.runner.method.name, int(k))
        if key not in self.done:
            per_sample = []
            for sample, dense in zip(self.samples, self.dense):
                pruned = self.runner.text_log_probs(sample, self.runner.features(sample, int(k), key[0]))
                per_sample.append(float((np.exp(dense) * (dense - pruned)).sum(axis=-1).mean()))
                self.tick()
            self.runs += len(self.samples)
            self.done[key] = {"k": int(k), "kl": float(np.mean(per_sample)), "kl_max": float(np.max(per_sample)),
                              "kl_per_sample": [round(v, 8) for v in per_sample]}
        return self.done[key]

    def curve(self, name: str | None = None) -> list[dict[str, Any]]:
        name = name or self.runner.method.name
        return [m for (n, _), m in sorted(self.done.items(), key=lambda item: -item[0][1]) if n == name]


def budget_grid(tokens: int) -> list[int]:
    """N, ceil(N/2), ceil(N/4), ..., 1: the candidates measured first (descending)."""
    grid, k = [tokens], tokens
    while k > 1:
        k = math.ceil(k / 2)
        grid.append(k)
    return sorted(set(grid), reverse=True)


def fixed_budget(goals: tuple[Goal, ...], tokens: int) -> int | None:
    """The k a tokens= or sparsity= goal fixes (None without one)."""
    names = {g.name: g for g in goals}
    if "tokens" in names and "sparsity" in names:
        raise CalibrationError("tokens= and sparsity= both fix k; give one of them")
    if "tokens" in names:
        k = int(names["tokens"].value)
        if k > tokens:
            raise CalibrationError(f"{names['tokens'].text} exceeds the {tokens} image tokens of this vision "
                                   "graph; nothing was written")
        return k
    if "sparsity" in names:
        return max(1, math.floor((1.0 - names["sparsity"].value) * tokens + 1e-9))
    return None


def choose_budget(fidelity: Fidelity, goals: tuple[Goal, ...], tokens: int) -> tuple[int, dict[str, Any]]:
    """The rule: measure the grid N, N/2, ..., 1 (the curve). A tokens= or sparsity= goal fixes k, and a
    kl bound must hold there. A kl bound alone: the descending grid's last point before the first
    that exceeds the bound is `hi` (the first one that does, `lo`); bisection on the integers between
    them keeps hi within the bound and lo beyond it until hi - lo = 1; k = hi (1 when the whole grid
    holds the bound). Returns k and the record of the search."""
    bound = next((g for g in goals if g.name == "kl"), None)
    fixed = fixed_budget(goals, tokens)
    grid = budget_grid(tokens)
    record: dict[str, Any] = {"rule": "grid N/2^i, then bisection on integers (kl bound)", "grid": grid,
                              "fixed": fixed}
    if fixed is not None:
        measured = fidelity.measure(fixed)
        if bound is not None and measured["kl"] > bound.value:
            given = next(g for g in goals if g.name in ("tokens", "sparsity"))
            raise CalibrationError(f"{given.text} and {bound.text} cannot both hold: k = {fixed} of {tokens} "
                                   f"costs kl {measured['kl']:.4g} (bound {bound.value:g}); nothing was written")
    for k in grid:  # the curve
        fidelity.measure(k)
    if fixed is not None:
        return fixed, record
    assert bound is not None
    if fidelity.measure(tokens)["kl"] > bound.value:
        raise CalibrationError(f"{bound.text} cannot hold: even all {tokens} tokens measure kl "
                               f"{fidelity.measure(tokens)['kl']:.4g}; nothing was written")
    hi, lo = tokens, None
    for k in grid[1:]:
        if fidelity.measure(k)["kl"] > bound.value:
            lo = k
            break
        hi = k
    while lo is not None and hi - lo > 1:
        mid = (hi + lo) // 2
        if fidelity.measure(mid)["kl"] <= bound.value:
            hi = mid
        else:
            lo = mid
    record.update(below=lo, below_kl=None if lo is None else fidelity.measure(lo)["kl"])
    return hi, record


def calibrate_prune(folder: Path, out: Path, options: Any, progress: Any = None) -> dict[str, Any]:
    """`calibrate` for a `prune:NAME` method (options: `api.CalibrationOptions`); returns the record."""
    from edgeattn.exporter.files import check_output_folder
    from edgeattn.manifest import read_manifest

    started = time.perf_counter()
    folder, out = Path(folder), Path(out)
    method, goals = parse_prune_method(options.method), parse_goals(options.target, prune=True)
    _check_options(options)
    check_output_folder(out, options.force, [folder])
    manifest = read_manifest(folder)
    _check_folder(folder, manifest)
    images, eval_images = read_image_data(options, DEFAULT_IMAGES)
    prompts, prompts_sha = read_prompts(options.prompts)
    bar = progress or (lambda description: nullcontext(lambda: None))
    runner = PruneRunner(folder, manifest, method, options.threads)
    samples = _samples(runner, images, prompts)
    baseline_name = BASELINES[0] if method.name != BASELINES[0] else BASELINES[1]
    shared = {key: value for key, value in method.params.items() if key in SHARED_PARAMS}
    runner.session(baseline_name, {**shared, **({"seed": str(options.seed)} if baseline_name == "random" else {})})
    with bar(f"calibrating {method.flag} ({options.target}) on {len(samples)} image-prompt samples") as tick:
        fidelity = Fidelity(runner, samples, tick)
        k, search = choose_budget(fidelity, goals, runner.tokens)
        chosen = fidelity.measure(k)
        baseline = fidelity.measure(k, baseline_name)
    evaluation = None
    if eval_images is not None:
        eval_samples = _samples(runner, eval_images, prompts)
        with bar(f"evaluating k = {k} on {len(eval_samples)} samples of {options.eval}") as tick:
            judge = Fidelity(runner, eval_samples, tick)
            evaluation = {**eval_images.to_json(), "samples": len(eval_samples), "chosen": judge.measure(k),
                          "baseline": judge.measure(k, baseline_name)}
    record: dict[str, Any] = {
        "format": RECORD_FORMAT, "method": f"prune:{method.name}", "flag": method.flag, "tunable": "k",
        "op": "TokenSelect", "target": options.target, "goals": [{"name": g.name, "value": g.value} for g in goals],
        "per": "model", "seed": options.seed, "tokens": runner.tokens,
        "data": {**images.to_json(), "prompts": prompts, "prompts_sha256": prompts_sha, "samples": len(samples)},
        "fidelity": "mean over samples of the mean over the prompt's text positions of KL(dense || pruned), nats",
        "chosen": {"k": k}, "prune": method.prune_flag(k), "calibration": chosen,
        "curve": fidelity.curve(), "search": search,
        "baseline": {"what": f"{baseline_name} pruning at the same k = {k}", "method": baseline_name,
                     "calibration": baseline},
        "evaluation": evaluation, "runs": fidelity.runs,
    }
    _write(folder, out, method, k, record, options.force)
    record["seconds"] = round(time.perf_counter() - started, 2)
    return record


def _check_options(options: Any) -> None:
    if options.per not in (None, "model"):
        raise CalibrationError(f"--per {options.per}: prune:NAME has one pruning site; it calibrates per model")
    check_image_options(options, "prune:NAME")


def _check_folder(folder: Path, manifest: Manifest) -> None:
    comps = manifest.components
    if "vision" not in comps or manifest.vision is None or "decoder" not in comps:
        raise CalibrationError(f"{folder} is a {manifest.family} export without a vision component and a "
                               "decoder; prune:NAME calibrates a VLM's visual tokens")
    if manifest.pruning:
        raise CalibrationError(f"{folder} is already pruned ({manifest.pruning.get('method')}:"
                               f"{manifest.pruning.get('k')}); calibrate the unpruned export")
    if manifest.dtype != "fp32":
        raise CalibrationError(f"{folder} is a {manifest.dtype} export; calibrate reads fp32 exports")


def _samples(runner: PruneRunner, images: ImageSet, prompts: list[str]) -> list[Sample]:
    from edgeattn.runtime.images import pixel_values
    from edgeattn.runtime.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(runner.folder, runner.manifest)
    assert runner.manifest.vision is not None
    preprocess = runner.manifest.vision.preprocess()
    ids = [list(tokenizer(prompt, verbose=False)["input_ids"]) for prompt in prompts]
    if any(not i for i in ids):
        raise CalibrationError("a prompt gives no tokens; give prompts with some text")
    embeds = [runner.dense.prompt_embeddings(i, None) for i in ids]
    return [Sample(picture.name, index, pixel_values(picture.image, preprocess), ids[index], embeds[index])
            for picture in images.pictures for index in range(len(prompts))]


def _write(folder: Path, out: Path, method: PruneMethod, k: int, record: dict[str, Any], force: bool) -> None:
    from edgeattn.exporter.variant import VariantOptions, rewrite_folder

    def finish(stage: Path, manifest: dict[str, Any]) -> None:
        from edgeattn.calibrate.graph import CALIBRATION_TAG
        from edgeattn.calibrate.report import write_prune_plot
        from edgeattn.graphs import load, save

        file = stage / manifest["components"]["vision"]["file"]
        model = load(file)
        for node in model.graph:
            if node.op_type == "TokenSelect":
                node.metadata_props[CALIBRATION_TAG] = json.dumps(
                    {"k": k, "method": record["method"], "target": record["target"],
                     "kl": round(record["calibration"]["kl"], 8)})
        save(model, file)
        missing = write_prune_plot(stage / "calibration.png", record)
        record["plot"] = "calibration.png" if missing is None else f"not written: {missing}"
        (stage / "calibration.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        manifest["calibration"] = {"file": "calibration.json", "method": record["method"], "target": record["target"],
                                   "per": "model", "chosen": record["chosen"], "data_sha256": record["data"]["sha256"],
                                   "prompts_sha256": record["data"]["prompts_sha256"],
                                   "calibration": record["calibration"],
                                   "evaluation": (record["evaluation"] or {}).get("chosen")}

    try:
        rewrite_folder(folder, out, VariantOptions(prune=method.spec(k), prune_flag=method.prune_flag(k)), force,
                       finish=finish)
    except CalibrationError:
        raise
    except EdgeAttnError as err:
        raise CalibrationError(f"cannot write {out}: {err}") from None


__all__ = ["K_INPUT", "Fidelity", "PruneMethod", "PruneRunner", "budget_grid", "calibrate_prune",
           "calibration_vision", "choose_budget", "is_prune_method", "parse_prune_method"]
