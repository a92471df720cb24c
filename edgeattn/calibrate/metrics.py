"""Fidelity and sparsity of one configuration on a set of windows, against the dense model.

Perplexity is exp(mean NLL of token t+1 given the logits at t) over every position of every window;
the increase is relative to the dense run of the same windows. KL is the mean over those positions of
KL(dense || configuration) of the next-token distribution, in nats. Sparsity is the mean over sites of
each site's statistic (skip ratio, or 1 - density), averaged over the windows of each length.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np

from edgeattn.calibrate.data import Window
from edgeattn.calibrate.goals import Goal

Values = Callable[[int], Mapping[str, float]]  # window length -> value per site


def log_softmax(logits: np.ndarray) -> np.ndarray:
    top = logits.max(-1, keepdims=True)
    return logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))


@dataclass(frozen=True)
class Measurement:
    sparsity: float  # mean over lengths of the mean over sites
    by_length: Mapping[int, float]  # length -> mean sparsity over sites
    by_site: Mapping[str, float]  # site -> mean sparsity over windows
    ppl: float
    ppl_increase: float  # relative to dense
    kl: float  # nats per position
    by_length_site: Mapping[int, Mapping[str, float]] = field(default_factory=dict)

    def fidelity(self, goal: Goal) -> float:
        return self.ppl_increase if goal.name == "ppl" else self.kl

    def meets(self, goals: tuple[Goal, ...]) -> bool:
        return all(self.fidelity(g) <= g.value for g in goals if g.name != "sparsity")

    def to_json(self) -> dict[str, Any]:
        return {"sparsity": round(self.sparsity, 5), "sparsity_by_length": {str(k): round(v, 5) for k, v in self.by_length.items()},
                "sparsity_by_site": {k: round(v, 5) for k, v in self.by_site.items()}, "perplexity": round(self.ppl, 5),
                "perplexity_increase": round(self.ppl_increase, 6), "kl": None if math.isnan(self.kl) else round(self.kl, 7)}


@dataclass
class Evaluator:
    """Runs configurations on fixed windows; the dense run is the reference. `runs` counts session runs."""

    runner: Any  # graph.CalibrationRunner
    windows: list[Window]
    dense_value: float
    to_sparsity: Callable[[float], float]
    with_kl: bool = True
    runs: int = 0
    tick: Callable[[], None] = lambda: None
    _dense: list[tuple[np.ndarray, np.ndarray | None]] = field(default_factory=list)
    dense_ppl: float = 0.0

    def __post_init__(self) -> None:
        nll, count = 0.0, 0
        for window in self.windows:
            logits, _ = self._run(window, {label: self.dense_value for label in self.runner.labels})
            logp = log_softmax(logits[:-1])
            token_nll = -logp[np.arange(window.length - 1), window.ids[1:]].astype(np.float64)
            nll, count = nll + token_nll.sum(), count + len(token_nll)
            self._dense.append((token_nll, logp if self.with_kl else None))
        self.dense_ppl = math.exp(nll / count)

    def _run(self, window: Window, values: Mapping[str, float]) -> tuple[np.ndarray, dict[str, float]]:
        self.runs += 1
        out = self.runner.run(window, values)
        self.tick()
        return out

    def measure(self, values: Values, lengths: tuple[int, ...] | None = None, limit: int | None = None) -> Measurement:
        """`values` on every window (or those of `lengths`, or the first `limit`); the perplexity increase is
        against the dense run of the same windows."""
        nll, count, kl, dense_nll = 0.0, 0, 0.0, 0.0
        per_length: dict[int, list[float]] = {}
        per_site: dict[str, list[float]] = {}
        per_length_site: dict[int, dict[str, list[float]]] = {}
        for index, window in enumerate(self.windows[:limit]):
            if lengths is not None and window.length not in lengths:
                continue
            dense_nll += float(self._dense[index][0].sum())
            logits, stats = self._run(window, values(window.length))
            logp = log_softmax(logits[:-1])
            token_nll = -logp[np.arange(window.length - 1), window.ids[1:]].astype(np.float64)
            nll, count = nll + token_nll.sum(), count + len(token_nll)
            dense_logp = self._dense[index][1]
            if dense_logp is not None:
                kl += float((np.exp(dense_logp) * (dense_logp - logp)).sum(-1, dtype=np.float64).sum())
            sparsities = {site: self.to_sparsity(v) for site, v in stats.items()}
            per_length.setdefault(window.length, []).append(float(np.mean(list(sparsities.values()))))
            for site, value in sparsities.items():
                per_site.setdefault(site, []).append(value)
                per_length_site.setdefault(window.length, {}).setdefault(site, []).append(value)
        by_length = {length: float(np.mean(v)) for length, v in sorted(per_length.items())}
        ppl = math.exp(nll / count)
        return Measurement(float(np.mean(list(by_length.values()))), by_length,
                           {s: float(np.mean(v)) for s, v in per_site.items()}, ppl, ppl / math.exp(dense_nll / count) - 1.0,
                           kl / count if self.with_kl else float("nan"),
                           {length: {s: float(np.mean(v)) for s, v in sites.items()}
                            for length, sites in per_length_site.items()})


__all__ = ["Evaluator", "Measurement", "Values", "log_softmax"]
