"""Applying one match: the rule's replacement goes in, the matched nodes go out, and the nodes the site
alone used (scale computations, transposes, head repetition) are removed. Nothing else changes."""

from __future__ import annotations

from typing import Iterable

import onnx_ir as ir

from edgeattn.errors import GraphError
from edgeattn.graphs.detect import DIALECT_TAG, LAYER_TAG, RULE_TAG, SITE_TAG, Match
from edgeattn.graphs.report import Site
from edgeattn.graphs.rules.base import EDGEATTN

# Exporter metadata that says where a node came from; carried over to the edgeattn node.
_SCOPE_KEYS = ("pkg.torch.onnx.name_scopes", "pkg.torch.onnx.class_hierarchy", "namespace")


def apply_match(model: ir.Model, match: Match, site: Site) -> ir.Node:
    """Rewrite one site; returns the new edgeattn node."""
    upstream = [value for node in match.nodes for value in node.inputs if value is not None]
    delta = match.rewrite_rule.try_rewrite(model, match.container, match.root)
    if delta is None:
        raise GraphError(f"site {site.name} matched when the model was inspected but not when rewritten; "
                         "report this with the model file")
    ir.convenience.replace_nodes_and_values(
        match.container, match.root, delta.match.nodes, delta.new_nodes, delta.match.outputs, delta.new_outputs
    )
    op_node = _label(delta.new_nodes, match, site)
    remove_unused(upstream)
    return op_node


def _label(nodes: Iterable[ir.Node], match: Match, site: Site) -> ir.Node:
    """Deterministic names from the site, and metadata naming the rule (which `inspect` shows)."""
    op_node = None
    for index, node in enumerate(nodes):
        if node.domain == EDGEATTN:
            op_node = node
            node.name = f"{site.name}/edgeattn.{node.op_type}"
            node.metadata_props[SITE_TAG] = site.name
            node.metadata_props[DIALECT_TAG] = site.dialect
            if site.layer is not None:
                node.metadata_props[LAYER_TAG] = str(site.layer)
            for key in _SCOPE_KEYS:
                if key in match.facts.anchor.metadata_props:
                    node.metadata_props[key] = match.facts.anchor.metadata_props[key]
        else:
            node.name = f"{site.name}/edgeattn.{node.op_type}_{index}"
        node.metadata_props[RULE_TAG] = match.rule.name
        if node is op_node:
            _drop_unread_outputs(node)
        for position, value in enumerate(node.outputs):
            if not value.name and (position == 0 or node is not op_node):
                value.name = f"{node.name}:{position}"
    if op_node is None:
        raise GraphError(f"rule {match.rule.name} wrote no edgeattn node for site {site.name}; this is a bug")
    return op_node


def _drop_unread_outputs(node: ir.Node) -> None:
    """Outputs of the op node after Y that nothing reads become absent (an empty name), and trailing
    absent ones are dropped: the node computes only what the site's outputs were read for."""
    for value in node.outputs[1:]:
        if not value.uses() and not value.is_graph_output():
            value.name = ""
    count = len(node.outputs)
    while count > 1 and not node.outputs[count - 1].name:
        count -= 1
    if count < len(node.outputs):
        node.resize_outputs(count)


def remove_unused(values: Iterable[ir.Value]) -> int:
    """Remove the producers of `values` (and theirs, recursively) that nothing reads any more, and
    initializers that lost their last reader. Returns the number of nodes removed."""
    work, removed = list(values), 0
    while work:
        value = work.pop()
        if value.uses() or value.is_graph_output():
            continue
        node = value.producer()
        if node is None:
            _drop_initializer(value)
            continue
        if any(out.uses() or out.is_graph_output() for out in node.outputs) or node.graph is None:
            continue
        work.extend(v for v in node.inputs if v is not None)
        node.graph.remove(node, safe=True)
        removed += 1
    return removed


def _drop_initializer(value: ir.Value) -> None:
    graph = value.graph
    if graph is None or not value.is_initializer() or value.is_graph_input() or value.name is None:
        return
    graph.initializers.pop(value.name, None)
