"""What `find_sites` and `rewrite` report, as plain data (and JSON for the CLI)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Site:
    """One attention site: found in a dialect, or already an edgeattn op (dialect "edgeattn")."""

    name: str
    dialect: str
    rule: str
    layer: int | None
    num_heads: int | None
    kv_num_heads: int | None
    head_size: int | None
    mask: str
    causal: int
    scale: float | None
    layout: str
    graph: str
    op: str = "Attention"
    nodes: tuple[str, ...] = ()
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["causal"] = bool(self.causal)
        data["causal_mode"] = self.causal
        data["nodes"] = list(self.nodes)
        return data


@dataclass(frozen=True)
class Unmatched:
    """A Softmax, or a fused attention node, that no rule turned into a site, with every rule's reason.
    `attention` is False for a Softmax whose output feeds no MatMul (a classifier head, say)."""

    node: str
    op_type: str
    graph: str
    reasons: tuple[str, ...]
    attention: bool = True

    def to_json(self) -> dict[str, Any]:
        return {"node": self.node, "op_type": self.op_type, "graph": self.graph, "reasons": list(self.reasons),
                "attention": self.attention}


@dataclass(frozen=True)
class EdgeAttnNode:
    name: str
    op: str
    attributes: dict[str, Any]
    rule: str | None
    overload: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class SiteReport:
    sites: tuple[Site, ...]
    edgeattn_nodes: tuple[EdgeAttnNode, ...]
    unmatched: tuple[Unmatched, ...]
    opset: int
    component: str | None = None

    @property
    def edgeattn_ops(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for node in self.edgeattn_nodes:
            counts[node.op] = counts.get(node.op, 0) + 1
        return counts

    def pending(self) -> tuple[Site, ...]:
        """Sites not yet rewritten."""
        return tuple(site for site in self.sites if site.dialect != "edgeattn")

    def to_json(self) -> dict[str, Any]:
        return {
            "component": self.component,
            "opset": self.opset,
            "sites": [site.to_json() for site in self.sites],
            "edgeattn_ops": self.edgeattn_ops,
            "edgeattn_nodes": [node.to_json() for node in self.edgeattn_nodes],
            "unmatched": [item.to_json() for item in self.unmatched],
        }


@dataclass(frozen=True)
class Rewritten:
    site: str
    layer: int | None
    dialect: str
    rule: str
    op: str
    node: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class RewriteReport:
    rewritten: tuple[Rewritten, ...]
    kept: tuple[str, ...]  # sites a recipe left as they were (op = "keep")
    refused: tuple[Unmatched, ...]
    target: str
    component: str | None
    seconds: float
    output: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "output": self.output,
            "target": self.target,
            "component": self.component,
            "seconds": round(self.seconds, 3),
            "rewritten": [item.to_json() for item in self.rewritten],
            "kept": list(self.kept),
            "refused": [item.to_json() for item in self.refused],
        }
