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
from edgeattn.graphs.lower import call_facts, lower
from edgeattn.graphs.sparse.ort_common import SharedValues, read_site
from edgeattn.graphs.sparse.ort_lowerings import OrtLowering, lower_block_select, lower_causal_dense, lower_window
from edgeattn.plugins.bodies import Nodes
from edgeattn.plugins.registry import Registry, default_registry



@dataclass(frozen=True)
class Lowered:
    node: str
    op: str
    lowering: str  # "causal-chunks", "block-gather", "window-gather", or "function" (the body stays)
    reason: str | None = None  # why the body stays

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def choose_lowering(node: ir.Node, attrs: dict[str, Any], opset: int) -> tuple[str, Any]:
    """("causal-chunks" | "block-gather" | "window-gather", site) or ("function", reason)."""
    if node.op_type == "SkipSoftmaxAttention":
        return "function", "onnxruntime has no tile-skipping kernel: the exact body computes every score"
    if node.op_type not in ("Attention", "BlockSparseAttention"):
        return "function", "no fast lowering for this op"
    if int(attrs.get("causal", 0)) not in (1, 2):
        return "function", "the fast lowerings need causal attention (causal = 1 or 2)"
    if int(attrs.get("softmax_precision", 0)) not in (0, 1):
        return "function", "softmax in another precision than float keeps the function body"
    site = read_site(node, attrs, opset)
    if isinstance(site, str):
        return "function", site
    if node.op_type == "Attention":
        return "causal-chunks", site
    if attrs["heads"]:
        return "function", "a layout on some heads only (heads) keeps the function body"
    if attrs["layout"] == "window":
        return "window-gather", site
    if attrs["layout"] != "select" or attrs["mode"] != "topk":
        return "function", "the gather lowering takes layout select in topk mode"
    if int(attrs["local_blocks"]) < 1 or int(attrs["rectify"]):
        return "function", "the gather lowering needs local_blocks >= 1 and rectify = 0"
    return "block-gather", site


def lower_for_ort(model: ir.Model, settings: OrtLowering | None = None,
                  registry: Registry | None = None) -> list[Lowered]:
    """Replace the edgeattn nodes of the main graph that a fast lowering takes; returns what happened
    to every edgeattn node. Function bodies are attached again for the nodes that stay."""
    settings = settings or OrtLowering()
    registry = registry or default_registry()
    opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 0))
    shared = SharedValues()
    report = []
    for node in [n for n in model.graph if n.domain == "edgeattn"]:
        spec = registry.find(node.domain, node.op_type)
        if spec is None or spec.kind != "attention":
            continue
        attrs = dict(call_facts(node, spec, opset).attributes)
        kind, site = choose_lowering(node, attrs, opset)
        if kind == "function":
            report.append(Lowered(node.name or "", node.op_type, kind, site))
            continue
        _replace(model, node, kind, site, shared, settings, attrs)
        report.append(Lowered(node.name or "", node.op_type, kind))
    lower(model, "ort", registry)
    return report


def _replace(model: ir.Model, node: ir.Node, kind: str, site: Any, shared: SharedValues, settings: OrtLowering,
             attrs: dict[str, Any]) -> None:
    b = Nodes(model.opset_imports[""], f"{node.name}/ort")
    if kind == "causal-chunks":
        out = lower_causal_dense(b, site, shared, settings)
    elif kind == "block-gather":
        out = lower_block_select(b, site, shared)
    else:
        out = lower_window(b, site, shared)
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
