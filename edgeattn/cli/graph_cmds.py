"""`edgeattn inspect`, `edgeattn rewrite`, `edgeattn ops`: parse, call edgeattn.graphs, print."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from edgeattn.cli.common import emit_json, json_option, method_names, progress
from edgeattn.errors import GraphError

_component_option = click.option(
    "--component", default=None, help="Component the model is (decoder, encoder, vision ...); default: the file stem."
)


@click.command()
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@_component_option
@json_option
def inspect(model: Path, component: str | None, as_json: bool) -> None:
    """List the attention sites, edgeattn ops and unmatched Softmax nodes of MODEL (an .onnx file), and for
    each edgeattn node whether TensorRT gets it as a plugin or as its function body. For an .engine file
    written by `edgeattn compile`: its layers."""
    from edgeattn.graphs import find_sites, load
    from edgeattn.graphs.sparse.lower_ort import lowered_sites

    if model.suffix == ".engine":
        _inspect_engine(model, as_json)
        return
    loaded = load(model)
    report = find_sites(loaded, component or model.stem)
    lowered = lowered_sites(loaded)
    from edgeattn.graphs.pruning import pruning_nodes

    pruning = pruning_nodes(loaded)
    from edgeattn.ops.registry import default_registry

    notes = [op.note for op in default_registry() if op.note and op.name in report.edgeattn_ops]
    from edgeattn.runtime.trt_plugins import tensorrt_nodes

    tensorrt = tensorrt_nodes(loaded)
    from edgeattn.calibrate.graph import calibrated_sites

    calibrated = calibrated_sites(loaded)
    if as_json:
        emit_json({"model": str(model), **report.to_json(), "lowered": lowered, "pruning": pruning, "notes": notes,
                   "tensorrt": tensorrt, "calibrated": calibrated})
        return
    _print_inspect(model, report)
    _print_lowered(lowered)
    for site in calibrated:  # edgeattn calibrate: the chosen value, or the law it follows
        law = site.get("law")
        value = (f"scale_factor = {law['c']:.6g} * Lkv ** {law['p']:.4g}" if law else
                 ", ".join(f"{k} = {v:g}" for k, v in site.items()
                           if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("kl", "layer")))
        where = f"layer {site['layer']}" if site["layer"] is not None else f"node {site['node']}"
        how = f" ({site['method']} for {site['target']})" if "method" in site else ""
        click.echo(f"calibrated: {where} {site['op']}: {value}{how}")
    _print_pruning(pruning)
    _print_tensorrt(tensorrt)
    for note in notes:
        click.echo(f"note: {note}")


@click.command()
@click.argument("source", metavar="IN", type=click.Path(path_type=Path))
@click.argument("destination", metavar="OUT", type=click.Path(path_type=Path))
@click.option("--recipe", type=click.Path(dir_okay=False, path_type=Path), help="TOML recipe: which op each site gets.")
@click.option("--target", type=click.Choice(["ort", "trt"]), default="ort", show_default=True,
              help="ort: function bodies for onnxruntime; trt: TensorRT plugin nodes (bodies as fallback).")
@click.option("--external-data/--no-external-data", default=None,
              help="Write weights to OUT.data; default: as the input did, or when too large for one file.")
@click.option("--sparse", "sparse", multiple=True, metavar="METHOD[:k=v,...]",
              help=f"Sparse attention for the sites ({method_names('--sparse')}; repeatable, after --recipe), e.g. "
                   "block:keep=0.25,block=64, window:size=1024,sinks=64, blasst:scale_factor=10; each takes "
                   "layers= and name=, block and window also heads=.")
@click.option("--lowering", type=click.Choice(["fast", "function"]), default=None,
              help="ort: fast replaces the sites it can by graphs that compute less (exact); function keeps "
                   "every op with its function body. Default: fast with --sparse, function without.")
@click.option("--prune", "prune", metavar="METHOD:K[,param=value...]",
              help=f"Also prune the visual tokens of this vision-encoder graph to K ({method_names('--prune')}), "
                   "as `export --prune` does.")
@_component_option
@click.option("--force", is_flag=True, help="Replace OUT (and OUT.data) if it exists. IN is never replaced.")
@json_option
def rewrite(source: Path, destination: Path, recipe: Path | None, target: str, external_data: bool | None,
            sparse: tuple[str, ...], lowering: str | None, prune: str | None, component: str | None,
            force: bool, as_json: bool) -> None:
    """Rewrite the attention sites of IN into edgeattn ops and write OUT.

    IN is an .onnx file (OUT is then a file) or a folder `edgeattn export` wrote (OUT is then a folder
    every command accepts): --prune prunes its vision component as `export --prune` would, --sparse makes
    its decoder sparse as `export --sparse` would, neither rewrites the sites of every component (or
    --component). Unchanged files are shared with IN (hard links) or copied; nothing is exported again."""
    from edgeattn.errors import PruningError
    from edgeattn.graphs import load, save
    from edgeattn.graphs.io import check_output_file
    from edgeattn.graphs.passes import PipelineOptions, run_pipeline
    from edgeattn.graphs.pruning import parse_prune
    from edgeattn.graphs.sparse.flags import parse_sparse_flag

    spec = parse_prune(prune) if prune is not None else None  # flag errors before the model is read
    if spec is not None and sparse:
        raise PruningError("--prune and --sparse are separate passes; rewrite with --sparse, then prune its output")
    for flag in sparse:
        parse_sparse_flag(flag)
    if source.is_dir():
        _rewrite_folder(source, destination, recipe, target, external_data, sparse, lowering, spec, prune, component,
                        force, as_json)
        return
    check_output_file(source, destination, force)
    sparse_mode = bool(sparse) or lowering == "fast"
    options = PipelineOptions(recipe=recipe, sparse=sparse, sparse_steps=sparse_mode, prune=spec,
                              prune_where=source.name, target=target,  # type: ignore[arg-type]
                              lowering=(lowering or "fast") if sparse_mode else "function",  # type: ignore[arg-type]
                              component=component or source.stem)
    what = "rewriting and pruning" if spec is not None else "rewriting"
    with progress(f"{what} {source.name}", enabled=not as_json):
        model = load(source)
        from edgeattn.ops.spec import standard_opset

        opset = standard_opset(model.opset_imports, 0)
        model, record = run_pipeline(model, options)
        report = record.rewrite
        if spec is None and not report.rewritten:  # nothing to do is an error (pruning needs no site)
            found = record.lowered if sparse_mode else (report.kept or _has_edgeattn_nodes(model))
            if not found:
                _no_sites(source, opset, report)
        output = str(save(model, destination, external_data=external_data))
    if spec is not None:
        _print_pruned(destination, report, record.pruning, spec, target, output, as_json)
    elif sparse_mode:
        _print_sparse(destination, record, target, output, as_json)
    else:
        _print_rewritten(destination, report, target, output, as_json)


def _rewrite_folder(source: Path, destination: Path, recipe: Path | None, target: str, external_data: bool | None,
                    sparse: tuple[str, ...], lowering: str | None, spec: Any, prune: str | None, component: str | None,
                    force: bool, as_json: bool) -> None:
    """`rewrite FOLDER OUT`: a variant folder (see edgeattn.exporter.variant)."""
    from edgeattn.errors import EdgeAttnError
    from edgeattn.exporter.variant import VariantOptions, rewrite_folder

    for flag, given in (("--lowering", lowering), ("--external-data", external_data)):
        if given is not None:
            raise EdgeAttnError(f"{flag} applies to an .onnx file; a folder's components are written as export "
                                "writes them")
    if component is not None and (spec is not None or sparse):
        raise EdgeAttnError("--component picks what a plain rewrite changes; --prune changes the vision component "
                            "and --sparse the decoder")
    options = VariantOptions(prune=spec, prune_flag=prune, sparse=sparse, recipe=recipe, target=target,
                             components=(component,) if component else ())
    record = rewrite_folder(source, destination, options, force,
                            step=lambda text: progress(text, enabled=not as_json))
    if as_json:
        emit_json({"output": str(destination), **record})
        return
    if "pruning" in record:
        done = f"{prune} keeps {record['pruning']['k']} of {record['pruning']['tokens']} visual tokens"
    elif "sparse_sites" in record:
        done = f"{', '.join(sparse)} on {record['sparse_sites']} decoder sites"
    else:
        counts = {name: item["rewritten"] for name, item in record["rewrite"]["components"].items()}
        done = "sites rewritten: " + ", ".join(f"{name} {count}" for name, count in counts.items())
    click.echo(f"{destination}: a variant of {source} ({done}); the unchanged files are shared with it as "
               f"{record['shared']}")


def _has_edgeattn_nodes(model: Any) -> bool:
    from edgeattn.graphs.attach import edgeattn_nodes

    return any(True for _ in edgeattn_nodes(model))


def _print_rewritten(destination: Path, report: Any, target: str, output: str, as_json: bool) -> None:
    import dataclasses

    report = dataclasses.replace(report, output=output)
    if as_json:
        emit_json(report.to_json())
        return
    click.echo(f"{destination}: {len(report.rewritten)} sites rewritten for {target} "
               f"in {report.seconds:.2f} s, {len(report.kept)} kept, {len(report.refused)} refused")
    for item in report.refused:
        click.echo(f"  refused {item.node} ({item.op_type}): {item.reasons[0]}")


def _print_sparse(destination: Path, record: Any, target: str, output: str, as_json: bool) -> None:
    from edgeattn.graphs.sparse.api import SparseReport

    report = SparseReport(record.rewrite, record.causal_sites, record.lowered, record.seconds)
    if as_json:
        emit_json({**report.to_json(), "output": output})
        return
    click.echo(f"{destination}: {len(report.rewrite.rewritten)} sites rewritten for {target} in "
               f"{report.seconds:.2f} s, {len(report.causal_sites)} causal masks made explicit")
    counts: dict[tuple[str, str], int] = {}
    for item in report.lowered:
        counts[(item.op, item.lowering)] = counts.get((item.op, item.lowering), 0) + 1
    for (op, kind), count in counts.items():
        reason = next((i.reason for i in report.lowered if (i.op, i.lowering) == (op, kind) and i.reason), None)
        click.echo(f"  {count} x {op}: {kind}" + (f" ({reason})" if reason else ""))
    for item in report.rewrite.refused:
        click.echo(f"  refused {item.node} ({item.op_type}): {item.reasons[0]}")


def _print_pruned(destination: Path, report: Any, pruned: Any, spec: Any, target: str, output: str,
                  as_json: bool) -> None:
    if as_json:
        emit_json({**report.to_json(), "output": output, "pruning": pruned.to_json()})
        return
    layer = f" at attention layer {pruned.layer}" if pruned.layer is not None else ""
    click.echo(f"{destination}: {len(report.rewritten)} sites rewritten for {target}; {spec.method} keeps "
               f"{pruned.k} of {pruned.tokens} tokens{layer}; outputs {pruned.output} and kept_indices")


_ALWAYS_SHOWN = ("causal", "layout", "block_size", "keep", "window", "sinks")


def _differs(defaults: dict[str, Any], key: str, value: Any) -> bool:
    if key not in defaults:
        return False
    default = defaults[key]
    return (list(default) if isinstance(default, tuple) else default) != value


def _print_lowered(lowered: list[dict[str, Any]]) -> None:
    """Sites replaced by an onnxruntime lowering: op, lowering and the parameters that differ from defaults."""
    if not lowered:
        return
    from edgeattn.ops.registry import default_registry

    registry = default_registry()
    click.echo(f"{len(lowered)} sites lowered for onnxruntime:")
    for site in lowered:
        defaults = registry.get(site["op"]).defaults() if site["op"] in registry.names() else {}
        shown = {k: v for k, v in site["attributes"].items() if k in _ALWAYS_SHOWN or _differs(defaults, k, v)}
        layer = "-" if site.get("layer") is None else site["layer"]
        click.echo(f"  layer {layer} {site['site']}: {site['op']} -> {site['lowering']} {shown}")


def _print_pruning(rows: list[dict[str, Any]]) -> None:
    """The pruning ops and their budgets (a budget read from an input is shown with its default)."""
    for row in rows:
        if row["op"] == "TokenScore":
            layer = f" at layer {row['layer']}" if row.get("layer") is not None else ""
            click.echo(f"pruning: {row['node']} TokenScore source={row['source']}{layer}")
        else:
            budget = (f"k from input {row['k_input']} (default {row['k_default']})" if row["k_input"]
                      else f"k={row['k']}")
            click.echo(f"pruning: {row['node']} TokenSelect mode={row['mode']} {budget}")


def _no_sites(source: Path, opset: int, report: Any) -> None:
    first = report.refused[0].reasons[0] if report.refused else "no Softmax or attention node in the graph"
    raise GraphError(f"no attention site matched in {source} (opset {opset}); {len(report.refused)} "
                     f"attention-like nodes seen, first refusal: \"{first}\"; run `edgeattn inspect {source}`")


@click.command()
@json_option
def ops(as_json: bool) -> None:
    """List the registered edgeattn ops and their attributes."""
    from edgeattn.ops.registry import default_registry

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


def _print_tensorrt(rows: list[dict]) -> None:
    shown = [r for r in rows if r["as"] != "onnxruntime form"]
    if not shown:
        return
    click.echo("TensorRT (what edgeattn compile builds):")
    for row in shown:
        how = f"plugin ({row['kernel']} kernels)" if row["as"] == "plugin" else f"function body: {row['reason']}"
        click.echo(f"  {row['node']:<32} {row['op']:<22} {how}")


def _inspect_engine(path: Path, as_json: bool) -> None:
    from edgeattn.runtime.tensorrt import inspect_engine

    found = inspect_engine(path)
    if as_json:
        emit_json(found)
        return
    click.echo(f"{path}: {len(found['layers'])} layers ({found['source']})")
    for layer in found["layers"]:
        click.echo(f"  {layer.get('type', '?'):<18} {layer.get('name')}")
    for node in found.get("edgeattn_nodes", []):
        how = f"plugin layer {node['layer']}" if node["as"] == "plugin" else f"inlined body ({node.get('reason')})"
        click.echo(f"edgeattn {node['op']} {node['node']}: {how}")
