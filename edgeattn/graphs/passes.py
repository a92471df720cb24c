"""The graph passes and the one pipeline every command and the exporter run.

Each step is an onnx-ir pass (`InPlacePass`: it changes the model it is given and returns
`PassResult(model, modified)`); `requires` checks the preconditions. The pipeline is a `Sequential` in
this fixed order, with the steps the options ask for:

    1. RewriteSites          attention sites -> edgeattn ops, as the recipe (and --sparse flags) choose
    2. CheckSparse           sparse parameters checked against what the graph knows statically
    3. FactorCausalMasks     causal masks moved into the ops' `causal` attribute (exact; with sparse
                             steps, and for target trt, whose kernels take causal + a key mask)
    4. ExposeStatistics      skip ratio / density as graph outputs (calibration, inspect)
    5. PruneTokens           TokenScore + TokenSelect into a vision graph (visual-token pruning)
    5b. FoldTunables         a tunable read from a graph input (the run-time budget) becomes an attribute
    6. LowerForOrt           nodes a fast onnxruntime lowering takes are replaced by it (exact)
    7. AttachFunctionBodies  the remaining edgeattn nodes get their function bodies (target ort), or
       TensorRTForm          the plugin form with the generic body as fallback (target trt)

Lowering (6, 7) happens once, at the end. A pass runs alone too:

    from edgeattn.graphs.passes import AttachFunctionBodies, FactorCausalMasks
    FactorCausalMasks()(model); AttachFunctionBodies("ort")(model)
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import onnx_ir as ir
from onnx_ir.passes import InPlacePass, PassError, PassResult, PreconditionError, Sequential

from edgeattn.errors import EdgeAttnError, GraphError
from edgeattn.graphs.io import ModelLike, as_model, save
from edgeattn.graphs.attach import TARGETS, Target, attach_bodies
from edgeattn.graphs.pipeline import RecipeLike, as_recipe, check_opset, finish_for_runtime, rewrite_sites
from edgeattn.graphs.recipe import Recipe
from edgeattn.graphs.report import RewriteReport
from edgeattn.ops.registry import Registry, default_registry
from edgeattn.ops.spec import standard_opset

Lowering = Literal["fast", "function"]
LOWERINGS: tuple[str, ...] = ("fast", "function")


class GraphPreconditionError(GraphError, PreconditionError):
    """A pass was given a model it cannot work on: reaches the user as one line (it is a GraphError)."""


@dataclass
class PipelineRecord:
    """What the passes did, filled in as they run."""

    rewrite: RewriteReport | None = None
    causal_sites: tuple[str, ...] = ()
    lowered: tuple[Any, ...] = ()  # sparse.lower_ort.Lowered, one per edgeattn attention node
    pruning: Any = None  # pruning.PruneReport
    passes: list[tuple[str, bool]] = field(default_factory=list)  # (pass, modified) in order
    seconds: float = 0.0


@dataclass(frozen=True)
class PipelineOptions:
    """Which steps run and with what. The defaults rewrite every site into edgeattn.Attention for
    onnxruntime (function bodies)."""

    rewrite: bool = True  # step 1 (the sparse steps need it)
    recipe: RecipeLike = None
    sparse: tuple[str, ...] = ()  # --sparse flags, appended to the recipe's entries
    sparse_steps: bool = False  # steps 2-3 (on with `sparse` flags; `sparsify` turns them on without)
    statistics: bool = False  # step 4
    prune: Any = None  # a pruning.PruneSpec: step 5
    prune_where: str = "the vision graph"  # how messages name the pruned graph
    fold_budget: bool = False  # step 5b: the num_tokens input becomes TokenSelect's k
    budget: int | None = None  # the k it gets (default: the input's default value)
    target: Target = "ort"
    lowering: Lowering = "function"  # "fast": step 6 (target ort)
    settings: Any = None  # sparse.ort_lowerings.OrtLowering for step 6
    component: str | None = None
    registry: Registry | None = None


class _Pass(InPlacePass):
    """An edgeattn pass: in place, with the pipeline's record to write what it did into."""

    def __init__(self, record: PipelineRecord | None = None) -> None:
        super().__init__()
        self.record = record if record is not None else PipelineRecord()

    def result(self, model: ir.Model, modified: bool) -> PassResult:
        self.record.passes.append((type(self).__name__, modified))
        return PassResult(model, modified)


class RewriteSites(_Pass):
    def __init__(self, recipe: Recipe, target: Target, component: str | None, registry: Registry,
                 record: PipelineRecord | None = None) -> None:
        super().__init__(record)
        self.recipe, self.target, self.component, self.registry = recipe, target, component, registry

    def requires(self, model: ir.Model) -> None:
        try:
            check_opset(model)
        except GraphError as err:
            raise GraphPreconditionError(str(err)) from None

    def call(self, model: ir.Model) -> PassResult:
        report = rewrite_sites(model, self.recipe, self.component, self.registry, self.target)
        self.record.rewrite = report
        return self.result(model, bool(report.rewritten))


class CheckSparse(_Pass):
    def __init__(self, registry: Registry, record: PipelineRecord | None = None) -> None:
        super().__init__(record)
        self.registry = registry

    def call(self, model: ir.Model) -> PassResult:
        from edgeattn.graphs.sparse.checks import check_sparse_sites

        check_sparse_sites(model, self.registry)
        return self.result(model, False)


class FactorCausalMasks(_Pass):
    def __init__(self, registry: Registry | None = None, record: PipelineRecord | None = None) -> None:
        super().__init__(record)
        self.registry = registry or default_registry()

    def call(self, model: ir.Model) -> PassResult:
        from edgeattn.graphs.sparse.causal import factor_causal_masks

        changed = factor_causal_masks(model, [op.name for op in self.registry if op.kind == "attention"])
        self.record.causal_sites = tuple(changed)
        return self.result(model, bool(changed))


class ExposeStatistics(_Pass):
    def __init__(self, registry: Registry | None = None, record: PipelineRecord | None = None) -> None:
        super().__init__(record)
        self.registry = registry or default_registry()

    def call(self, model: ir.Model) -> PassResult:
        from edgeattn.graphs.sparse.statistics import expose_statistics

        before = len(model.graph.outputs)
        expose_statistics(model, self.registry)
        return self.result(model, len(model.graph.outputs) != before)


class PruneTokens(_Pass):
    def __init__(self, spec: Any, where: str, target: Target, record: PipelineRecord | None = None) -> None:
        super().__init__(record)
        self.spec, self.where, self.target = spec, where, target

    def call(self, model: ir.Model) -> PassResult:
        from edgeattn.graphs.pruning.insert import insert_pruning

        self.record.pruning = insert_pruning(model, self.spec, self.where, self.target)
        return self.result(model, True)


class FoldTunables(_Pass):
    """The run-time budget input (`num_tokens`, export --prune ...,dynamic=1) folded into TokenSelect's k."""

    def __init__(self, k: int | None = None, record: PipelineRecord | None = None) -> None:
        super().__init__(record)
        self.k = k

    def call(self, model: ir.Model) -> PassResult:
        from edgeattn.graphs.pruning.fold import fold_budget_input

        fold_budget_input(model, self.k)
        return self.result(model, True)


class LowerForOrt(_Pass):
    def __init__(self, settings: Any = None, registry: Registry | None = None,
                 record: PipelineRecord | None = None) -> None:
        super().__init__(record)
        self.settings, self.registry = settings, registry or default_registry()

    def call(self, model: ir.Model) -> PassResult:
        from edgeattn.graphs.sparse.lower_ort import lower_for_ort

        lowered = lower_for_ort(model, self.settings, self.registry)
        self.record.lowered = tuple(lowered)
        return self.result(model, any(item.lowering != "function" for item in lowered))


class AttachFunctionBodies(_Pass):
    """Every edgeattn node names the function body specialised for it (onnxruntime inlines it); bodies no
    node uses are dropped. With target "trt" the nodes are first brought to their TensorRT plugin form."""

    target: Target = "ort"

    def __init__(self, registry: Registry | None = None, record: PipelineRecord | None = None) -> None:
        super().__init__(record)
        self.registry = registry or default_registry()

    def requires(self, model: ir.Model) -> None:
        if standard_opset(model.opset_imports) is None:
            raise GraphPreconditionError("the model imports no default ONNX opset; it cannot hold function bodies")

    def call(self, model: ir.Model) -> PassResult:
        count = attach_bodies(model, self.target, self.registry)
        finish_for_runtime(model)
        return self.result(model, count > 0)


class TensorRTForm(AttachFunctionBodies):
    """The TensorRT plugin form of every edgeattn node (plugin fields only, the plugin's input signature),
    with the op's generic body as the fallback a TensorRT without the plugin inlines."""

    target: Target = "trt"


def build_pipeline(options: PipelineOptions, record: PipelineRecord) -> Sequential:
    """The passes `options` ask for, in the fixed order of this module's docstring."""
    if options.target not in TARGETS:
        raise GraphError(f"unknown target {options.target!r}; choose one of: {', '.join(TARGETS)}")
    if options.lowering not in LOWERINGS:
        raise GraphError(f"unknown lowering {options.lowering!r}; choose one of: {', '.join(LOWERINGS)}")
    registry = options.registry or default_registry()
    steps: list[_Pass] = []
    if options.rewrite:
        recipe = combined_recipe(options.recipe, options.sparse, registry)
        steps.append(RewriteSites(recipe, options.target, options.component, registry, record))
        if options.sparse or options.sparse_steps:
            steps += [CheckSparse(registry, record), FactorCausalMasks(registry, record)]
        elif options.target == "trt":  # the plugins' kernels apply causal masking and a key mask, not 4-D masks
            steps.append(FactorCausalMasks(registry, record))
    if options.statistics:
        steps.append(ExposeStatistics(registry, record))
    if options.prune is not None:
        steps.append(PruneTokens(options.prune, options.prune_where, options.target, record))
    if options.fold_budget:
        steps.append(FoldTunables(options.budget, record))
    if options.target == "trt":
        steps.append(TensorRTForm(registry, record))
    else:
        if options.lowering == "fast":
            steps.append(LowerForOrt(options.settings, registry, record))
        steps.append(AttachFunctionBodies(registry, record))
    return Sequential(*steps)


def run_pipeline(model: ModelLike, options: PipelineOptions) -> tuple[ir.Model, PipelineRecord]:
    """Run the pipeline on `model` (an onnx-ir model, changed in place, a ModelProto or a path)."""
    started = time.perf_counter()
    record = PipelineRecord()
    model = as_model(model)
    try:
        build_pipeline(options, record)(model)
    except PassError as err:  # Sequential wraps what a pass raised: a user error reaches the user as it was
        cause: BaseException | None = err
        while isinstance(cause, PassError) and not isinstance(cause, EdgeAttnError):
            cause = cause.__cause__
        if isinstance(cause, EdgeAttnError):
            raise cause from None
        raise
    record.seconds = time.perf_counter() - started
    if record.rewrite is not None:
        record.rewrite = dataclasses.replace(record.rewrite, target=options.target, seconds=record.seconds)
    return model, record


def combined_recipe(recipe: RecipeLike, flags: Sequence[str], registry: Registry | None = None) -> Recipe:
    """The recipe file's entries followed by one entry per `--sparse` flag (later entries win)."""
    registry = registry or default_registry()
    base = as_recipe(recipe, registry)
    if not flags:
        return base
    from edgeattn.graphs.sparse.flags import sparse_recipe

    extra = Recipe.parse(sparse_recipe(list(flags), registry), registry, source="--sparse")
    entries = list(base.entries)
    for entry in extra.entries:
        entries.append(dataclasses.replace(entry, index=len(entries) + 1))
    source = "--sparse" if not base.entries else f"{base.source} and --sparse"
    return Recipe(tuple(entries), base.default_op, source)


def rewrite(
    model: ModelLike,
    recipe: RecipeLike = None,
    target: Target = "ort",
    *,
    component: str | None = None,
    registry: Registry | None = None,
) -> tuple[ir.Model, RewriteReport]:
    """Rewrite every attention site of `model` into edgeattn ops and lower them for `target` (the
    pipeline with the rewrite step only); returns the model and what was done."""
    model, record = run_pipeline(model, PipelineOptions(recipe=recipe, target=target, component=component,
                                                        registry=registry))
    assert record.rewrite is not None
    return model, record.rewrite


def rewrite_file(
    source: str | os.PathLike,
    destination: str | os.PathLike,
    recipe: RecipeLike = None,
    target: Target = "ort",
    *,
    component: str | None = None,
    external_data: bool | None = None,
    registry: Registry | None = None,
) -> RewriteReport:
    """Read, rewrite and atomically write one ONNX file; the component defaults to the file's stem."""
    component = component if component is not None else os.path.splitext(os.path.basename(source))[0]
    model, report = rewrite(source, recipe, target, component=component, registry=registry)
    path = save(model, destination, external_data=external_data)
    return RewriteReport(report.rewritten, report.kept, report.refused, report.target, report.component,
                         report.seconds, str(path))



__all__ = [
    "AttachFunctionBodies", "CheckSparse", "ExposeStatistics", "FactorCausalMasks", "FoldTunables",
    "GraphPreconditionError",
    "LowerForOrt", "PipelineOptions", "PipelineRecord", "PruneTokens", "RewriteSites", "TensorRTForm",
    "build_pipeline", "combined_recipe", "rewrite", "rewrite_file", "run_pipeline",
]
