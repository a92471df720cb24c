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

from dataclasses import dataclass
from typing import Any, Literal, Sequence

import onnx_ir as ir

from edgeattn.graphs.io import ModelLike, as_model
from edgeattn.graphs.passes import Lowering, PipelineOptions, combined_recipe, run_pipeline
from edgeattn.graphs.pipeline import RecipeLike
from edgeattn.graphs.report import RewriteReport
from edgeattn.graphs.sparse.lower_ort import Lowered
from edgeattn.ops.ort import OrtLowering
from edgeattn.ops.registry import Registry


@dataclass(frozen=True)
class SparseReport:
    rewrite: RewriteReport
    causal_sites: tuple[str, ...]  # nodes whose causal mask became causal = 2
    lowered: tuple[Lowered, ...]  # what each edgeattn node runs as (onnxruntime, fast lowering)
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {**self.rewrite.to_json(), "causal_from_mask": list(self.causal_sites),
                "lowered": [item.to_json() for item in self.lowered], "seconds": round(self.seconds, 3)}


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
    """Rewrite every attention site (recipe entries, then flags), make causal masks explicit and lower:
    the pipeline of `edgeattn.graphs.passes` with its sparse steps.

    With no recipe and no flags every site becomes edgeattn.Attention: for onnxruntime that is the
    exact causal-aware dense lowering. With `statistics`, every sparse node also reports its skip
    ratio or density as a graph output `statistics.<layer>.<name>` (and keeps its exact body)."""
    options = PipelineOptions(recipe=recipe, sparse=tuple(flags), sparse_steps=True, statistics=statistics,
                              target=target, lowering=lowering, settings=settings, component=component,
                              registry=registry)
    model, record = run_pipeline(as_model(model), options)
    assert record.rewrite is not None
    return model, SparseReport(record.rewrite, record.causal_sites, record.lowered, record.seconds)


__all__ = ["SparseReport", "combined_recipe", "sparsify"]
