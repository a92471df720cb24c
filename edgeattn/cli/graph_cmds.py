"""`edgeattn inspect`, `edgeattn rewrite`, `edgeattn ops`: parse, call edgeattn.graphs, print."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from edgeattn.cli.common import emit_json, json_option, progress
from edgeattn.errors import GraphError

_component_option = click.option(
    "--component", default=None, help="Component the model is (decoder, encoder, vision ...); default: the file stem."
)


@click.command()
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@_component_option
@json_option
def inspect(model: Path, component: str | None, as_json: bool) -> None:
    """List the attention sites, edgeattn ops and unmatched Softmax nodes of MODEL."""
    from edgeattn.graphs import find_sites, load

    report = find_sites(load(model), component or model.stem)
    if as_json:
        emit_json({"model": str(model), **report.to_json()})
        return
    _print_inspect(model, report)


@click.command()
@click.argument("source", metavar="IN", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("destination", metavar="OUT", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--recipe", type=click.Path(dir_okay=False, path_type=Path), help="TOML recipe: which op each site gets.")
@click.option("--target", type=click.Choice(["ort", "trt"]), default="ort", show_default=True,
              help="ort: function bodies for onnxruntime; trt: TensorRT plugin nodes (bodies as fallback).")
@click.option("--external-data/--no-external-data", default=None,
              help="Write weights to OUT.data; default: as the input did, or when too large for one file.")
@_component_option
@json_option
def rewrite(source: Path, destination: Path, recipe: Path | None, target: str, external_data: bool | None,
            component: str | None, as_json: bool) -> None:
    """Rewrite the attention sites of IN into edgeattn ops and write OUT."""
    import dataclasses

    from edgeattn.graphs import load, rewrite as rewrite_model, save
    from edgeattn.graphs.lower import edgeattn_nodes

    with progress(f"rewriting {source.name}", enabled=not as_json):
        model = load(source)
        opset = model.opset_imports.get("", 0)
        model, report = rewrite_model(model, recipe, target, component=component or source.stem)  # type: ignore[arg-type]
        if not report.rewritten and not report.kept and not any(True for _ in edgeattn_nodes(model)):
            _no_sites(source, opset, report)
        report = dataclasses.replace(report, output=str(save(model, destination, external_data=external_data)))
    if as_json:
        emit_json(report.to_json())
        return
    click.echo(f"{destination}: {len(report.rewritten)} sites rewritten for {target} "
               f"in {report.seconds:.2f} s, {len(report.kept)} kept, {len(report.refused)} refused")
    for item in report.refused:
        click.echo(f"  refused {item.node} ({item.op_type}): {item.reasons[0]}")


def _no_sites(source: Path, opset: int, report: Any) -> None:
    first = report.refused[0].reasons[0] if report.refused else "no Softmax or attention node in the graph"
    raise GraphError(f"no attention site matched in {source} (opset {opset}); {len(report.refused)} "
                     f"attention-like nodes seen, first refusal: \"{first}\"; run `edgeattn inspect {source}`")


@click.command()
@json_option
def ops(as_json: bool) -> None:
    """List the registered edgeattn ops and their attributes."""
    from edgeattn.plugins.registry import default_registry

    registry = default_registry()
    if as_json:
        emit_json({"ops": [op.describe() for op in registry]})
        return
    for op in registry:
        click.echo(f"{op.domain}.{op.name} (version {op.version}, kind {op.kind}): {op.doc}")
        inputs = ", ".join(f"{io.name}{'?' if io.optional else ''}" for io in op.inputs)
        click.echo(f"  inputs: {inputs}")
        for attr in op.attributes:
            flags = [f for f, on in (("tunable", attr.tunable), ("from site", attr.from_site)) if on]
            suffix = f" [{', '.join(flags)}]" if flags else ""
            click.echo(f"  {attr.name}: {attr.kind} = {attr.default!r}{suffix}  {attr.doc}")


def _print_inspect(model: Path, report: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f"{model.name}: {len(report.sites)} attention sites (opset {report.opset})")
    for column in ("layer", "site", "dialect", "rule", "heads q/kv", "head", "mask", "causal", "scale", "op"):
        table.add_column(column)
    for site in report.sites:
        heads = f"{_dash(site.num_heads)}/{_dash(site.kv_num_heads)}"
        scale = f"{site.scale:.4g}" if site.scale is not None else "1/√d"
        table.add_row(_dash(site.layer), site.name, site.dialect, site.rule, heads, _dash(site.head_size),
                      site.mask, str(site.causal), scale, site.op)
    console.print(table)
    if report.edgeattn_nodes:
        console.print(f"edgeattn ops: {report.edgeattn_ops}")
        for node in report.edgeattn_nodes:
            console.print(f"  {node.name}: {node.op} {node.attributes} (rule {node.rule})")
    for item in report.unmatched:
        console.print(f"unmatched {item.op_type} {item.node}:")
        for reason in item.reasons:
            console.print(f"  - {reason}")


def _dash(value: Any) -> str:
    return "-" if value is None else str(value)
