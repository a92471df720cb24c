"""The rewrite step: find sites -> choose ops (recipe) -> rewrite -> assign ops (`rewrite_sites`), and
`rewrite`, the pipeline (`edgeattn.graphs.passes`) with that step only, lowered for a target.

    model, report = rewrite("decoder.onnx", recipe="recipe.toml", target="ort", component="decoder")
    save(model, "out/decoder.onnx")

Works on an onnx-ir model in memory (changed in place and returned), a ModelProto or a path.
"""

from __future__ import annotations

import os
import time
from typing import Any, Mapping

import onnx_ir as ir

from edgeattn.errors import GraphError
from edgeattn.graphs.apply import apply_match
from edgeattn.graphs.assign import assign_op
from edgeattn.graphs.detect import detect
from edgeattn.graphs.features import SiteRefused
from edgeattn.graphs.io import MAX_IR_VERSION, MIN_IR_VERSION
from edgeattn.graphs.attach import TARGETS, Target
from edgeattn.graphs.recipe import KEEP, Assignment, Recipe
from edgeattn.graphs.report import Rewritten, RewriteReport, Site, Unmatched
from edgeattn.graphs.prepare import prepare
from edgeattn.ops.registry import Registry
from edgeattn.ops.spec import MIN_REWRITE_OPSET, STANDARD_DOMAINS, standard_opset

RecipeLike = Recipe | Mapping[str, Any] | str | os.PathLike | None


def as_recipe(recipe: RecipeLike, registry: Registry) -> Recipe:
    if recipe is None:
        return Recipe()
    if isinstance(recipe, Recipe):
        return recipe
    if isinstance(recipe, Mapping):
        return Recipe.parse(recipe, registry)
    return Recipe.load(recipe, registry)


def rewrite_sites(model: ir.Model, recipe: Recipe, component: str | None, registry: Registry,
                  target: Target = "ort") -> RewriteReport:
    """Detect the attention sites of `model` and replace each by the op the recipe chooses (no lowering:
    that is the last step of the pipeline). `target` is recorded in the report."""
    started = time.perf_counter()
    if target not in TARGETS:
        raise GraphError(f"unknown target {target!r}; choose one of: {', '.join(TARGETS)}")
    check_opset(model)
    prepare(model)
    detection = detect(model, component)
    assignments = recipe.assign(detection.report.sites, component)
    rewritten, kept, declined = [], [], []
    for site in detection.report.sites:
        chosen = assignments[site.name]
        if site.name in detection.existing:
            node = detection.existing[site.name]
            if chosen.entry is not None and _assigned(model, node, chosen, registry, site, declined):
                rewritten.append(Rewritten(site.name, site.layer, site.dialect, site.rule, node.op_type, node.name))
            continue
        if chosen.op == KEEP:
            kept.append(site.name)
            continue
        node = apply_match(model, detection.matches[site.name], site)
        _assigned(model, node, chosen, registry, site, declined)
        rewritten.append(Rewritten(site.name, site.layer, site.dialect, site.rule, node.op_type, node.name or ""))
    refused = tuple(item for item in detection.report.unmatched if item.attention) + tuple(declined)
    return RewriteReport(tuple(rewritten), tuple(kept), refused, target, component, time.perf_counter() - started)


def _assigned(model: ir.Model, node: ir.Node, chosen: Assignment, registry: Registry, site: Site,
              declined: list[Unmatched]) -> bool:
    """`assign_op`; a site the chosen op cannot honour keeps its op and is reported as refused for it."""
    try:
        return assign_op(model.graph, node, chosen, registry)
    except SiteRefused as refusal:
        declined.append(Unmatched(site.name, node.op_type, site.graph, (str(refusal),)))
        return False


def finish_for_runtime(model: ir.Model) -> None:
    """Import every domain a node uses and set an IR version onnxruntime and TensorRT read: node
    overloads and metadata need IR 10; onnxruntime 1.31 reads at most IR 13."""
    declare_used_domains(model)
    model.ir_version = min(max(model.ir_version, MIN_IR_VERSION), MAX_IR_VERSION)


def check_opset(model: ir.Model) -> None:
    opset = standard_opset(model.opset_imports)
    if opset is None or opset < MIN_REWRITE_OPSET:
        raise GraphError(f"the model imports ONNX opset {opset}; edgeattn rewrites opset {MIN_REWRITE_OPSET} and later; "
                         "convert it with onnx.version_converter.convert_version(model, 17)")


def declare_used_domains(model: ir.Model) -> None:
    """Import every domain a node uses (onnxruntime's optimizer writes com.microsoft nodes without one,
    which the ONNX checker rejects)."""
    for graph in model.graphs():
        for node in graph:
            if node.domain not in STANDARD_DOMAINS:
                model.opset_imports.setdefault(node.domain, 1)
