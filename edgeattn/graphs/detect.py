"""Finding attention sites: every rule tried on every node, refusals kept as reasons.

`detect` matches without changing the model. A successful match becomes a `Site` (what `inspect`
shows) and a `Match` (what `rewrite` needs to apply it). Every Softmax that ends up in no site, and
every fused attention node no rule took, is reported with each rule's reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

import onnx_ir as ir
from onnxscript.rewriter import pattern as orp

from edgeattn.graphs.features import feature_usage
from edgeattn.graphs.layers import assign_layers
from edgeattn.graphs.reasons import NOT_ATTENTION, refusal_reasons
from edgeattn.graphs.report import EdgeAttnNode, Site, SiteReport, Unmatched
from edgeattn.graphs.rules import AttentionRule, SiteFacts, attention_rules
from edgeattn.graphs.rules.base import EDGEATTN
from edgeattn.graphs.prepare import prepare
from edgeattn.ops.spec import standard_opset

MS = "com.microsoft"
# Fused attention ops that are sites when a rule takes them, and reported as unmatched otherwise.
FUSED_ATTENTION = {
    ("", "Attention"),
    *((MS, op) for op in (
        "Attention", "MultiHeadAttention", "GroupQueryAttention", "PackedAttention", "PackedMultiHeadAttention",
        "DecoderMaskedMultiHeadAttention", "DecoderMaskedSelfAttention", "DecoderAttention", "SparseAttention",
        "LongformerAttention", "QAttention", "PagedAttention",
    )),
}
RULE_TAG = "edgeattn.rule"
SITE_TAG = "edgeattn.site"
LAYER_TAG = "edgeattn.layer"
DIALECT_TAG = "edgeattn.dialect"
# On the standard-op nodes an onnxruntime lowering wrote for a site (JSON: site, op, lowering,
# attributes): they are that site's implementation, not new sites.
LOWERED_TAG = "edgeattn.lowered"


@dataclass(frozen=True)
class Match:
    rule: AttentionRule
    rewrite_rule: orp.RewriteRule
    container: ir.Graph | ir.Function
    root: ir.Node
    facts: SiteFacts
    nodes: tuple[ir.Node, ...]


@dataclass(frozen=True)
class Detection:
    report: SiteReport
    matches: dict[str, Match]  # sites still in a dialect, by site name
    existing: dict[str, ir.Node]  # sites already edgeattn nodes, by site name


def containers(model: ir.Model) -> Iterator[ir.Graph | ir.Function]:
    """The main graph, its subgraphs, and model-local functions other than edgeattn's own bodies."""
    yield from model.graphs()
    for function in model.functions.values():
        if function.domain != EDGEATTN:
            yield function


def graph_name(container: ir.Graph | ir.Function, model: ir.Model) -> str:
    if container is model.graph:
        return "main"
    if isinstance(container, ir.Function):
        return f"function {container.domain}.{container.name}"
    return f"subgraph {container.name or '?'}"


def node_label(node: ir.Node, position: int) -> str:
    if node.name:
        return node.name
    first = node.outputs[0].name if node.outputs else None
    return f"{node.op_type}@{first}" if first else f"{node.op_type}#{position}"


def find_sites(model: ir.Model, component: str | None = None) -> SiteReport:
    """The attention sites of `model` (brought to the form the rules match first: `prepare`)."""
    prepare(model)
    return detect(model, component).report


def detect(model: ir.Model, component: str | None = None) -> Detection:
    from edgeattn.ops.registry import default_registry

    attention_ops = {op.name for op in default_registry() if op.kind == "attention"}
    rules = [(rule, rule.to_rule()) for rule in attention_rules()]
    found: list[tuple[int, Site, Match | ir.Node]] = []
    covered: set[ir.Node] = set()
    edgeattn_nodes: list[EdgeAttnNode] = []
    order = 0
    for container in containers(model):
        where = graph_name(container, model)
        for position, node in enumerate(container):
            order += 1
            if node.domain == EDGEATTN:
                edgeattn_nodes.append(_edgeattn_node(node, position))
                if node.op_type in attention_ops:  # pruning and selection ops are not attention sites
                    found.append((order, _existing_site(node, position, where), node))
                continue
            if LOWERED_TAG in node.metadata_props:
                continue
            match = _first_match(model, container, node, rules)
            if match is not None:
                covered.update(match.nodes)
                found.append((order, _site(match, where, position), match))
    found.sort(key=lambda item: item[0])
    sites = assign_layers([(site, _layer_texts(origin, site)) for _, site, origin in found])
    matches = {site.name: origin for site, (_, _, origin) in zip(sites, found) if isinstance(origin, Match)}
    existing = {site.name: origin for site, (_, _, origin) in zip(sites, found) if isinstance(origin, ir.Node)}
    unmatched = tuple(_unmatched(model, covered, rules))
    opset = standard_opset(model.opset_imports, 0)
    report = SiteReport(tuple(sites), tuple(edgeattn_nodes), unmatched, opset, component)
    return Detection(report, matches, existing)


def _first_match(model: ir.Model, container: Any, node: ir.Node, rules: list) -> Match | None:
    for rule, rewrite_rule in rules:
        if not rule.may_match(node):
            continue
        result = rewrite_rule.match(model, container, node)
        if result:
            facts = rule.plan(**result.bindings).facts
            return Match(rule, rewrite_rule, container, node, facts, tuple(dict.fromkeys(result.nodes)))
    return None


def _site(match: Match, where: str, position: int) -> Site:
    facts = match.facts
    return Site(
        name=node_label(facts.anchor, position),
        dialect=facts.dialect,
        rule=match.rule.name,
        layer=None,
        num_heads=facts.num_heads,
        kv_num_heads=facts.kv_num_heads,
        head_size=facts.head_size,
        mask=facts.mask,
        causal=facts.causal,
        scale=facts.scale,
        layout=facts.layout,
        graph=where,
        nodes=tuple(node_label(n, position) for n in match.nodes),
        details=dict(facts.details),
    )


def _existing_site(node: ir.Node, position: int, where: str) -> Site:
    attrs = node.attributes
    layer_text = node.metadata_props.get(LAYER_TAG)
    q_heads, kv_heads = _int_attr(attrs, "q_num_heads"), _int_attr(attrs, "kv_num_heads")
    query = node.inputs[0] if node.inputs else None
    last = query.shape[-1] if query is not None and query.shape is not None and len(query.shape) else None
    head_size = last if query is not None and len(query.shape or ()) == 4 else (
        last // q_heads if isinstance(last, int) and q_heads else None)
    mask = node.inputs[3] if len(node.inputs) > 3 else None
    return Site(
        name=node.metadata_props.get(SITE_TAG) or node_label(node, position),
        dialect="edgeattn",
        rule=node.metadata_props.get(RULE_TAG, ""),
        layer=int(layer_text) if layer_text and layer_text.isascii() and layer_text.isdigit() else None,
        num_heads=q_heads or None,
        kv_num_heads=kv_heads or None,
        head_size=head_size if isinstance(head_size, int) else None,
        mask="none" if mask is None else "bool" if mask.dtype == ir.DataType.BOOL else "additive",
        causal=_int_attr(attrs, "causal"),
        scale=_float_attr(attrs, "scale") or None,
        layout="bhsd" if query is not None and query.shape is not None and len(query.shape) == 4 else "bs(hd)",
        graph=where,
        op=node.op_type,
        nodes=(node_label(node, position),),
        details=_existing_details(node, position),
    )


def _existing_details(node: ir.Node, position: int) -> dict[str, Any]:
    """The node's label and source dialect, and the features it uses beyond the basic form (a KV cache,
    softcap, windows, ...), as a rule's site reports them."""
    from edgeattn.ops.registry import default_registry

    details: dict[str, Any] = {"node": node_label(node, position),
                               "source_dialect": node.metadata_props.get(DIALECT_TAG)}
    spec = default_registry().find(node.domain, node.op_type)
    used = feature_usage(node, spec).phrases() if spec is not None else []
    if used:
        details["features"] = ", ".join(used)
    return details


def _int_attr(attrs: Any, name: str) -> int:
    """An INT attribute's value; 0 when it is missing, a reference or of another type (a file edgeattn
    did not write may carry anything; inspect reports the node, `rewrite` refuses it when lowering)."""
    attr = attrs.get(name)
    if attr is None or attr.is_ref() or attr.type != ir.AttributeType.INT:
        return 0
    return int(attr.value)


def _float_attr(attrs: Any, name: str) -> float:
    attr = attrs.get(name)
    if attr is None or attr.is_ref() or attr.type != ir.AttributeType.FLOAT:
        return 0.0
    return float(attr.value)


def _edgeattn_node(node: ir.Node, position: int) -> EdgeAttnNode:
    attributes = {name: attr.value if not attr.is_ref() else f"@{attr.ref_attr_name}"
                  for name, attr in node.attributes.items()}
    attributes = {k: list(v) if isinstance(v, tuple) else v for k, v in attributes.items()}
    return EdgeAttnNode(node_label(node, position), node.op_type, attributes, node.metadata_props.get(RULE_TAG), node.overload)


def _layer_texts(origin: Match | ir.Node, site: Site) -> list[str]:
    """Where a layer number may be written: the site name, torch scope metadata, matched node names."""
    anchor = origin.facts.anchor if isinstance(origin, Match) else origin
    texts = [site.name]
    texts += [anchor.metadata_props.get(key, "") for key in ("pkg.torch.onnx.name_scopes", "namespace")]
    if isinstance(origin, Match):
        texts += [n.name or "" for n in origin.nodes]
    return texts


def _unmatched(model: ir.Model, covered: set[ir.Node], rules: list) -> Iterator[Unmatched]:
    for container in containers(model):
        where = graph_name(container, model)
        for position, node in enumerate(container):
            if node in covered or LOWERED_TAG in node.metadata_props:
                continue
            is_softmax = node.op_type == "Softmax" and node.domain in ("", "ai.onnx")
            if not is_softmax and (node.domain, node.op_type) not in FUSED_ATTENTION:
                continue
            reasons = refusal_reasons(model, container, node, rules, is_softmax)
            yield Unmatched(node_label(node, position), node.op_type, where, tuple(reasons), reasons != [NOT_ATTENTION])
