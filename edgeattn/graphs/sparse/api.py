"""Entry points: rewrite a model (or an exported folder) with sparse attention, lowered for a target.

    from edgeattn.graphs.sparse.api import sparsify

    model, report = sparsify("decoder.onnx", ["block:keep=0.25,block=64"], component="decoder")

(`export --sparse` applies it to an exported folder's decoder: `edgeattn.exporter.rewrite_step`.)

Steps: the recipe (file and/or `--sparse` flags) assigns ops to sites (`edgeattn.graphs.rewrite`);
the parameters are checked against what the graph knows statically; causal masks are moved into the
`causal` attribute (`causal.factor_causal_masks`); then, for onnxruntime, the nodes that a fast
lowering takes are replaced by it (`lower_ort.lower_for_ort`) and the others keep their bodies; for
TensorRT, the plugin forms are written.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any, Literal, Sequence

import onnx_ir as ir

from edgeattn.errors import GraphError
from edgeattn.graphs.io import ModelLike, as_model
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


__all__ = ["SparseReport", "combined_recipe", "sparsify"]
