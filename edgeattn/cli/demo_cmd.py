"""`edgeattn demo`: the main job end to end on a built-in default model."""

from __future__ import annotations

from typing import Any

import click

from edgeattn.cli.common import emit_json, json_option, progress
from edgeattn.demo import DEFAULT_MODEL, ROUNDS


@click.command(short_help="Export, prune, run and time a built-in default VLM end to end.")
@click.option("--model", default=DEFAULT_MODEL, show_default=True, help="MODEL to export (a VLM or decoder).")
@click.option("--out", default="demo-out", show_default=True, type=click.Path(file_okay=False))
@click.option("--prompt", default="Describe the image.", show_default=True)
@click.option("--image", type=click.Path(), help="Image to run on (default: a sample photograph).")
@click.option("--max-new-tokens", default=8, show_default=True, type=click.IntRange(1, 256))
@click.option("--rounds", default=ROUNDS, show_default=True, type=click.IntRange(1, 100),
              help="Timing rounds; each runs every variant once, in turn.")
@json_option
def demo(model: str, out: str, prompt: str, image: str | None, max_new_tokens: int, rounds: int,
         as_json: bool) -> None:
    """Export MODEL once (validated against PyTorch; an earlier export in OUT is reused), prune the
    exported vision graph to 1/9 of its visual tokens with `rewrite --prune fastervlm:K` (no second
    export), run both in onnxruntime on the same image and prompt, interleaved, and print the time to
    first token side by side with the measured and the FLOP-ideal speedup. Draws the kept tokens on
    the image (OUT/<model>/kept.png)."""
    from edgeattn.demo import run_demo

    report = run_demo(model, out, prompt, max_new_tokens, step=lambda text: progress(text, enabled=not as_json),
                      rounds=rounds, image=image)
    if as_json:
        emit_json(report)
        return
    for line in table_lines(report):
        click.echo(line)
    if model.startswith("demo:"):
        click.echo("(an untrained part makes the text meaningless; the timings are real)")


def _ms(value: float) -> str:
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}"


def table_lines(report: dict[str, Any]) -> list[str]:
    """The side-by-side table, at most 80 characters wide."""
    lines = [f"{report['model']}: onnxruntime CPU, medians of {report['rounds']} interleaved rounds"[:80],
             f"image: {report['image']}"[:80], ""]
    head = f"{'variant':<21}{'image':>6}{'TTFT':>8}{'per token':>10}{'speedup':>9}{'range':>13}{'FLOP-ideal':>12}"
    unit = f"{'':<21}{'tokens':>6}{'(ms)':>8}{'(ms)':>10}{'':>9}{'(rounds)':>13}{'':>12}"
    lines += [head, unit]
    for row in report["variants"]:
        spread = "-" if row is report["variants"][0] else f"{row['speedup_min']:.2f}-{row['speedup_max']:.2f}x"
        tokens = "-" if row["image_tokens"] is None else str(row["image_tokens"])
        lines.append(f"{row['variant'][:20]:<21}{tokens:>6}{_ms(row['ttft_ms']):>8}{row['tpot_ms']:>10.1f}"
                     f"{row['speedup']:>8.2f}x{spread:>13}{row['ideal_speedup']:>11.2f}x")
    if report.get("picture"):
        lines += ["", f"kept tokens drawn on the image: {report['picture']}"]
    first = report["variants"][0]
    lines += ["", f"{first['variant']} says: {first['text']!r}"[:80]]
    return lines
