"""The calibrations of decoder attention: BLASST's scale factor, and a value from a descending list of
candidates (`calibrate_candidates`): block-sparse keep (or threshold), or the sliding window's size.

Each returns a `Result`: the chosen value per site (and BLASST's length laws), the configuration
as a function of the window length (what `Evaluator.measure` runs), the uniform (or fixed-factor)
baseline, and what the report and the plot show. See `search` for the rules.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from edgeattn.calibrate.goals import CalibrationError, Goal, Method
from edgeattn.calibrate.metrics import Evaluator, Measurement
from edgeattn.calibrate.search import (Config, Fit, fidelity_text, choose, constant, fit_exponential, greedy_path,
                                       length_law, water_fill)
from edgeattn.ops.registry import default_registry

# λ = scale_factor / L. A tile is skipped when exp(tile max - running max) < λ for all its rows, so
# λ > 1 also skips tiles whose maxima exceed the running max by up to log λ: the sweep goes past 1.
LAMBDAS = (1e-2, 5e-2, 0.15, 0.3, 0.6, 1.0, 2.0, 4.0, 8.0)
KEEPS = (1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125)
THRESHOLDS = (0.0, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1)
# window: L·2^(-i/2) (rounded) for the longest calibration length L, from L (every key) down to one block.
WINDOW_STEP = 0.5
# Per-layer sensitivities cost one run of the windows per layer and value: measured on every other
# value (the uniform path uses them all).
LAYER_STEP = 2
TARGET_STEP = 0.01  # BLASST: the target sparsities of the path


@dataclass
class Result:
    values: dict[str, float]  # per site, at the longest calibration length
    laws: dict[str, tuple[float, float]] | None  # BLASST: (c, p) per site
    config: Config
    measured: Measurement
    baseline: Config | None
    baseline_measured: Measurement | None
    baseline_text: str
    record: dict[str, Any] = field(default_factory=dict)
    plot: dict[str, Any] = field(default_factory=dict)


class Probe:
    """Measurements of a path's configurations (on the windows of `lengths`, default all), each run once."""

    def __init__(self, evaluator: Evaluator, path: Sequence[Config], lengths: tuple[int, ...] | None = None) -> None:
        self.evaluator, self.path, self.lengths = evaluator, path, lengths
        self.done: dict[int, Measurement] = {}

    def __call__(self, index: int) -> Measurement:
        if index not in self.done:
            self.done[index] = self.evaluator.measure(self.path[index], self.lengths)
        return self.done[index]


def candidates_of(method: Method, lengths: Sequence[int]) -> tuple[float, ...]:
    """The values a candidate calibration tries, dense first: KEEPS, THRESHOLDS, or the windows of
    `window_candidates`."""
    if method.tunable == "window":
        default = default_registry().get(method.entry["op"]).attribute("block_size").default
        return window_candidates(max(lengths), int(method.entry.get("block_size", default)))
    return THRESHOLDS if method.tunable == "threshold" else KEEPS


def window_candidates(length: int, block: int) -> tuple[int, ...]:
    """L·2^(-i/2), rounded, from L (the window holds every key of an L-token window) down to one block."""
    if block >= length:
        raise CalibrationError(f"block {block} is not shorter than the calibration windows ({length} tokens): "
                               "no smaller window to try; use a smaller block or a larger --max-tokens")
    steps = math.ceil(math.log2(length / block) / WINDOW_STEP)
    return tuple(sorted({max(block, round(length * 2 ** (-WINDOW_STEP * i))) for i in range(steps + 1)},
                        reverse=True))


def calibrate_candidates(evaluator: Evaluator, method: Method, sites: list[str], goals: tuple[Goal, ...],
                         per: str, candidates: Sequence[float]) -> Result:
    """Choose one of `candidates` (dense first, sparser along) per layer or for the model (see `search`)."""
    uniform = [constant({site: value for site in sites}) for value in candidates]
    uniform_probe = Probe(evaluator, uniform)
    for index in range(len(uniform)):  # the whole uniform curve: the report's baseline and plot
        uniform_probe(index)
    sparsity = next((g for g in goals if g.name == "sparsity"), None)
    sparsest = uniform_probe(len(uniform) - 1)
    if sparsity is not None and sparsest.sparsity < sparsity.value:  # no allocation is sparser than all-sparsest
        raise CalibrationError(f"{sparsity.text} cannot be reached: {method.tunable} = {candidates[-1]:g} at every "
                               f"layer measures {sparsest.sparsity:.3f} on the calibration data; nothing was written")
    try:
        base = choose(uniform, uniform_probe, goals, "uniform " + method.tunable)
        baseline, baseline_measured = uniform[base.index], base.measured
        baseline_text = f"uniform {method.tunable} = {candidates[base.index]:g}"
    except CalibrationError:
        baseline, baseline_measured, baseline_text = None, None, "no uniform value meets the goals"
    record: dict[str, Any] = {"candidates": list(candidates),
                              "uniform": [uniform_probe(i).to_json() for i in range(len(uniform))]}
    if per == "model":
        chosen = choose(uniform, uniform_probe, goals, f"{method.tunable} on the calibration data")
        values = {site: candidates[chosen.index] for site in sites}
        probed = {i: uniform_probe(i) for i in uniform_probe.done}
    else:
        loss_goal = next((g for g in goals if g.name == "kl"), Goal("ppl", 0.0))
        candidates_all, candidates = candidates, (*candidates[:-1:LAYER_STEP], candidates[-1])
        loss = {site: [0.0] for site in sites}
        gained = {site: [0.0] for site in sites}
        for site in sites:
            for value in candidates[1:]:
                single = {other: candidates[0] for other in sites}
                single[site] = value
                measured = evaluator.measure(constant(single), limit=1)  # one window: an ordering, not a check
                loss[site].append(measured.fidelity(loss_goal))
                gained[site].append(measured.by_site[site])
        steps = greedy_path(sites, candidates, loss, gained)
        path = [constant(step) for step in steps]
        probe = Probe(evaluator, path)
        chosen = choose(path, probe, goals, f"per-layer {method.tunable} allocation")
        values = steps[chosen.index]
        probed = dict(probe.done)
        if (baseline is not None and baseline_measured is not None and not any(g.name == "sparsity" for g in goals)
                and baseline_measured.sparsity > chosen.measured.sparsity):  # the coarser per-layer values lost
            values, chosen = {site: candidates_all[base.index] for site in sites}, base
            record["allocation"] = "uniform: the per-layer path found no sparser configuration within the bounds"
        record["sensitivity"] = {site: {"values": list(candidates), "loss": loss[site], "sparsity": gained[site],
                                        "loss_is": loss_goal.name} for site in sites}
    record["path_probed"] = {str(i): m.to_json() for i, m in sorted(probed.items())}
    plot = {"uniform": [(uniform_probe(i).sparsity, uniform_probe(i)) for i in range(len(uniform))],
            "probed": [m for _, m in sorted(probed.items())], "chosen": chosen.measured,
            "baseline": baseline_measured, "goals": goals}
    return Result(values, None, constant(values), chosen.measured, baseline, baseline_measured, baseline_text,
                  record, plot)


def calibrate_blasst(evaluator: Evaluator, method: Method, sites: list[str], goals: tuple[Goal, ...],
                     per: str, lengths: Sequence[int]) -> Result:
    sweep = [evaluator.measure(lambda length, lam=lam: {site: lam * length for site in sites}) for lam in LAMBDAS]
    groups = {site: [site] for site in sites} if per == "layer" else {"model": list(sites)}
    fits: dict[int, dict[str, Fit | None]] = {}
    for length in lengths:
        fits[length] = {}
        for group, members in groups.items():
            s = [float(np.mean([m.by_length_site[length][site] for site in members])) for m in sweep]
            fits[length][group] = fit_exponential([lam * length for lam in LAMBDAS], s)
    caps = {length: sweep[-1].by_length[length] for length in lengths}  # the largest λ swept

    def factors(length: int, target: float) -> dict[str, float]:
        group_caps = {g: (f.largest if f is not None else 0.0) for g, f in fits[length].items()}
        shares = water_fill(target, group_caps) if per == "layer" else {"model": min(target, group_caps["model"])}
        chosen = {}
        for group, fit in fits[length].items():
            factor = fit.scale_factor(shares[group]) if fit is not None else length * LAMBDAS[-1]
            chosen[group] = min(max(factor, 1e-6), length * LAMBDAS[-1])
        return {site: chosen[site if per == "layer" else "model"] for site in sites}

    sparsity = next((g for g in goals if g.name == "sparsity"), None)
    bounds = tuple(g for g in goals if g.name != "sparsity")
    record: dict[str, Any] = {"lambdas": list(LAMBDAS), "lengths": list(lengths), "sweep": [m.to_json() for m in sweep],
                              "fits": {str(length): {g: (f.to_json() if f is not None else None) for g, f in fit.items()}
                                       for length, fit in fits.items()},
                              "largest_skip_ratio": {str(length): cap for length, cap in caps.items()}}
    if sparsity is not None:
        laws = _laws_for_target(evaluator, sites, lengths, caps, factors, sparsity, record)
    else:
        laws = _laws_for_bounds(evaluator, sites, lengths, factors, bounds, caps, record)
    config = _law_config(laws)
    measured = evaluator.measure(config)
    for goal in bounds:
        if measured.fidelity(goal) > goal.value:
            raise CalibrationError(f"{sparsity.text if sparsity else 'the sparsity'} and {goal.text} cannot both hold: "
                                   f"the calibrated law costs {fidelity_text(goal, measured)}; nothing was written")
    middle = sorted(lengths)[len(lengths) // 2]
    fixed = {site: c * middle ** p for site, (c, p) in laws.items()}  # uncalibrated for length: one factor
    baseline = constant(fixed)
    baseline_measured = evaluator.measure(baseline)
    values = {site: c * max(lengths) ** p for site, (c, p) in laws.items()}
    plot = {"sweep": sweep, "lambdas": LAMBDAS, "lengths": list(lengths), "fits": fits, "laws": laws,
            "fixed": fixed, "chosen": measured, "baseline": baseline_measured, "goals": goals}
    return Result(values, dict(laws), config, measured, baseline, baseline_measured,
                  f"fixed scale_factor (the {middle}-token value at every length)", record, plot)


def _law_config(laws: Mapping[str, tuple[float, float]]) -> Config:
    return lambda length: {site: c * length ** p for site, (c, p) in laws.items()}


def _laws_for_target(evaluator: Evaluator, sites: list[str], lengths: Sequence[int], caps: Mapping[int, float],
                     factors: Any, goal: Goal, record: dict[str, Any]) -> dict[str, tuple[float, float]]:
    """Per length, the first fitted target whose measured mean skip ratio reaches the goal (bisection on
    that length's windows); the law goes through the lengths where BLASST can reach it."""
    reachable = [length for length in lengths if caps[length] >= goal.value]
    record["unreachable"] = {str(length): caps[length] for length in lengths if length not in reachable}
    if not reachable:
        shown = ", ".join(f"{caps[length]:.3f} at L = {length}" for length in lengths)
        raise CalibrationError(f"{goal.text} cannot be reached: the largest mean skip ratio (λ = {LAMBDAS[-1]:g}) is {shown}; "
                               "calibrate on longer windows (--max-tokens) or smaller tiles; nothing was written")
    chosen: dict[int, dict[str, float]] = {}
    record["per_length"] = {}
    for length in reachable:
        targets = np.arange(TARGET_STEP, caps[length] + 1e-9, TARGET_STEP)
        steps = [{site: 0.0 for site in sites}] + [factors(length, float(t)) for t in targets]
        steps.append({site: length * LAMBDAS[-1] for site in sites})  # the largest λ: reaches the cap measured
        path = [constant(step) for step in steps]
        probe = Probe(evaluator, path, (length,))
        choice = choose(path, probe, (goal,), f"scale factor at L = {length}")
        chosen[length] = steps[choice.index]
        record["per_length"][str(length)] = {"measured": choice.measured.by_length[length],
                                             "probed": {str(i): m.by_length[length] for i, m in probe.done.items()}}
    return {site: length_law(reachable, [chosen[length][site] for length in reachable]) for site in sites}


def _laws_for_bounds(evaluator: Evaluator, sites: list[str], lengths: Sequence[int], factors: Any,
                     bounds: tuple[Goal, ...], caps: Mapping[int, float],
                     record: dict[str, Any]) -> dict[str, tuple[float, float]]:
    """The largest fitted target (the same at every length, capped where BLASST cannot reach it) whose
    law keeps every bound on all the windows."""
    targets = np.arange(TARGET_STEP, max(caps.values()) + 1e-9, TARGET_STEP)
    path_laws = [{site: (0.0, 0.0) for site in sites}]
    for target in targets:
        per_length = [factors(length, float(target)) for length in lengths]
        path_laws.append({site: length_law(lengths, [f[site] for f in per_length]) for site in sites})
    probe = Probe(evaluator, [_law_config(laws) for laws in path_laws])
    choice = choose(probe.path, probe, bounds, "scale factor")
    record["target_sparsity"] = float(targets[choice.index - 1]) if choice.index > 0 else 0.0
    record["path_probed"] = {str(i): m.to_json() for i, m in sorted(probe.done.items())}
    return path_laws[choice.index]


__all__ = ["KEEPS", "LAMBDAS", "THRESHOLDS", "Result", "calibrate_blasst", "calibrate_candidates", "candidates_of",
           "window_candidates"]
