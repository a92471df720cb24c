"""`edgeattn demo`: the main job end to end on a built-in default model."""

from __future__ import annotations

import click

from edgeattn.cli.common import emit_json, json_option, progress


@click.command(short_help="Export, run and time a built-in default model end to end.")
@click.option("--model", default="demo:tiny-llava", show_default=True, help="MODEL to export (a VLM or decoder).")
@click.option("--out", default="demo-out", show_default=True, type=click.Path(file_okay=False))
@click.option("--prompt", default="Describe the image.", show_default=True)
@click.option("--max-new-tokens", default=8, show_default=True)
@json_option
def demo(model: str, out: str, prompt: str, max_new_tokens: int, as_json: bool) -> None:
    """Export MODEL (validated against PyTorch), generate from it in onnxruntime, and report latency."""
    from edgeattn.demo import run_demo

    report = run_demo(model, out, prompt, max_new_tokens, step=lambda text: progress(text, enabled=not as_json))
    if as_json:
        emit_json(report)
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{report['model']}: greedy, onnxruntime CPU, medians of {report['repeats']} runs")
    for column in ("variant", "prompt tokens", "time to first token (ms)", "per token (ms)", "TTFT speedup"):
        table.add_column(column)
    for row in report["variants"]:
        table.add_row(row["variant"], str(row["prompt_tokens"]), f"{row['ttft_ms']:.2f}", f"{row['tpot_ms']:.2f}",
                      f"{row['speedup']:.2f}x")
    Console().print(table)
    if model.startswith("demo:"):
        click.echo("(random weights: the generated text is meaningless; the timings are real)")
