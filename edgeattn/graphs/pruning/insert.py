"""The pruning pass: score the visual tokens of a vision graph and keep k of them.

    report = insert_pruning(model, parse_prune("fastervlm:64"), "vision.onnx")   # prune(): pruning/api.py

The graph output that holds the tokens (`image_features`) is replaced by the kept tokens [B, k, D]
(same name) and a `kept_indices` [B, k] output (ascending candidate positions) is added. Scores come
from the chosen attention layer (`tap.py`), the prompt (`text_embeds` input), the projector
(`projector.py`) or a constant (`baselines.py`); TokenScore and TokenSelect nodes are appended and
lowered for the target. Extra inputs a method needs: `text_embeds` [B, T, D] (flashvlm),
`num_tokens` (dynamic=1; an int64 scalar whose default, an initializer, is k) and `patch_valid`
[B, N] bool (padding=1).
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import onnx_ir as ir

from edgeattn.errors import PruningError
from edgeattn.graphs.detect import LAYER_TAG
from edgeattn.graphs.io import MIN_IR_VERSION
from edgeattn.graphs.attach import Target
from edgeattn.graphs.pruning import baselines, debias
from edgeattn.graphs.pruning.emit import Emitter
from edgeattn.graphs.pruning.methods import PruneSpec
from edgeattn.graphs.pruning.projector import find_projector, perturbed_outputs
from edgeattn.graphs.pruning.report import PRUNING_METADATA, PruneReport
from edgeattn.graphs.pruning.tap import AttentionTap, attention_tap
from edgeattn.graphs.shapes import ensure_shapes
from edgeattn.graphs.values import dims
from edgeattn.ops.spec import DOMAIN, MIN_REWRITE_OPSET, standard_opset

TEXT_INPUT, BUDGET_INPUT, VALID_INPUT, INDICES_OUTPUT = "text_embeds", "num_tokens", "patch_valid", "kept_indices"


def insert_pruning(model: ir.Model, spec: PruneSpec, where: str, target: Target = "ort") -> PruneReport:
    """Score the visual tokens of `model` and keep k (TokenScore + TokenSelect nodes, no lowering: that is
    the last step of the pipeline). `target` is recorded in the report and the graph's metadata."""
    _check_model(model, where)
    ensure_shapes(model)
    graph = model.graph
    out, position = _tokens_output(graph, spec.params["output"], where)
    total, width = _token_dims(out, where)
    emit = Emitter(graph, f"prune:{spec.method}")
    tap = attention_tap(model, spec.params["layer"], out, emit, where) if spec.info.uses_attention else None
    layout = _layout(spec, tap, total, where)
    if not 1 <= spec.k <= layout.candidates:
        raise PruningError(f"k = {spec.k} is out of range: {where} has {layout.candidates} candidate tokens; "
                           f"choose k from 1 to {layout.candidates}")
    inputs: list[str] = []
    scores, keys, similarity = _scores(spec, emit, model, tap, out, layout, inputs, where)
    selected, kept = _select(spec, emit, scores, out, keys, layout, inputs)
    _replace_output(graph, out, position, selected, kept, spec, layout, width)
    model.opset_imports[DOMAIN] = 1
    model.ir_version = max(model.ir_version, MIN_IR_VERSION)
    report = PruneReport(spec, out_name(selected), layout.candidates, spec.k,
                         tap.site.layer if tap else None, tap.site.name if tap else None,
                         tap.site.dialect if tap else None, layout.has_cls, layout.prefix, tuple(inputs), similarity,
                         target)
    model.metadata_props[PRUNING_METADATA] = json.dumps(report.to_json())
    return report


def out_name(value: ir.Value) -> str:
    return value.name or "?"


# -- checks and layout ---------------------------------------------------------------------------
def _check_model(model: ir.Model, where: str) -> None:
    opset = standard_opset(model.opset_imports)
    if opset is None or opset < MIN_REWRITE_OPSET:
        raise PruningError(f"{where} imports ONNX opset {opset}; pruning needs opset {MIN_REWRITE_OPSET} or later")
    if any(node.domain == DOMAIN and node.op_type == "TokenSelect" for node in model.graph):
        raise PruningError(f"{where} is already pruned (it has an edgeattn.TokenSelect node); prune the original")


def _tokens_output(graph: ir.Graph, name: str | None, where: str) -> tuple[ir.Value, int]:
    outputs = list(graph.outputs)
    names = [v.name for v in outputs]
    if name is None:
        name = "image_features" if "image_features" in names else (names[0] if len(names) == 1 else None)
        if name is None:
            raise PruningError(f"{where} has outputs {names} and none is image_features; pass output=NAME")
    if name not in names:
        raise PruningError(f"{where} has no output {name!r}; its outputs are {names}")
    return outputs[names.index(name)], names.index(name)


def _token_dims(value: ir.Value, where: str) -> tuple[int, int | str | None]:
    shape = dims(value)
    if shape is None or len(shape) != 3 or not isinstance(shape[1], int):
        raise PruningError(f"output {value.name!r} of {where} has shape {shape}; pruning needs [B, tokens, D] "
                           "with a static token count")
    return shape[1], shape[2]


class _Layout:
    def __init__(self, has_cls: bool, skip: int, prefix: int, candidates: int) -> None:
        self.has_cls, self.skip, self.prefix, self.candidates = has_cls, skip, prefix, candidates


def _grid_plus_one(count: int | None) -> bool:
    return count is not None and count > 1 and math.isqrt(count - 1) ** 2 == count - 1


def _layout(spec: PruneSpec, tap: AttentionTap | None, total: int, where: str) -> _Layout:
    """Is token 0 a [CLS]? Which output tokens are candidates? (prefix = leading non-candidates)."""
    seq = tap.seq_len if tap is not None else None
    flag = spec.params["cls"]
    has_cls = _grid_plus_one(seq if seq is not None else total) if flag == "auto" else bool(flag)
    skip = 1 if has_cls else 0
    if spec.info.needs_cls and not has_cls:
        count = seq if seq is not None else total
        raise PruningError(f"{spec.method} scores tokens by the [CLS] attention row, but the encoder in {where} has no "
                           f"[CLS] token ({count} tokens form a grid); use mean-received, or cls=1 if token 0 is one")
    if seq is None:
        prefix = skip
    elif total == seq:
        prefix = skip
    elif total == seq - skip:
        prefix = 0
    else:
        raise PruningError(f"the output of {where} has {total} tokens but attention layer {tap.site.layer} has {seq}; "
                           "they must be the same tokens (or the same without [CLS])")
    return _Layout(has_cls, skip, prefix, total - prefix)


# -- scores --------------------------------------------------------------------------------------
def _scores(spec: PruneSpec, emit: Emitter, model: ir.Model, tap: AttentionTap | None, out: ir.Value,
            layout: _Layout, inputs: list[str], where: str) -> tuple[ir.Value, ir.Value | None, str | None]:
    """(scores [B, N], keys for similarity or None, what the similarities are computed on)."""
    params, graph = spec.params, model.graph
    weights, valid = _debias_inputs(spec, emit, graph, layout, inputs, where)
    if spec.info.score == "constant":
        return _constant_scores(spec, emit, out, layout), None, None
    if spec.info.score == "sensitivity":
        projector = find_projector(graph, params["projector"], out, where)
        if projector is None:
            raise PruningError(f"zeroth-order needs the projector M, but no node of {where} matches "
                               f"projector={params['projector']!r}; pass projector=GLOB (e.g. *layernorm* for an encoder's "
                               "final norm)")
        source = _candidate_rows(emit, projector.source, layout)
        plus, minus = perturbed_outputs(emit, projector, source, int(params["directions"]), float(params["step"]),
                                        int(params["seed"]))
        return _score_node(emit, [plus, minus], "sensitivity", step=float(params["step"])), None, "projected"
    operands = [*tap.inputs(), None][:2]  # (Q, K) or (probabilities, absent)
    attention = _score_node(emit, [*operands, None, weights, valid], spec.info.score if spec.info.score != "text"
                            else "cls", skip=layout.skip, query=0, head_reduce=params["head_reduce"],
                            **tap.attributes)
    _tag_layer(emit, tap)
    if spec.info.score != "text":
        return attention, None, "projected" if spec.info.select != "topk" else None
    text = _graph_input(graph, TEXT_INPUT, out.dtype or ir.DataType.FLOAT, ["batch", "text_sequence", dims(out)[2]])
    inputs.append(TEXT_INPUT)
    candidates = emit.slice_tokens(out, layout.prefix)
    fused = _score_node(emit, [candidates, text, attention], "text",
                        **{n: float(params[n]) for n in ("eta", "text_temperature", "relevance_temperature", "power",
                                                          "quantile", "damping")})
    projector = find_projector(graph, params["projector"], out, where)
    if projector is None:
        return fused, None, "projected"
    return fused, _candidate_rows(emit, projector.source, layout), "pre-projector"


def _candidate_rows(emit: Emitter, value: ir.Value, layout: _Layout) -> ir.Value:
    """`value` [B, T or N, C] restricted to the candidate tokens."""
    shape = dims(value)
    if layout.prefix and shape is not None and shape[1] == layout.candidates + layout.prefix:
        return emit.slice_tokens(value, layout.prefix)
    return value


def _score_node(emit: Emitter, inputs: list[ir.Value | None], source: str, **attributes: Any) -> ir.Value:
    while inputs and inputs[-1] is None:
        inputs.pop()
    node = emit.node("TokenScore", inputs, "TokenScore", domain=DOMAIN, source=source, **attributes)
    node.outputs[0].dtype = ir.DataType.FLOAT
    return node.outputs[0]


def _tag_layer(emit: Emitter, tap: AttentionTap) -> None:
    for node in emit.graph:
        if node.op_type == "TokenScore" and node.domain == DOMAIN and tap.site.layer is not None:
            node.metadata_props[LAYER_TAG] = str(tap.site.layer)


def _constant_scores(spec: PruneSpec, emit: Emitter, out: ir.Value, layout: _Layout) -> ir.Value:
    count = layout.candidates
    values = (baselines.random_scores(count, int(spec.params["seed"])) if spec.method == "random"
              else baselines.uniform_scores(count, spec.k))
    table = emit.initializer(f"prune/{spec.method}_scores", values[None, :])
    shape = emit.op("Concat", emit.batch_dim(out), emit.const(np.array([count], np.int64)), axis=0, purpose="scores_shape")
    return emit.op("Expand", table, shape, purpose="scores")


def _debias_inputs(spec: PruneSpec, emit: Emitter, graph: ir.Graph, layout: _Layout, inputs: list[str],
                   where: str) -> tuple[ir.Value | None, ir.Value | None]:
    params = spec.params
    if (params["debias"] is not None or params["padding"]) and not spec.info.uses_attention:
        raise PruningError(f"debias and padding modify attention scores; {spec.method} scores without attention")
    weights = None
    if params["debias"] is not None:
        weights = emit.initializer("prune/debias_weights", debias.load_weights(params["debias"], layout.candidates))
    valid = None
    if params["padding"]:
        valid = _graph_input(graph, VALID_INPUT, ir.DataType.BOOL, ["batch", layout.candidates])
        inputs.append(VALID_INPUT)
    return weights, valid


def _graph_input(graph: ir.Graph, name: str, dtype: ir.DataType, shape: list[Any]) -> ir.Value:
    if any(v.name == name for v in graph.inputs):
        raise PruningError(f"the graph already has an input named {name!r}")
    value = ir.val(name, dtype, ir.Shape(shape))
    graph.inputs.append(value)
    return value


# -- selection -----------------------------------------------------------------------------------
_SELECT_PARAMS = {"regions": ("regions", "alpha", "attention_scale"), "diversity": ("important_ratio", "dedup_step")}


def _select(spec: PruneSpec, emit: Emitter, scores: ir.Value, out: ir.Value, keys: ir.Value | None, layout: _Layout,
            inputs: list[str]) -> tuple[ir.Value, ir.Value]:
    budget = None
    if spec.params["dynamic"]:
        budget = ir.val(BUDGET_INPUT, ir.DataType.INT64, ir.Shape([]), const_value=ir.tensor(np.int64(spec.k),
                                                                                              name=BUDGET_INPUT))
        emit.graph.inputs.append(budget)
        emit.graph.register_initializer(budget)
        inputs.append(BUDGET_INPUT)
    mode = spec.info.select
    extra = {name: spec.params[name] for name in _SELECT_PARAMS.get(mode, ())}
    node_inputs = [scores, out, budget, keys]
    while node_inputs[-1] is None:
        node_inputs.pop()
    node = emit.node("TokenSelect", node_inputs, "TokenSelect", domain=DOMAIN, outputs=2, k=spec.k, mode=mode,
                     prefix=layout.prefix, keep_prefix=int(spec.params["keep_cls"]) if layout.prefix else 0, **extra)
    return node.outputs[0], node.outputs[1]


def _replace_output(graph: ir.Graph, out: ir.Value, position: int, selected: ir.Value, kept: ir.Value,
                    spec: PruneSpec, layout: _Layout, width: Any) -> None:
    name = out.name
    out.name = f"{name}_unpruned"
    selected.name, kept.name = name, INDICES_OUTPUT
    kept_cls = layout.prefix if spec.params["keep_cls"] else 0
    rows: Any = ("num_tokens" if not kept_cls else None) if spec.params["dynamic"] else spec.k + kept_cls
    batch = dims(out)[0]
    selected.dtype, selected.shape = out.dtype, ir.Shape([batch, rows, width])
    kept.dtype, kept.shape = ir.DataType.INT64, ir.Shape([batch, "num_tokens" if spec.params["dynamic"] else spec.k])
    graph.outputs[position] = selected
    graph.outputs.append(kept)
