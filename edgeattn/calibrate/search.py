"""Choosing values: paths of configurations from dense to sparse, the goal rule, BLASST's fits and the
per-layer allocation.

A path is a list of configurations ordered from dense (index 0) to sparsest. The goal rule
(`choose`): with a sparsity goal, the first configuration whose measured sparsity reaches it (found by
bisection; sparsity grows along a path), which must then keep every fidelity bound; with bounds only,
the last configuration that keeps them all (bisection). Each probe is one measured run of the
calibration windows.

Block, per layer (`greedy_path`): each site's sensitivity is measured alone (that site at each
candidate, the others dense): its loss (perplexity increase, or KL with a kl goal) and its sparsity.
The path then takes, step by step, the site move with the most sparsity gained per loss added (the
sum of the single-site losses predicts the joint loss); the goal rule measures the joint configurations
along it. The uniform path (every site at the same candidate) is the baseline the report compares.

BLASST (`fit_exponential`, `length_law`): per length bucket and per site (or the mean over sites with
--per model), the measured skip ratio s at scale factors λ·L is fitted as scale_factor = a·exp(b·s)
(least squares of log scale_factor on s, over the points where 0 < s < the largest s measured). A
target s gives one scale factor per length; log scale_factor = log c + p·log L over the lengths is the
length law the written graph computes. A site whose skip ratio cannot reach the target is given its
largest, and the other sites share what is missing (water filling), so that the mean reaches it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np

from edgeattn.calibrate.goals import CalibrationError, Goal
from edgeattn.calibrate.metrics import Measurement

Config = Callable[[int], Mapping[str, float]]


@dataclass(frozen=True)
class Choice:
    index: int
    measured: Measurement


def choose(path: Sequence[Config], measure: Callable[[int], Measurement], goals: tuple[Goal, ...],
           what: str) -> Choice:
    """The goal rule of the module docstring; CalibrationError names the bound that stops a goal."""
    sparsity = next((g for g in goals if g.name == "sparsity"), None)
    bounds = tuple(g for g in goals if g.name != "sparsity")
    if sparsity is not None:
        last = measure(len(path) - 1)
        if last.sparsity < sparsity.value:
            raise CalibrationError(f"{sparsity.text} cannot be reached: the sparsest {what} measures "
                                   f"{last.sparsity:.3f} on the calibration data; nothing was written")
        low, high = 0, len(path) - 1  # measure(high) reaches the goal
        while high - low > 1:
            mid = (low + high) // 2
            if measure(mid).sparsity >= sparsity.value:
                high = mid
            else:
                low = mid
        chosen = measure(high)
        for goal in bounds:
            if chosen.fidelity(goal) > goal.value:
                raise CalibrationError(f"{sparsity.text} and {goal.text} cannot both hold: reaching sparsity "
                                       f"{chosen.sparsity:.3f} costs {fidelity_text(goal, chosen)}; "
                                       "nothing was written")
        return Choice(high, chosen)
    if measure(len(path) - 1).meets(bounds):
        return Choice(len(path) - 1, measure(len(path) - 1))
    low, high = 0, len(path) - 1  # low meets the bounds (dense), high does not
    while high - low > 1:
        mid = (low + high) // 2
        if measure(mid).meets(bounds):
            low = mid
        else:
            high = mid
    return Choice(low, measure(low))


def fidelity_text(goal: Goal, measured: Measurement) -> str:
    if goal.name == "ppl":
        return f"ppl +{measured.ppl_increase * 100:.2f}% (bound +{goal.value * 100:g}%)"
    return f"kl {measured.kl:.4f} (bound {goal.value:g})"


def constant(values: Mapping[str, float]) -> Config:
    frozen = dict(values)
    return lambda length: frozen


def greedy_path(sites: Sequence[str], candidates: Sequence[float], loss: Mapping[str, Sequence[float]],
                sparsity: Mapping[str, Sequence[float]]) -> list[dict[str, float]]:
    """Per-site values from all dense (candidates[0]) to all sparsest, one site move at a time, the move
    with the most sparsity per unit of predicted loss first (see the module docstring)."""
    position = {site: 0 for site in sites}
    path = [{site: candidates[0] for site in sites}]
    while True:
        best, best_ratio = None, -math.inf
        for site in sites:
            i = position[site]
            if i + 1 >= len(candidates):
                continue
            gain = sparsity[site][i + 1] - sparsity[site][i]
            cost = max(loss[site][i + 1] - loss[site][i], 1e-9)
            ratio = gain / cost
            if ratio > best_ratio:
                best, best_ratio = site, ratio
        if best is None:
            return path
        position[best] += 1
        path.append({site: candidates[position[site]] for site in sites})


@dataclass(frozen=True)
class Fit:
    a: float
    b: float
    largest: float  # the largest sparsity measured (at the largest λ swept)

    def scale_factor(self, sparsity: float) -> float:
        return self.a * math.exp(self.b * sparsity)

    def to_json(self) -> dict[str, float]:
        return {"a": self.a, "b": self.b, "largest_sparsity": self.largest}


def fit_exponential(scale_factors: Sequence[float], sparsities: Sequence[float]) -> Fit | None:
    """scale_factor = a·exp(b·s) by least squares of log scale_factor on s over 0 < s < max(s); None with
    fewer than two such points of distinct s."""
    largest = max(sparsities)
    points = [(s, math.log(f)) for f, s in zip(scale_factors, sparsities) if 0.0 < s < largest - 1e-6 and f > 0]
    if largest > 0:  # the first scale factor that reaches the largest value closes the range
        first = next(f for f, s in zip(scale_factors, sparsities) if s >= largest - 1e-6)
        points.append((largest, math.log(first)))
    if len({round(s, 6) for s, _ in points}) < 2:
        return None
    s, y = np.array([p[0] for p in points]), np.array([p[1] for p in points])
    b, log_a = np.polyfit(s, y, 1)
    return Fit(float(math.exp(log_a)), float(b), float(largest))


def water_fill(target: float, caps: Mapping[str, float]) -> dict[str, float]:
    """Per-site targets with mean `target`, none above its cap: sites below the level get their cap."""
    sites = sorted(caps, key=lambda site: caps[site])
    out: dict[str, float] = {}
    left, remaining = target * len(sites), len(sites)
    for site in sites:
        level = left / remaining
        out[site] = min(caps[site], level)
        left, remaining = left - out[site], remaining - 1
    return out


def length_law(lengths: Sequence[int], scale_factors: Sequence[float]) -> tuple[float, float]:
    """(c, p) with scale_factor = c·L^p through the points (least squares in log-log; p = 0 for one length)."""
    if len(set(lengths)) < 2:
        return float(np.exp(np.mean(np.log(scale_factors)))), 0.0
    p, log_c = np.polyfit(np.log(lengths), np.log(scale_factors), 1)
    return float(math.exp(log_c)), float(p)


__all__ = ["Choice", "Config", "Fit", "choose", "constant", "fit_exponential", "greedy_path", "length_law",
           "water_fill"]
