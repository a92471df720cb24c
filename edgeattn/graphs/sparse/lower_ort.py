"""`lower_for_ort`: replace edgeattn nodes by the onnxruntime lowerings that compute less.

Runs on a model whose sites are edgeattn nodes (after `rewrite`). A node the fast lowerings take is
replaced by standard-op nodes (tagged with the site, the op and the lowering, so `inspect` can say
what each site runs); any other node keeps its function body, and the report says why.
SkipSoftmaxAttention always keeps its body: onnxruntime has no kernel that skips tiles, so the body
computes every score (exact, not faster).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

import onnx_ir as ir

from edgeattn.graphs.apply import remove_unused
from edgeattn.graphs.detect import LAYER_TAG, LOWERED_TAG, SITE_TAG
from edgeattn.graphs.attach import call_facts
from edgeattn.ops.ort import OrtLowering, Plan, SharedValues
from edgeattn.ops.spec import DOMAIN, OpSpec, standard_opset
from edgeattn.ops.bodies import Nodes
from edgeattn.ops.registry import Registry, default_registry



@dataclass(frozen=True)
class Lowered:
    node: str
    op: str
    lowering: str  # "causal-chunks", "block-gather", "window-gather", or "function" (the body stays)
    reason: str | None = None  # why the body stays

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def choose_lowering(node: ir.Node, spec: OpSpec, attrs: dict[str, Any], opset: int) -> Plan | str:
    """The op's plan for `node` (its `ort_lowering` hook), or the reason the node keeps its function body."""
    if spec.ort_lowering is None:
        return "no fast lowering for this op"
    return spec.ort_lowering(node, attrs, opset)


def lower_for_ort(model: ir.Model, settings: OrtLowering | None = None,
                  registry: Registry | None = None) -> list[Lowered]:
    """Replace the edgeattn nodes of the main graph that a fast lowering takes; returns what happened
    to every edgeattn node. The nodes that stay get their function bodies from the pipeline's last step
    (`AttachFunctionBodies`)."""
    settings = settings or OrtLowering()
    registry = registry or default_registry()
    opset = standard_opset(model.opset_imports, 0)
    shared = SharedValues()
    report = []
    for node in [n for n in model.graph if n.domain == DOMAIN]:
        spec = registry.find(node.domain, node.op_type)
        if spec is None or spec.kind != "attention":
            continue
        attrs = dict(call_facts(node, spec, opset).attributes)
        plan = choose_lowering(node, spec, attrs, opset)
        if isinstance(plan, str):
            report.append(Lowered(node.name or "", node.op_type, "function", plan))
            continue
        _replace(model, node, plan, shared, settings, attrs)
        report.append(Lowered(node.name or "", node.op_type, plan.name))
    return report


def _replace(model: ir.Model, node: ir.Node, plan: Plan, shared: SharedValues, settings: OrtLowering,
             attrs: dict[str, Any]) -> None:
    b = Nodes(standard_opset(model.opset_imports, 0), f"{node.name}/ort")
    out = plan.build(b, shared, settings)
    kind = plan.name
    layer = node.metadata_props.get(LAYER_TAG)
    tag = json.dumps({"site": node.metadata_props.get(SITE_TAG, node.name), "layer": int(layer) if layer else None,
                      "op": node.op_type, "lowering": kind,
                      "attributes": {k: list(v) if isinstance(v, tuple) else v for k, v in attrs.items()}})
    for new in _with_subgraph_nodes(b.nodes):
        new.metadata_props[LOWERED_TAG] = tag
    node.graph.insert_before(node, b.nodes)
    old = node.outputs[0]
    out.dtype, out.shape = old.dtype, old.shape
    inputs = [v for v in node.inputs if v is not None]
    was_output = old.is_graph_output()
    ir.convenience.replace_all_uses_with(old, out, replace_graph_outputs=True)
    if was_output:  # the graph output keeps its name
        name = old.name
        old.name = f"{name}_replaced"
        out.name = name
    node.graph.remove(node, safe=True)
    remove_unused(inputs)


def _with_subgraph_nodes(nodes: list[ir.Node]) -> list[ir.Node]:
    out = []
    for node in nodes:
        out.append(node)
        for attr in node.attributes.values():
            if attr.type == ir.AttributeType.GRAPH:
                out.extend(_with_subgraph_nodes(list(attr.value)))
    return out


def lowered_sites(model: ir.Model) -> list[dict[str, Any]]:
    """What each lowered site runs as, read back from the nodes' metadata (for `inspect`): one entry
    per site with its op, lowering, attributes and node count."""
    sites: dict[str, dict[str, Any]] = {}
    for graph in model.graphs():
        for node in graph:
            tag = node.metadata_props.get(LOWERED_TAG)
            if tag is None:
                continue
            info = json.loads(tag)
            entry = sites.setdefault(info["site"], {**info, "nodes": 0})
            entry["nodes"] += 1
    return list(sites.values())
