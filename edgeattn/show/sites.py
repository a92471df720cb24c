"""The block-sparse attention sites of a decoder graph, and the graph values that hold their Q and K.

A site of `export --sparse block:...` is in one of two forms:

- the edgeattn.BlockSparseAttention node itself (function-body lowering, TensorRT form, or a node the fast
  lowering leaves to its body, e.g. with `heads`): its inputs are Q, K, V, mask, block_mask, keep, threshold;
- its onnxruntime lowering (`edgeattn.graphs.sparse.lower_ort`): standard-op nodes tagged with the site, its
  layer and its resolved attributes (`LOWERED_TAG`). With a dense decode step (`dense_decode` = 1, the
  default) the lowering holds an If whose one-row branch is a plain `Attention(Q, K, V, mask)` on the site's
  own inputs: the only Attention node of the site whose Q and K come from outside it. That node names Q and K.

Every other site (dense edgeattn.Attention, SkipSoftmaxAttention, an untouched attention) is reported by
layer with its op, so a refusal can say what the layer runs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping

import onnx_ir as ir

from edgeattn.graphs.detect import LAYER_TAG, LOWERED_TAG
from edgeattn.ops.registry import default_registry
from edgeattn.ops.spec import DOMAIN

BLOCK_SPARSE = "BlockSparseAttention"
# BlockSparseAttention's input positions (edgeattn.ops.block_sparse_attention.spec.INPUTS).
_Q, _K, _BLOCK_MASK, _KEEP, _THRESHOLD = 0, 1, 4, 5, 6


@dataclass(frozen=True)
class Site:
    """One attention site of the decoder, as far as `show --layer` needs it."""

    layer: int
    name: str
    op: str  # BlockSparseAttention, Attention, SkipSoftmaxAttention ...
    form: str  # "node" (the edgeattn node is in the graph) or the onnxruntime lowering's name
    attributes: Mapping[str, Any] = field(default_factory=dict)  # resolved op attributes
    query: ir.Value | None = None
    key: ir.Value | None = None
    block_mask: ir.Value | None = None
    keep: ir.Value | None = None
    threshold: ir.Value | None = None

    @property
    def block_sparse(self) -> bool:
        return self.op == BLOCK_SPARSE


def attention_sites(model: ir.Model) -> dict[int, Site]:
    """The edgeattn sites of the main graph with a layer number, by layer (the numbering of `inspect`)."""
    sites: dict[int, Site] = {}
    for node in model.graph:
        if node.domain == DOMAIN and LAYER_TAG in node.metadata_props:
            site = _node_site(node)
            if site is not None:
                sites.setdefault(site.layer, site)
    lowered: dict[str, list[ir.Node]] = {}
    for node in model.graph:
        tag = _lowered_tag(node)
        if tag is not None and isinstance(tag.get("layer"), int):
            lowered.setdefault(str(tag.get("site")), []).append(node)
    for name, nodes in lowered.items():
        site = _lowered_site(name, nodes)
        sites.setdefault(site.layer, site)
    return dict(sorted(sites.items()))


def _node_site(node: ir.Node) -> Site | None:
    spec = default_registry().find(node.domain, node.op_type)
    try:
        layer = int(node.metadata_props[LAYER_TAG])
    except ValueError:
        return None
    if spec is None or spec.kind != "attention":
        return None
    declared = {a.name for a in spec.attributes}
    given = {name: attr.value for name, attr in node.attributes.items() if name in declared and not attr.is_ref()}
    attributes = spec.resolve(given)
    if node.op_type != BLOCK_SPARSE:
        return Site(layer, node.name or "?", node.op_type, "node", attributes)

    def at(index: int) -> ir.Value | None:
        return node.inputs[index] if index < len(node.inputs) else None

    return Site(layer, node.name or "?", BLOCK_SPARSE, "node", attributes, at(_Q), at(_K), at(_BLOCK_MASK),
                at(_KEEP), at(_THRESHOLD))


def _lowered_tag(node: ir.Node) -> dict[str, Any] | None:
    text = node.metadata_props.get(LOWERED_TAG)
    if not text:
        return None
    try:
        tag = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        return None
    return tag if isinstance(tag, dict) else None


def _lowered_site(name: str, nodes: list[ir.Node]) -> Site:
    """A lowered site: its attributes from the tag, its Q and K from the one-row branch's Attention."""
    tag = _lowered_tag(nodes[0]) or {}
    op = str(tag.get("op", "?"))
    spec = default_registry().find(DOMAIN, op)
    raw = tag.get("attributes") if isinstance(tag.get("attributes"), dict) else {}
    attributes = spec.resolve({k: v for k, v in raw.items() if k in {a.name for a in spec.attributes}}) if spec else raw
    query, key = _outer_query_key(nodes) if op == BLOCK_SPARSE else (None, None)
    return Site(int(tag["layer"]), name, op, str(tag.get("lowering", "?")), attributes, query, key)


def _all_nodes(nodes: list[ir.Node]) -> Iterator[ir.Node]:
    """`nodes` and every node of their subgraphs (If branches), depth first."""
    for node in nodes:
        yield node
        for attr in node.attributes.values():
            if attr.type == ir.AttributeType.GRAPH:
                yield from _all_nodes(list(attr.value))
            elif attr.type == ir.AttributeType.GRAPHS:
                for graph in attr.value:
                    yield from _all_nodes(list(graph))


def _outer_query_key(nodes: list[ir.Node]) -> tuple[ir.Value | None, ir.Value | None]:
    """(Q, K) of a lowered site: the inputs of its standard Attention node that reads both from outside the
    site (the dense decode branch), or (None, None) when the lowering has none."""
    every = list(_all_nodes(nodes))
    inside = {id(value) for node in every for value in node.outputs}
    for node in every:
        if node.domain == "" and node.op_type == "Attention" and len(node.inputs) >= 2:
            query, key = node.inputs[0], node.inputs[1]
            if query is not None and key is not None and id(query) not in inside and id(key) not in inside:
                return query, key
    return None, None
