"""`edgeattn compile DIR_OR_ONNX --out ENGINES`: TensorRT engines for an exported folder or one ONNX file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from edgeattn.cli.common import emit_json, json_option, progress


@click.command("compile", short_help="Build TensorRT engines from an exported folder or an ONNX file.")
@click.argument("source", type=click.Path())
@click.option("--out", required=True, type=click.Path(), help="Folder to write the engines and compile.json to "
              "(must not exist).")
@click.option("--backend", type=click.Choice(["tensorrt", "tensorrt-rtx"]),
              help="TensorRT to build with.  [default: tensorrt where installed, else tensorrt-rtx]")
@click.option("--arch", help="Compute capabilities to build for, e.g. sm_89 or sm_86,sm_89 (TensorRT-RTX; without: "
              "a portable engine), or native (the GPU here).")
@click.option("--shapes", help="Ranges of the symbolic dims, NAME=MIN/OPT/MAX or NAME=N, e.g. "
              "batch=1/1/1,sequence=1/128/1024,past_sequence=0/128/1024.")
@click.option("--component", "components", multiple=True, help="Build only this component (repeatable).")
@click.option("--no-plugins", is_flag=True, help="Build every edgeattn node as its inlined function body.")
@click.option("--timing-cache", type=click.Path(dir_okay=False), help="TensorRT timing cache to read (when it "
              "exists) and update: later builds skip the timings already made.")
@click.option("--force", is_flag=True,
              help="Replace OUT if it exists (an empty folder, or one with an edgeattn manifest.json).")
@json_option
def compile_command(source: str, out: str, backend: str | None, arch: str | None, shapes: str | None,
            components: tuple[str, ...], no_plugins: bool, timing_cache: str | None, force: bool,
            as_json: bool) -> None:
    """Build one TensorRT engine per component of SOURCE (an export folder, or one .onnx file).

    Writes OUT/<component>.engine and OUT/compile.json (backend and version, targets, the optimization
    profile of each engine, its layers and which edgeattn nodes became plugins or inlined bodies, build
    seconds, bytes). An edgeattn node whose settings a GPU kernel computes becomes a plugin layer that
    carries its kernels (compiled ahead of time for every target); any other node builds as its inlined
    function body, and compile.json says why.
    """
    from edgeattn.exporter.files import staged_folder
    from edgeattn.runtime.tensorrt import CompileOptions, compile_engines

    options = CompileOptions(backend, arch, shapes, components, plugins=not no_plugins,
                             timing_cache=Path(timing_cache) if timing_cache else None)
    with staged_folder(Path(out), force, inputs=[Path(source)]) as stage:
        document = compile_engines(source, stage, options,
                                   step=lambda description: progress(description, enabled=not as_json))
    if as_json:
        emit_json(_without_layers(document))
    else:
        _print(document, out)


def _without_layers(document: dict[str, Any]) -> dict[str, Any]:
    """compile.json without the per-layer lists (they stay in the file)."""
    engines = {name: {k: v for k, v in entry.items() if k not in ("layers", "engine_layers")}
               for name, entry in document["engines"].items()}
    return {**document, "engines": engines}


def _print(document: dict[str, Any], out: str) -> None:
    backend = document["backend"]
    click.echo(f"built {len(document['engines'])} engines with {backend['name']} {backend['version']} for "
               f"{','.join(document['arch'])} into {out}")
    for name, entry in document["engines"].items():
        nodes = entry["edgeattn_nodes"]
        inlined = sum(1 for n in nodes if n["as"] != "plugin")
        plugins = len(nodes) - inlined
        edge = f"; edgeattn nodes: {plugins} plugins, {inlined} inlined bodies" if nodes else ""
        click.echo(f"  {entry['file']:<18} {entry['bytes'] / 1e6:7.1f} MB  {entry['build_seconds']:6.2f} s  "
                   f"{len(entry['layers'])} layers{edge}")
