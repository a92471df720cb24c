"""Entry points: rewrite a model (or an exported folder) with sparse attention, lowered for a target.

    from edgeattn.graphs.sparse.api import sparsify, sparsify_folder

    model, report = sparsify("decoder.onnx", ["block:keep=0.25,block=64"], component="decoder")
    sparsify_folder("smollm2", "smollm2-sparse", ["window:size=1024,sinks=4"])

Steps: the recipe (file and/or `--sparse` flags) assigns ops to sites (`edgeattn.graphs.rewrite`);
the parameters are checked against what the graph knows statically; causal masks are moved into the
`causal` attribute (`causal.factor_causal_masks`); then, for onnxruntime, the nodes that a fast
lowering takes are replaced by it (`lower_ort.lower_for_ort`) and the others keep their bodies; for
TensorRT, the plugin forms are written.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

import onnx_ir as ir

from edgeattn.errors import GraphError, RecipeError
from edgeattn.graphs.io import ModelLike, as_model, save
from edgeattn.graphs.lower import lower
from edgeattn.graphs.pipeline import RecipeLike, as_recipe, rewrite
from edgeattn.graphs.recipe import Recipe
from edgeattn.graphs.report import RewriteReport
from edgeattn.graphs.sparse.causal import factor_causal_masks
from edgeattn.graphs.sparse.checks import check_sparse_sites
from edgeattn.graphs.sparse.flags import sparse_recipe
from edgeattn.graphs.sparse.lower_ort import Lowered, lower_for_ort
from edgeattn.graphs.sparse.ort_lowerings import OrtLowering
from edgeattn.graphs.sparse.statistics import expose_statistics
from edgeattn.plugins.registry import Registry, default_registry

Lowering = Literal["fast", "function"]


@dataclass(frozen=True)
class SparseReport:
    rewrite: RewriteReport
    causal_sites: tuple[str, ...]  # nodes whose causal mask became causal = 2
    lowered: tuple[Lowered, ...]  # what each edgeattn node runs as (onnxruntime, fast lowering)
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {**self.rewrite.to_json(), "causal_from_mask": list(self.causal_sites),
                "lowered": [item.to_json() for item in self.lowered], "seconds": round(self.seconds, 3)}


def combined_recipe(recipe: RecipeLike, flags: Sequence[str], registry: Registry | None = None) -> Recipe:
    """The recipe file's entries followed by one entry per `--sparse` flag (later entries win)."""
    registry = registry or default_registry()
    base = as_recipe(recipe, registry)
    if not flags:
        return base
    extra = Recipe.parse(sparse_recipe(list(flags), registry), registry, source="--sparse")
    entries = list(base.entries)
    for entry in extra.entries:
        entries.append(dataclasses.replace(entry, index=len(entries) + 1))
    source = "--sparse" if not base.entries else f"{base.source} and --sparse"
    return Recipe(tuple(entries), base.default_op, source)


def sparsify(
    model: ModelLike,
    flags: Sequence[str] = (),
    recipe: RecipeLike = None,
    *,
    target: Literal["ort", "trt"] = "ort",
    lowering: Lowering = "fast",
    component: str | None = None,
    settings: OrtLowering | None = None,
    statistics: bool = False,
    registry: Registry | None = None,
) -> tuple[ir.Model, SparseReport]:
    """Rewrite every attention site (recipe entries, then flags), make causal masks explicit and lower.

    With no recipe and no flags every site becomes edgeattn.Attention: for onnxruntime that is the
    exact causal-aware dense lowering. With `statistics`, every sparse node also reports its skip
    ratio or density as a graph output `statistics.<layer>.<name>` (and keeps its exact body)."""
    started = time.perf_counter()
    registry = registry or default_registry()
    plan = combined_recipe(recipe, flags, registry)
    model, report = rewrite(as_model(model), plan, "ort", component=component, registry=registry)
    check_sparse_sites(model, registry)
    attention_ops = [op.name for op in registry if op.kind == "attention"]
    causal = factor_causal_masks(model, attention_ops)
    if statistics:
        expose_statistics(model, registry)
    lowered: list[Lowered] = []
    if target == "trt":
        lower(model, "trt", registry)
    elif lowering == "fast":
        lowered = lower_for_ort(model, settings, registry)
    elif lowering == "function":
        lower(model, "ort", registry)
    else:
        raise GraphError(f"unknown lowering {lowering!r}; choose fast or function")
    report = dataclasses.replace(report, target=target)
    return model, SparseReport(report, tuple(causal), tuple(lowered), time.perf_counter() - started)


def sparsify_folder(
    source: str | Path,
    destination: str | Path | None = None,
    flags: Sequence[str] = (),
    recipe: RecipeLike = None,
    *,
    lowering: Lowering = "fast",
    settings: OrtLowering | None = None,
    force: bool = False,
) -> SparseReport:
    """Rewrite the decoder of an exported decoder/VLM folder (`edgeattn run` reads the result).

    With `destination` None (or the source itself) the folder is changed in place (what `export
    --sparse` does after exporting); otherwise it is copied first. The manifest records the flags,
    the recipe and what each site runs as."""
    from edgeattn.exporter.manifest import read_manifest, write_manifest

    source = Path(source)
    destination = source if destination is None else Path(destination)
    manifest = read_manifest(source)
    if "decoder" not in manifest["components"]:
        raise RecipeError(f"{source} has no decoder component; sparse attention applies to decoders")
    decoder = manifest["components"]["decoder"]["file"]
    model, report = sparsify(source / decoder, flags, recipe, lowering=lowering, component="decoder",
                             settings=settings)
    manifest["sparse"] = {"flags": list(flags), "recipe": str(recipe) if isinstance(recipe, (str, Path)) else
                          (None if recipe is None else "given"), "lowering": lowering,
                          "sites": [item.to_json() for item in report.lowered]}
    if destination.resolve() == source.resolve():
        save(model, source / decoder)  # atomic: written beside, then moved into place
        write_manifest(source, manifest)
        return report
    if destination.exists():
        if not force:
            raise GraphError(f"{destination} exists; pass force=True (--force) to replace it")
        shutil.rmtree(destination)
    staging = destination.with_name(f".{destination.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        shutil.copytree(source, staging, ignore=shutil.ignore_patterns(decoder, f"{decoder}.data"))
        save(model, staging / decoder)
        write_manifest(staging, manifest)
        staging.rename(destination)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return report


__all__ = ["SparseReport", "combined_recipe", "sparsify", "sparsify_folder"]
