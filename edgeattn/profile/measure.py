"""Timing: interleaved rounds over the targets, statistics of the runs, ratios between targets.

Targets are measured in rounds, A B A B ...: every round runs each target once, in the order given, so
a slow spell of the machine (another process, a frequency change) hits every target of that round. The
comparison of B with the baseline A is the median over rounds of the per-round ratio B/A: one noisy
round moves a median of ratios much less than it moves a ratio of medians.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np

PERCENTILES = (90, 95, 99)


def summarize(values: Sequence[float]) -> dict[str, float]:
    """min / median / mean / p90 / p95 / p99 / max / std (sample, ddof=1; 0 for one value) of `values`
    (percentiles by linear interpolation between the closest ranks, numpy's default)."""
    data = np.asarray(values, dtype=np.float64)
    if data.size == 0:
        raise ValueError("no values to summarize")
    stats = {"n": int(data.size), "min": float(data.min()), "median": float(np.median(data)),
             "mean": float(data.mean())}
    for q in PERCENTILES:
        stats[f"p{q}"] = float(np.percentile(data, q))
    stats["max"] = float(data.max())
    stats["std"] = float(data.std(ddof=1)) if data.size > 1 else 0.0
    return stats


def interleaved(runners: Sequence[Callable[[], dict[str, float]]], warmup: int, runs: int,
                tick: Callable[[], None] | None = None) -> list[list[dict[str, float]]]:
    """Run `warmup` rounds (discarded) and then `runs` rounds, each calling every runner once in order;
    returns, per runner, the metrics of each measured round."""
    for _ in range(warmup):
        for run in runners:
            run()
            if tick:
                tick()
    rounds: list[list[dict[str, float]]] = [[] for _ in runners]
    for _ in range(runs):
        for index, run in enumerate(runners):
            rounds[index].append(run())
            if tick:
                tick()
    return rounds


def metric_series(rounds: Sequence[dict[str, float]], metric: str) -> list[float] | None:
    """The values of `metric` in every round, or None when some round lacks it (a decoder that stopped
    at its end token after one token has no time per output token)."""
    values = [r.get(metric) for r in rounds]
    return None if any(v is None for v in values) else [float(v) for v in values]  # type: ignore[arg-type]


def compare(baseline: Sequence[float], other: Sequence[float]) -> dict[str, Any]:
    """`other` against `baseline`, round by round: ratio = median of other/baseline (above 1: slower),
    speedup = median of baseline/other (above 1: faster), with the per-round ratios."""
    if len(baseline) != len(other) or not baseline:
        raise ValueError("compare needs the same number of rounds, at least one")
    ratios = [o / b if b > 0 else math.inf for b, o in zip(baseline, other)]
    speedups = [b / o if o > 0 else math.inf for b, o in zip(baseline, other)]
    return {"ratio": float(np.median(ratios)), "speedup": float(np.median(speedups)),
            "round_ratios": [float(r) for r in ratios]}


__all__ = ["PERCENTILES", "compare", "interleaved", "metric_series", "summarize"]
