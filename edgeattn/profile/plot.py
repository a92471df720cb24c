"""`--plot FILE.png`: the breakdown and the comparison of a profile record, drawn with matplotlib (Agg).

One row per configuration: op types per target (stacked, ms per run), attention sites per target
(stacked), and the measured rounds of the compared metric per target (box plot) with each target's
ratio to the first. The file is written atomically.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

TOP_PARTS = 7


def write_plot(record: dict[str, Any], path: str | Path) -> Path:
    """Draw `record` into the PNG `path` (a temporary file beside it, renamed into place)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    path = Path(path)
    configs = record["configs"]
    with_breakdown = any("breakdown" in r for c in configs for r in c["results"])
    columns = 3 if with_breakdown else 1
    figure, axes = plt.subplots(len(configs), columns, figsize=(5.5 * columns, 5.0 * len(configs)), squeeze=False)
    for row, config in zip(axes, configs):
        if with_breakdown:
            _stacked(row[0], config, "op_types", "op", f"{config['name']}: by op type")
            _stacked(row[1], config, "sites", "site", f"{config['name']}: by attention site")
        _rounds(row[-1], config)
    figure.tight_layout()
    staged = path.with_name(f".{path.stem}.{os.getpid()}.tmp.png")
    try:
        figure.savefig(staged, dpi=110, format="png")
        os.replace(staged, path)
    finally:
        plt.close(figure)
        staged.unlink(missing_ok=True)
    return path


def _stacked(ax: Any, config: dict[str, Any], field: str, key: str, title: str) -> None:
    """One horizontal bar per target, split into its largest parts (ms per profiled run)."""
    results = [r for r in config["results"] if "breakdown" in r]
    names: list[str] = []
    for result in results:
        for part in result["breakdown"][field][:TOP_PARTS]:
            if part[key] not in names:
                names.append(part[key])
    colors = _palette(len(names) + 1)
    for y, result in enumerate(results):
        part = result["breakdown"]
        values = {p[key]: p["ms"] for p in part[field]}
        left = 0.0
        for index, name in enumerate(names):
            width = values.get(name, 0.0)
            ax.barh(y, width, left=left, color=colors[index], label=name if y == 0 else None)
            left += width
        rest = "(outside attention sites)" if field == "sites" else "(other op types)"
        ax.barh(y, max(0.0, part["nodes_ms"] - left), left=left, color=colors[-1], label=rest if y == 0 else None)
    ax.set_yticks(range(len(results)), [r["target"] for r in results])
    ax.set_xlabel("ms per run (onnxruntime profiler)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=2, frameon=False)


def _rounds(ax: Any, config: dict[str, Any]) -> None:
    """The measured rounds of each target's compared metric, and its ratio to the first target."""
    results = config["results"]
    metric = results[0]["primary"]
    ratios = {c["target"]: c["ratio"] for c in config["comparison"]}
    for y, result in enumerate(results):
        values = result["rounds"].get(metric, [])
        ax.scatter(values, [y] * len(values), s=12, alpha=0.6, color="tab:blue")
        median = result["metrics"][metric]["median"]
        ax.plot([median, median], [y - 0.3, y + 0.3], color="black", linewidth=2)
        if result["target"] in ratios:
            ax.annotate(f"x{ratios[result['target']]:.2f}", (median, y + 0.3), xytext=(0, 3),
                        textcoords="offset points", fontsize=7, ha="center")
    ax.set_yticks(range(len(results)), [r["target"] for r in results])
    ax.set_ylim(-0.6, len(results) - 0.4)
    ax.set_xlabel(f"{metric} (ms) per round, median |, {len(results[0]['rounds'].get(metric, []))} rounds")
    ax.set_title(f"{config['name']}: {metric}, ratio to {results[0]['target']}", fontsize=9)


def _palette(count: int) -> list[Any]:
    import matplotlib

    cmap = matplotlib.colormaps["tab20"]
    return [cmap(i % 20) for i in range(count)]


__all__ = ["write_plot"]
