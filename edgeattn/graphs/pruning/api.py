"""`prune`, `prune_file` and `fold_budget`: the pipeline (`edgeattn.graphs.passes`) with the pruning step
(or the budget fold) only."""

from __future__ import annotations

import os

import onnx_ir as ir

from edgeattn.graphs.io import ModelLike, save
from edgeattn.graphs.attach import Target
from edgeattn.graphs.passes import PipelineOptions, run_pipeline
from edgeattn.graphs.pruning.methods import PruneSpec, parse_prune
from edgeattn.graphs.pruning.report import PruneReport
from edgeattn.ops.registry import Registry


def prune(model: ModelLike, spec: PruneSpec | str, target: Target = "ort", *, where: str | None = None,
          registry: Registry | None = None) -> tuple[ir.Model, PruneReport]:
    """Insert pruning into `model` (changed in place and returned) as `spec` says and lower it for
    `target`: the pipeline of `edgeattn.graphs.passes` with the pruning step only."""
    spec = parse_prune(spec) if isinstance(spec, str) else spec
    where = where or (os.path.basename(str(model)) if isinstance(model, (str, os.PathLike)) else "the vision graph")
    model, record = run_pipeline(model, PipelineOptions(rewrite=False, prune=spec, prune_where=where, target=target,
                                                        registry=registry))
    assert record.pruning is not None
    return model, record.pruning


def prune_file(source: str | os.PathLike, destination: str | os.PathLike, spec: PruneSpec | str,
               target: Target = "ort", *, external_data: bool | None = None) -> PruneReport:
    """Read, prune and atomically write one vision-encoder ONNX file."""
    model, report = prune(source, spec, target, where=os.path.basename(str(source)))
    save(model, destination, external_data=external_data)
    return report


def fold_budget(model: ir.Model, k: int | None = None, target: Target = "ort") -> ir.Model:
    """Replace a dynamic export's `num_tokens` input by the attribute k (default: the input's default
    value) and lower for `target` (TensorRT needs the static budget)."""
    model, _ = run_pipeline(model, PipelineOptions(rewrite=False, fold_budget=True, budget=k, target=target))
    return model
