"""calibration.png: the measured curves, the fit, the chosen point and the baseline (matplotlib, Agg);
for debias, the mean score by position, its fit and the weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from edgeattn.calibrate.methods import Result


def _figure(path: Path, draw: Callable[[Any], bool]) -> str | None:
    """Draw one 7 x 4.5 in axis with `draw` (which returns whether to add the standard legend), grid it and
    save it; returns why it was not written (matplotlib missing), or None."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install matplotlib)"
    figure, axis = plt.subplots(figsize=(7, 4.5), dpi=110)
    if draw(axis):
        axis.legend(fontsize=7)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return None


def write_plot(path: Path, method: str, result: Result) -> str | None:
    """Write the plot; returns why it was not written (matplotlib missing), or None."""

    def draw(axis: Any) -> bool:
        if method == "blasst":
            _blasst(axis, result.plot)
        else:
            _candidates(axis, result.plot, method)
        return True

    return _figure(path, draw)


def _blasst(axis: Any, plot: dict[str, Any]) -> None:
    import numpy as np

    for length in plot["lengths"]:
        factors = [lam * length for lam in plot["lambdas"]]
        skip = [m.by_length[length] for m in plot["sweep"]]
        line = axis.plot(factors, skip, "o", ms=3, label=f"measured, L = {length}")[0]
        fit = plot["fits"][length].get("model")
        if fit is not None:
            s = np.linspace(0.0, fit.largest, 50)
            axis.plot([fit.scale_factor(v) for v in s], s, "-", color=line.get_color(), lw=1,
                      label=f"fit a·exp(b·s), L = {length}")
        chosen = np.mean([c * length ** p for c, p in plot["laws"].values()])
        axis.plot([chosen], [plot["chosen"].by_length[length]], "*", ms=11, color=line.get_color())
        fixed = float(np.mean(list(plot["fixed"].values())))
        axis.plot([fixed], [plot["baseline"].by_length[length]], "x", ms=8, color=line.get_color())
    axis.set_xscale("log")
    axis.set_xlabel("scale_factor (★ calibrated law, × fixed factor baseline)")
    axis.set_ylabel("mean skip ratio")
    axis.set_title("BLASST: skip ratio vs scale factor per length")


def _candidates(axis: Any, plot: dict[str, Any], method: str) -> None:
    ppl = not any(g.name == "kl" for g in plot["goals"])
    key = (lambda m: m.ppl_increase * 100) if ppl else (lambda m: m.kl)
    uniform = [m for _, m in plot["uniform"]]
    axis.plot([m.sparsity for m in uniform], [key(m) for m in uniform], "o-", ms=4, label="uniform")
    probed = sorted(plot["probed"], key=lambda m: m.sparsity)
    axis.plot([m.sparsity for m in probed], [key(m) for m in probed], "s--", ms=4, label="allocation path (probed)")
    axis.plot([plot["chosen"].sparsity], [key(plot["chosen"])], "*", ms=14, label="chosen")
    if plot["baseline"] is not None:
        axis.plot([plot["baseline"].sparsity], [key(plot["baseline"])], "x", ms=10, label="best uniform")
    for goal in plot["goals"]:
        if goal.name == "sparsity":
            axis.axvline(goal.value, ls=":", color="grey")
        elif (goal.name == "ppl") == ppl:
            axis.axhline(goal.value * 100 if ppl else goal.value, ls=":", color="grey")
    axis.set_xlabel("sparsity (1 - density)")
    axis.set_ylabel("perplexity increase (%)" if ppl else "mean KL (nats)")
    axis.set_title(f"{method}: fidelity vs sparsity")


def write_prune_plot(path: Path, record: dict[str, Any]) -> str | None:
    """prune:NAME: mean KL against k (the probed candidates), the chosen k (★), the baseline at that k
    (×) and the kl bound; returns why it was not written (matplotlib missing), or None."""

    def draw(axis: Any) -> bool:
        curve = sorted(record["curve"], key=lambda m: m["k"])
        axis.plot([m["k"] for m in curve], [m["kl"] for m in curve], "o-", ms=4,
                  label=f"{record['method']} (probed)")
        chosen, baseline = record["calibration"], record["baseline"]["calibration"]
        axis.plot([chosen["k"]], [chosen["kl"]], "*", ms=14, label=f"chosen k = {chosen['k']}")
        axis.plot([baseline["k"]], [baseline["kl"]], "x", ms=10, label=record["baseline"]["what"])
        for goal in record["goals"]:
            if goal["name"] == "kl":
                axis.axhline(goal["value"], ls=":", color="grey", label=f"kl bound {goal['value']:g}")
        axis.set_xscale("log", base=2)
        axis.set_xlabel(f"k, image tokens kept (of {record['tokens']})")
        axis.set_ylabel("mean KL(dense || pruned), nats")
        axis.set_title(f"{record['method']}: fidelity vs image-token budget")
        return True

    return _figure(path, draw)


def write_debias_plot(path: Path, record: dict[str, Any], weights: Any) -> str | None:
    """debias: the mean score at each position (log scale), the fit A·exp(b·p) and, on a second axis, the
    weights f(0)/f(p); returns why it was not written (matplotlib missing), or None."""
    import numpy as np

    def draw(axis: Any) -> bool:
        positions = np.arange(record["tokens"])
        fit = record["fit"]
        axis.plot(positions, record["mean_scores"], ".", ms=3, label="mean score (calibration images)")
        axis.plot(positions, fit["A"] * np.exp(fit["b"] * positions), "-", lw=1.5,
                  label=f"fit {fit['A']:.3g}·exp({fit['b']:.3g}·p), R² {fit['r2']:.2f}")
        axis.set_yscale("log")
        axis.set_xlabel(f"candidate position p (of {record['tokens']})")
        axis.set_ylabel(f"{record['scores']} score")
        other = axis.twinx()
        other.plot(positions, weights, "-", lw=1, color="tab:red", label="weight f(0)/f(p)")
        other.set_ylabel("debias weight")
        lines, more = axis.get_legend_handles_labels(), other.get_legend_handles_labels()
        axis.legend(lines[0] + more[0], lines[1] + more[1], fontsize=7)  # both axes' lines in one legend
        axis.set_title(f"debias: {record['scores']} score by position (layer {record['layer']})")
        return False

    return _figure(path, draw)


__all__ = ["write_debias_plot", "write_plot", "write_prune_plot"]
