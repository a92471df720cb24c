"""calibration.png: the measured curves, the fit, the chosen point and the baseline (matplotlib, Agg)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgeattn.calibrate.methods import Result


def write_plot(path: Path, method: str, result: Result) -> str | None:
    """Write the plot; returns why it was not written (matplotlib missing), or None."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install matplotlib)"
    figure, axis = plt.subplots(figsize=(7, 4.5), dpi=110)
    if method == "blasst":
        _blasst(axis, result.plot)
    else:
        _block(axis, result.plot)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return None


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


def _block(axis: Any, plot: dict[str, Any]) -> None:
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
    axis.set_title("block: fidelity vs sparsity")


__all__ = ["write_plot"]
