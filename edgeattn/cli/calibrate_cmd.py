"""`edgeattn calibrate DIR --method METHOD --target GOAL --out DIR2`: choose sparse-attention values from data."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import click

from edgeattn.cli.common import emit_json, json_option


@click.command("calibrate")
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("--method", required=True, metavar="METHOD[:k=v,...]",
              help="blasst (scale factor) or block (keep, or threshold with mode=threshold), with fixed "
                   "parameters as in --sparse, e.g. block:block=64.")
@click.option("--target", required=True, metavar="GOAL[,GOAL...]",
              help="Goals, all must hold: sparsity=0.5 (reach), ppl=+2% (bound), kl=0.02 (bound).")
@click.option("--data", default="builtin:text", show_default=True, metavar="SOURCE",
              help="Calibration text: text:FILE (plain text or .jsonl with a text field) or builtin:text.")
@click.option("--eval", "eval_source", metavar="SOURCE", help="Evaluation text, measured with the chosen values.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="The calibrated folder to write.")
@click.option("--per", type=click.Choice(["layer", "model"]), default="layer", show_default=True,
              help="One value per layer (allocated from measured sensitivities) or one for the model.")
@click.option("--samples", type=int, help="Windows per length; default 2 for blasst, 4 for block (a perplexity "
                                         "bound needs more text than a sparsity goal).")
@click.option("--max-tokens", type=int,
              help="Longest window (blasst also measures a half and a quarter of it); default 1024 for blasst, "
                   "512 for block, within the model's positions.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the window offsets.")
@click.option("--threads", type=int, help="onnxruntime intra-op threads.")
@click.option("--force", is_flag=True, help="Replace OUT if it is a folder edgeattn wrote.")
@json_option
def calibrate(folder: Path, method: str, target: str, data: str, eval_source: str | None, out: Path, per: str,
              samples: int | None, max_tokens: int | None, seed: int, threads: int | None, force: bool, as_json: bool) -> None:
    """Measure FOLDER's decoder on calibration data, choose METHOD's values for the goals, and write
    OUT: the folder with those values in its decoder, calibration.json and calibration.png."""
    from edgeattn.calibrate.api import CalibrationOptions
    from edgeattn.calibrate.api import calibrate as run_calibration

    options = CalibrationOptions(method, target, data, eval_source, per, samples, max_tokens, seed, threads, force)
    record = run_calibration(folder, out, options, progress=None if as_json else _bar)
    if as_json:
        emit_json({**record, "out": str(out)})
        return
    _print(record, out)


@contextmanager
def _bar(description: str) -> Iterator[Callable[[], None]]:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("runs"), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(description, total=None)
        yield lambda: bar.advance(task)
    Console(stderr=True).print(f"[green]✓[/green] {description}")


def _print(record: dict[str, Any], out: Path) -> None:
    measured = record["calibration"]
    click.echo(f"{out}: {record['method']} calibrated for {record['target']} (per {record['per']}) in "
               f"{record['seconds']:.1f} s, {record['runs']} runs")
    values = ", ".join(f"{site}: {value:g}" for site, value in record["chosen"].items())
    click.echo(f"  {record['tunable']}: {values}")
    if record["length_law"]:
        click.echo(f"  {record['tunable']} follows the key length: c·Lkv^p per layer (calibration.json)")
    click.echo(f"  calibration data: sparsity {measured['sparsity']:.3f}, perplexity "
               f"{measured['perplexity']:.3f} ({measured['perplexity_increase'] * 100:+.2f}% vs dense)"
               + (f", KL {measured['kl']:.4f}" if measured["kl"] is not None else ""))
    baseline = record["baseline"]
    if baseline["calibration"] is not None:
        click.echo(f"  baseline ({baseline['what']}): sparsity {baseline['calibration']['sparsity']:.3f}, "
                   f"{baseline['calibration']['perplexity_increase'] * 100:+.2f}% perplexity")
    if record["evaluation"]:
        chosen = record["evaluation"]["chosen"]
        click.echo(f"  evaluation ({record['evaluation']['source']}): sparsity {chosen['sparsity']:.3f}, "
                   f"{chosen['perplexity_increase'] * 100:+.2f}% perplexity")
    click.echo(f"  wrote calibration.json{'' if record['plot'] != 'calibration.png' else ' and calibration.png'}")
