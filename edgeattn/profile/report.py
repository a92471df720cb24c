"""The profile record as text: rich tables that fit 100 columns, and the record written as JSON.

Numbers are the record's own (nothing is recomputed here): latency statistics in ms, the comparison
with the first target, onnxruntime's breakdown and the peak memory.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

WIDTH = 100
STATS = ("min", "median", "mean", "p90", "p95", "p99", "std")
TOP_ROWS = 8


def render(record: dict[str, Any], console: Console | None = None) -> None:
    """Print the record: environment, then per configuration latency, comparison, breakdown, memory."""
    console = console or Console(width=WIDTH)
    env, options = record["environment"], record["options"]
    threads = env["threads"] or f"default ({env['cpu_count']} CPUs)"
    console.print(f"[bold]edgeattn profile[/bold]  onnxruntime {env['onnxruntime']}, {env['provider']}, threads "
                  f"{threads}, {env['processor']}")
    console.print(f"{env['date']}  warm-up {options['warmup']} (excluded), {options['runs']} rounds (targets "
                  f"interleaved), {options['profile_runs']} profiled")
    for config in record["configs"]:
        console.rule(f"[bold]{config['name']}")
        console.print(latency_table(config))
        for result in config["results"]:
            console.print(f"  {result['target']}: {throughput_text(result)}")
        if config["comparison"]:
            console.print(comparison_table(config))
        for result in config["results"]:
            if "breakdown" in result:
                render_breakdown(console, result)
        if any("memory" in r for r in config["results"]):
            console.print(memory_table(config))


def latency_table(config: dict[str, Any]) -> Table:
    table = Table(title=f"latency (ms), {config['name']}", title_justify="left")
    table.add_column("target", overflow="fold", max_width=24)
    table.add_column("metric", max_width=15)
    for stat in STATS:
        table.add_column(stat, justify="right")
    for result in config["results"]:
        for index, (metric, stats) in enumerate(result["metrics"].items()):
            table.add_row(result["target"] if index == 0 else "", metric, *(_ms(stats[s]) for s in STATS))
    return table


def throughput_text(result: dict[str, Any]) -> str:
    names = {"runs_per_s": "runs/s", "tokens_per_s": "tokens/s", "requests_per_s": "requests/s",
             "prefill_tokens_per_s": "prefill tokens/s", "decode_tokens_per_s": "decode tokens/s"}
    parts = [f"{value:,.1f} {names[key]}" for key, value in result["throughput"].items()]
    if "prompt_tokens" in result:
        counts = "/".join(str(count) for count in result["generated_tokens"])
        parts.append(f"{result['prompt_tokens']} prompt tokens, {counts} generated")
    return ", ".join(parts) or "no throughput"


def comparison_table(config: dict[str, Any]) -> Table:
    table = Table(title="comparison with the first target (median of per-round ratios)", title_justify="left")
    for name, justify in (("target", "left"), ("baseline", "left"), ("metric", "left"), ("ratio", "right"),
                          ("speedup", "right"), ("rounds", "right")):
        table.add_column(name, justify=justify, overflow="fold")  # type: ignore[arg-type]
    for item in config["comparison"]:
        for metric, values in item["metrics"].items():
            table.add_row(item["target"], item["baseline"], metric + (" *" if metric == item["metric"] else ""),
                          f"{values['ratio']:.3f}", f"{values['speedup']:.2f}x", str(len(item["round_ratios"])))
    return table


def render_breakdown(console: Console, result: dict[str, Any]) -> None:
    part = result["breakdown"]
    console.print(f"[bold]{result['target']}[/bold]: onnxruntime profiler, {part['profiled_runs']} run(s): node time "
                  f"{_ms(part['nodes_ms'])} ms of {_ms(part['wall_ms'])} ms wall per run (coverage "
                  f"{_pct(part['coverage'])}); profiled runs took {_ratio(part['profiler_overhead'])} the median")
    if part.get("note"):
        console.print(f"  [yellow]note:[/yellow] {part['note']}")
    console.print(share_table("op type", part["op_types"], "op", part["nodes_ms"]))
    sites = list(part["sites"]) + [{"site": "(outside attention sites)", "ms": part["outside_sites_ms"],
                                    "share": part["outside_sites_ms"] / part["nodes_ms"] if part["nodes_ms"] else 0}]
    console.print(share_table("attention site", sites, "site", part["nodes_ms"]))
    if len(part["components"]) > 1:
        table = Table(title="components (per request)", title_justify="left")
        for name in ("component", "calls", "wall ms", "node ms", "coverage"):
            table.add_column(name, justify="left" if name == "component" else "right")
        for comp in part["components"]:
            table.add_row(comp["component"], f"{comp['calls_per_run']:g}", _ms(comp["wall_ms"]), _ms(comp["nodes_ms"]),
                          _pct(comp["coverage"]))
        console.print(table)


def share_table(title: str, rows: list[dict[str, Any]], key: str, total: float) -> Table:
    table = Table(title=f"by {title}", title_justify="left")
    table.add_column(title, overflow="fold")
    table.add_column("ms / run", justify="right")
    table.add_column("share", justify="right")
    shown = rows[:TOP_ROWS]
    for row in shown:
        table.add_row(str(row[key]), _ms(row["ms"]), _pct(row["share"]))
    rest = sum(row["ms"] for row in rows[TOP_ROWS:])
    if rest > 0:
        table.add_row(f"({len(rows) - TOP_ROWS} more)", _ms(rest), _pct(rest / total if total else 0))
    return table


def memory_table(config: dict[str, Any]) -> Table:
    table = Table(title="peak memory (child process per target, MiB)", title_justify="left")
    for name in ("target", "peak", "growth", "baseline"):
        table.add_column(name, justify="left" if name == "target" else "right", overflow="fold")
    for result in config["results"]:
        memory = result.get("memory")
        if memory is None:
            continue
        if "error" in memory:
            table.add_row(result["target"], "-", "-", memory["error"][:60])
            continue
        table.add_row(result["target"], f"{memory['peak_mib']:.1f}", f"{memory['growth_mib']:.1f}",
                      f"{memory['baseline_mib']:.1f}")
    return table


def write_json(record: dict[str, Any], path: str | Path) -> Path:
    """Write the record to `path` atomically (a temporary file beside it, renamed into place)."""
    path = Path(path)
    staged = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        staged.write_text(json.dumps(record, indent=2, default=str) + "\n", encoding="utf-8")
        os.replace(staged, path)
    finally:
        staged.unlink(missing_ok=True)
    return path


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}" if abs(value) >= 0.1 else f"{value:.3f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


__all__ = ["render", "write_json"]
