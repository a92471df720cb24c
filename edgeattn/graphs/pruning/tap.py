"""Where the attention score comes from: the chosen layer's site, in whatever dialect it was found.

- A site in standard ops (eager, SDPA decomposition, legacy): its Softmax output is tapped — the
  probabilities are already computed, TokenScore only slices them ([B·H, S, S] is reshaped to
  [B, H, S, S] with the batch of the features).
- A fused site (ONNX `Attention`, `com.microsoft` attention) or an `edgeattn.Attention` node: its Q
  and K (built by the site's rule, e.g. the packed projection of com.microsoft.Attention) feed
  TokenScore, which recomputes the one [CLS] row (cheap) or the full softmax (mean received).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import onnx_ir as ir

from edgeattn.errors import PruningError
from edgeattn.graphs.detect import Detection, Match, detect
from edgeattn.graphs.pruning.emit import Emitter
from edgeattn.graphs.report import Site
from edgeattn.graphs.values import dims
from edgeattn.ops.attention.spec import FEATURE_ATTRIBUTES, FEATURE_INPUTS, SITE_INPUTS
from edgeattn.ops.registry import default_registry


@dataclass
class AttentionTap:
    site: Site
    probs: ir.Value | None = None  # [B, H, S, S]
    query: ir.Value | None = None
    key: ir.Value | None = None
    attributes: dict[str, Any] = field(default_factory=dict)  # scale, q_num_heads, kv_num_heads
    seq_len: int | None = None  # S, when static

    def inputs(self) -> list[ir.Value | None]:
        return [self.probs] if self.probs is not None else [self.query, self.key]


def choose_site(detection: Detection, layer: int | None, where: str) -> Site:
    """The site of `layer` (default: the last layer); PruningError when there is none."""
    sites = [s for s in detection.report.sites if s.graph == "main" and s.layer is not None and _is_attention(s)]
    if not sites:
        raise PruningError(f"no attention site was found in {where}; attention-based pruning needs the encoder's "
                           "attention (`edgeattn inspect` lists what was seen); use random or uniform")
    layers = sorted({s.layer for s in sites})
    wanted = layers[-1] if layer is None else (layers[layer] if -len(layers) <= layer < 0 else layer)
    if wanted not in layers:
        raise PruningError(f"layer {layer} is out of range: {where} has attention layers "
                           f"{layers[0]}-{layers[-1]} ({len(layers)} sites); pass layer=N within them or a negative index")
    chosen = [s for s in sites if s.layer == wanted]
    if len(chosen) != 1:
        raise PruningError(f"layer {wanted} of {where} has {len(chosen)} attention sites; pruning needs exactly one")
    return chosen[0]


def _is_attention(site: Site) -> bool:
    """Dialect sites, and edgeattn nodes of kind "attention" (detection also lists other edgeattn ops)."""
    if site.dialect != "edgeattn":
        return True
    op = default_registry().find("edgeattn", site.op)
    return op is not None and op.kind == "attention"


def attention_tap(model: ir.Model, layer: int | None, batch_of: ir.Value, emit: Emitter, where: str) -> AttentionTap:
    detection = detect(model)
    site = choose_site(detection, layer, where)
    if site.name in detection.existing:
        return _edgeattn_tap(site, detection.existing[site.name])
    match = detection.matches[site.name]
    if match.facts.anchor.op_type == "Softmax":
        return _softmax_tap(site, match, batch_of, emit)
    return _fused_tap(model, site, match, emit)


def _softmax_tap(site: Site, match: Match, batch_of: ir.Value, emit: Emitter) -> AttentionTap:
    probs = match.facts.anchor.outputs[0]
    shape = dims(probs)
    # S from either axis of the square probabilities (a version-converted graph may know only one).
    seq = next((d for d in (shape or [])[-1:-3:-1] if isinstance(d, int)), None)
    if shape is not None and len(shape) == 3:  # heads folded into the batch: [B·H, S, S] -> [B, H, S, S]
        tail = emit.op("Slice", emit.op("Shape", probs, purpose="shape"), emit.const(np.array([1], np.int64)),
                       emit.const(np.array([3], np.int64)), purpose="seq")
        target = emit.op("Concat", emit.batch_dim(batch_of), emit.const(np.array([-1], np.int64)), tail, axis=0,
                         purpose="heads_shape")
        probs = emit.op("Reshape", probs, target, purpose="split_heads")
    elif shape is not None and len(shape) != 4:
        raise PruningError(f"the attention probabilities of site {site.name} have rank {len(shape)}, not 3 or 4")
    return AttentionTap(site, probs=probs, seq_len=seq)


def _fused_tap(model: ir.Model, site: Site, match: Match, emit: Emitter) -> AttentionTap:
    result = match.rewrite_rule.match(model, match.container, match.root)
    if not result:
        raise PruningError(f"site {site.name} matched when found but not when tapped; report this with the model")
    plan = match.rule.plan(**result.bindings)
    tape = _tape()
    inputs = plan.build_inputs(tape)
    _refuse_features(site, plan.attributes, inputs)
    query, key = inputs[:2]
    emit.adopt(list(tape.nodes), "qk")
    attributes = {"scale": float(plan.attributes["scale"])}
    if plan.rank == 3:
        attributes["q_num_heads"] = int(plan.attributes["q_num_heads"])
        attributes["kv_num_heads"] = int(plan.attributes["kv_num_heads"])
    return AttentionTap(site, query=query, key=key, attributes=attributes, seq_len=_seq_length(query, key, plan.rank))


def _edgeattn_tap(site: Site, node: ir.Node) -> AttentionTap:
    given = {name: attr.value for name, attr in node.attributes.items() if not attr.is_ref()}
    _refuse_features(site, given, list(node.inputs))
    query, key = node.inputs[0], node.inputs[1]
    rank = len(query.shape) if query is not None and query.shape is not None else 4
    attributes = {"scale": node.attributes.get_float("scale", 0.0)}
    if rank == 3:
        attributes["q_num_heads"] = node.attributes.get_int("q_num_heads", 0)
        attributes["kv_num_heads"] = node.attributes.get_int("kv_num_heads", 0)
    return AttentionTap(site, query=query, key=key, attributes=attributes, seq_len=_seq_length(query, key, rank))


def _refuse_features(site: Site, attributes: Mapping[str, Any], inputs: Sequence[ir.Value | None]) -> None:
    """TokenScore recomputes the attention of the site from Q, K and the scale: a site whose probabilities
    also depend on softcap, windows, a KV cache inside the op or padding lengths cannot be tapped that way
    (extra outputs, such as qk_matmul_output, change nothing)."""
    used = [f"{attr.name} = {_shown(attributes[attr.name])}" for attr in FEATURE_ATTRIBUTES
            if attr.name != "qk_matmul_output_mode" and attributes.get(attr.name, attr.default) != attr.default]
    offset = len(SITE_INPUTS)
    used += [io.name for index, io in enumerate(FEATURE_INPUTS, offset)
             if index < len(inputs) and inputs[index] is not None]
    if used:
        raise PruningError(f"the attention of site {site.name} uses {', '.join(used)}, which TokenScore does not "
                           "recompute from Q and K; tap another layer (layer=N) or use a method that needs no "
                           "attention")


def _shown(value: Any) -> str:
    return f"{value:g}" if isinstance(value, (int, float)) else repr(value)


def _seq_length(query: ir.Value | None, key: ir.Value | None, rank: int) -> int | None:
    """S from K, else from Q (an encoder's self-attention has as many queries as keys)."""
    for value in (key, query):
        shape = dims(value)
        if shape is not None and len(shape) == rank:
            seq = shape[2] if rank == 4 else shape[1]
            if isinstance(seq, int):
                return seq
    return None


def _tape() -> Any:
    from onnxscript._internal.tape_builder import TapeBuilder

    return TapeBuilder()
