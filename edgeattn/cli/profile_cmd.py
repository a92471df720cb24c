"""`edgeattn profile TARGET [TARGET...]`: latency percentiles, A/B ratios, where the time goes, peak memory."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import click

from edgeattn.cli.common import emit_json, json_option


@click.command("profile", short_help="Measure latency percentiles and where the time goes; compare A/B.")
@click.argument("targets", nargs=-1, required=True, metavar="TARGET [TARGET...]")
@click.option("--lengths", metavar="L[,L...]",
              help="Generated prompt / sequence lengths, one measured configuration each (default 512).")
@click.option("--batch", type=int, default=1, show_default=True, help="Batch of an ONNX file or encoder/vision folder.")
@click.option("--past", type=int, default=0, show_default=True,
              help="KV-cache length fed to an ONNX file's past_key_values inputs (decode-step shapes).")
@click.option("--prompt", help="Real prompt text for folders (tokenized with the folder's tokenizer).")
@click.option("--image", type=click.Path(), help="Real image for VLM or vision folders.")
@click.option("--max-new-tokens", type=int, default=8, show_default=True,
              help="Tokens generated per request (decoder folders): TTFT and time per output token.")
@click.option("--warmup", type=int, default=2, show_default=True, help="Warm-up runs per target, excluded.")
@click.option("--runs", type=int, default=10, show_default=True, help="Measured rounds (each runs every target once).")
@click.option("--profile-runs", type=int, default=3, show_default=True,
              help="Runs under onnxruntime's profiler for the breakdown (0: no breakdown).")
@click.option("--threads", type=int,
              help="onnxruntime intra-op threads (default: EDGEATTN_THREADS, else onnxruntime's).")
@click.option("--provider", default="CPUExecutionProvider", show_default=True, help="onnxruntime execution provider.")
@click.option("--memory/--no-memory", default=True, show_default=True,
              help="Measure peak memory, in a child process per target.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the generated inputs.")
@click.option("--plot", "plot_path", type=click.Path(path_type=Path), metavar="FILE.png",
              help="Draw the breakdown and the comparison (matplotlib).")
@click.option("--out", "out_path", type=click.Path(path_type=Path), metavar="FILE.json",
              help="Also write the whole record as JSON.")
@json_option
def profile(targets: tuple[str, ...], lengths: str | None, batch: int, past: int, prompt: str | None,
            image: str | None, max_new_tokens: int, warmup: int, runs: int, profile_runs: int, threads: int | None,
            provider: str, memory: bool, seed: int, plot_path: Path | None, out_path: Path | None,
            as_json: bool) -> None:
    """Measure each TARGET (an exported folder or an .onnx file) with onnxruntime.

    Reports, per target and configuration, min / median / mean / p90 / p95 / p99 / std of the latency
    after the warm-up runs, and throughput; for decoder folders the whole request (TTFT, time per output
    token) and each component (vision, embed, decoder prefill, decoder step). Several TARGETs are
    measured interleaved (A B A B ...) and compared as the median of per-round ratios to the first.
    A separate pass under onnxruntime's own profiler breaks the time down by op type and by attention
    site (edgeattn ops named by their layer), with how much of the wall time the node times cover.
    Peak memory is measured in a child process per target.

    This is what trtexec and Polygraphy users expect (percentiles, per-layer times), for onnxruntime.
    TensorRT engines are not run here (they need a GPU with TensorRT): profile the ONNX file instead.

    \b
      edgeattn profile smollm2 --max-new-tokens 16
      edgeattn profile dense/decoder.onnx sparse/decoder.onnx --lengths 512,2048 --plot ab.png
    """
    from edgeattn.profile import ProfileOptions, parse_lengths
    from edgeattn.profile import profile as run_profile
    from edgeattn.profile.plot import write_plot
    from edgeattn.profile.report import render, write_json

    if plot_path is not None and plot_path.suffix.lower() != ".png":
        raise click.BadParameter(f"{plot_path} does not end in .png; the plot is a PNG file", param_hint="--plot")
    for given in (plot_path, out_path):
        if given is not None and not given.parent.is_dir():
            raise click.BadParameter(f"the folder of {given} does not exist", param_hint="--plot/--out")
    options = ProfileOptions(
        lengths=parse_lengths(lengths) if lengths is not None else None, batch=batch, past=past, prompt=prompt,
        image=image, max_new_tokens=max_new_tokens, warmup=warmup, runs=runs, profile_runs=profile_runs,
        threads=threads, provider=provider, memory=memory, seed=seed)
    record = run_profile(list(targets), options, progress=None if as_json else _bar)
    if plot_path is not None:
        record["plot"] = str(write_plot(record, plot_path))
    if out_path is not None:
        record["out"] = str(write_json(record, out_path))
    if as_json:
        emit_json(record)
    else:
        render(record)


@contextmanager
def _bar(description: str, total: int | None) -> Iterator[Callable[[], None]]:
    """A progress bar on stderr for one step (transient; a check mark stays when it is done)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    if not console.is_terminal:  # a log, not a screen: one line per finished step
        yield lambda: None
        console.print(f"done: {description}", highlight=False)
        return
    columns = [SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn()]
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda: bar.advance(task)
    console.print(f"[green]✓[/green] {description}")
