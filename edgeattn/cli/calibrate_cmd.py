"""`edgeattn calibrate DIR --method METHOD --target GOAL --out DIR2`: choose sparse-attention values (blasst,
block, window, on text) or a visual-token pruning budget (prune:NAME, on images) from data, or fit the positional
debias weights of a pruning method's attention score (debias[:NAME], on images, no --target)."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import click

from edgeattn.cli.common import emit_json, json_option


@click.command("calibrate")
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("--method", required=True, metavar="METHOD[:k=v,...]",
              help="blasst (scale factor), block (keep, or threshold with mode=threshold) or window (the "
                   "window size), with fixed parameters as in --sparse, e.g. block:block=64, window:sinks=4; or "
                   "prune:NAME[,param=value...] (the image-token budget k of a --prune method, e.g. "
                   "prune:fastervlm); or debias[:NAME][,param=...] "
                   "(the debias=FILE weights of NAME's attention score, default fastervlm).")
@click.option("--target", default="", metavar="GOAL[,GOAL...]",
              help="Goals, all must hold: sparsity=0.5 (reach), ppl=+2% (bound), kl=0.02 (bound); prune:NAME "
                   "takes kl=0.05 (bound: the smallest k within it), tokens=64 (k) or sparsity=0.75 (k = (1-s)N); "
                   "required, except for debias, which takes none.")
@click.option("--data", metavar="SOURCE",
              help="Calibration text: text:FILE (plain text or .jsonl with a text field) or builtin:text (the "
                   "default); images for prune:NAME and debias: images:DIR or builtin:images (the default).")
@click.option("--prompts", type=click.Path(path_type=Path),
              help="prune:NAME: a file with one prompt per line (default: two built-in prompts).")
@click.option("--eval", "eval_source", metavar="SOURCE", help="Evaluation data, measured with the chosen values.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="The calibrated folder to write.")
@click.option("--per", type=click.Choice(["layer", "model"]),
              help="One value per layer (allocated from measured sensitivities; the default) or one for the "
                   "model (prune:NAME: model, its one pruning site).")
@click.option("--samples", type=int, help="Windows per length; default 2 for blasst, 4 for block and window (a "
                                         "perplexity bound needs more text than a sparsity goal); prune: images, "
                                         "default 4; debias: images, default 64.")
@click.option("--max-tokens", type=int,
              help="Longest window (blasst also measures a half and a quarter of it); default 1024 for blasst, "
                   "512 for block and window, within the model's positions.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the window offsets.")
@click.option("--threads", type=int, help="onnxruntime intra-op threads.")
@click.option("--force", is_flag=True, help="Replace OUT if it is a folder edgeattn wrote.")
@json_option
def calibrate(folder: Path, method: str, target: str, data: str | None, prompts: Path | None, eval_source: str | None,
              out: Path, per: str | None, samples: int | None, max_tokens: int | None, seed: int, threads: int | None,
              force: bool, as_json: bool) -> None:
    """Measure FOLDER's decoder on calibration data, choose METHOD's values for the goals, and write
    OUT: the folder with those values in its decoder (prune:NAME: its vision graph pruned to the chosen
    k; debias: the folder with debias_weights.npy), calibration.json and calibration.png."""
    from edgeattn.calibrate.api import CalibrationOptions
    from edgeattn.calibrate.api import calibrate as run_calibration

    options = CalibrationOptions(method, target, data, eval_source, per, samples, max_tokens, seed, threads, force,
                                 None if prompts is None else str(prompts))
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
    if record["method"].startswith("prune:"):
        _print_prune(record, out)
        return
    if record["method"] == "debias":
        _print_debias(record, out)
        return
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


def _print_prune(record: dict[str, Any], out: Path) -> None:
    chosen, baseline = record["calibration"], record["baseline"]
    click.echo(f"{out}: {record['method']} calibrated for {record['target']} in {record['seconds']:.1f} s, "
               f"{record['runs']} runs on {record['data']['samples']} image-prompt samples")
    click.echo(f"  k = {chosen['k']} of {record['tokens']} image tokens (--prune {record['prune']})")
    click.echo(f"  calibration data: KL {chosen['kl']:.4g} nats vs dense; {baseline['what']}: "
               f"KL {baseline['calibration']['kl']:.4g}")
    probed = ", ".join(f"{m['k']}: {m['kl']:.3g}" for m in record["curve"])
    click.echo(f"  probed (k: KL): {probed}")
    if record["evaluation"]:
        evaluation = record["evaluation"]
        click.echo(f"  evaluation ({evaluation['source']}): KL {evaluation['chosen']['kl']:.4g}; baseline KL "
                   f"{evaluation['baseline']['kl']:.4g}")
    click.echo(f"  wrote calibration.json{'' if record['plot'] != 'calibration.png' else ' and calibration.png'}")


def _print_debias(record: dict[str, Any], out: Path) -> None:
    fit, trends = record["fit"], record["calibration"]
    click.echo(f"{out}: debias weights of {record['scores']} (layer {record['layer']}) fitted in "
               f"{record['seconds']:.1f} s on {len(record['data']['images'])} image(s)")
    click.echo(f"  fit f(p) = {fit['A']:.4g}*exp({fit['b']:.4g}*p) over {record['tokens']} positions, "
               f"R2 {fit['r2']:.3f}; weights {record['weights']['min']:.4g} .. {record['weights']['max']:.4g}")
    click.echo(f"  positional slope of log score: {trends['undebiased']['slope']:.4g} undebiased, "
               f"{trends['debiased']['slope']:.2g} debiased")
    if record["evaluation"]:
        evaluation = record["evaluation"]
        click.echo(f"  evaluation ({evaluation['source']}): fit R2 {evaluation['fit']['r2']:.3f}; slope "
                   f"{evaluation['undebiased']['slope']:.4g} undebiased, "
                   f"{evaluation['debiased']['slope']:.2g} debiased")
    click.echo(f"  wrote {record['weights']['file']}, calibration.json"
               f"{'' if record['plot'] != 'calibration.png' else ' and calibration.png'}; use: edgeattn rewrite "
               f"{out} OUT --prune {record['prune'].replace('debias=', f'debias={out}/')}")
