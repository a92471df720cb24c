"""What the pruning pass did (for the CLI, the manifest and `inspect`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import onnx_ir as ir

from edgeattn.graphs.pruning.methods import PruneSpec
from edgeattn.ops.spec import DOMAIN

PRUNING_METADATA = "edgeattn.pruning"  # model metadata: the report of the pass, as JSON

POSITIONS = (
    "renumbered: the k kept tokens are spliced contiguously at the prompt's image-token positions and get "
    "consecutive position ids, like any other prompt tokens; kept_indices (ascending, raster order) says "
    "which patches they were"
)


@dataclass(frozen=True)
class PruneReport:
    spec: PruneSpec
    output: str  # the pruned graph output
    tokens: int  # candidate tokens before pruning (N)
    k: int
    layer: int | None  # attention layer scored at
    site: str | None
    dialect: str | None
    has_cls: bool
    prefix: int  # leading output tokens that are not candidates (a [CLS])
    inputs_added: tuple[str, ...]
    similarity: str | None  # what cosine similarities are computed on ("projected", "pre-projector")
    target: str = "ort"

    def to_json(self) -> dict[str, Any]:
        return {
            **self.spec.to_json(),
            "output": self.output,
            "tokens": self.tokens,
            "layer": self.layer,
            "site": self.site,
            "dialect": self.dialect,
            "has_cls": self.has_cls,
            "prefix": self.prefix,
            "inputs_added": list(self.inputs_added),
            "similarity": self.similarity,
            "target": self.target,
        }

    def manifest_entry(self) -> dict[str, Any]:
        """The manifest's `pruning` record."""
        return {
            "method": self.spec.method,
            "k": self.k,
            "tokens_before": self.tokens,
            "layer": self.layer,
            "dynamic_k": bool(self.spec.params["dynamic"]),
            "params": {n: v for n, v in self.spec.params.items() if v is not None},
            "inputs_added": list(self.inputs_added),
            "keeps_original_positions": False,
            "positions": POSITIONS,
        }


def pruning_nodes(model: ir.Model) -> list[dict[str, Any]]:
    """The pruning ops of a model with their budgets: what `inspect` shows. A budget read from a graph
    input is reported with the input's name and its default."""
    rows = []
    for node in model.graph:
        if node.domain != DOMAIN or node.op_type not in ("TokenScore", "TokenSelect"):
            continue
        attrs = {name: attr.value for name, attr in node.attributes.items() if not attr.is_ref()}
        row: dict[str, Any] = {"node": node.name, "op": node.op_type, "rule": node.metadata_props.get("edgeattn.rule")}
        if node.op_type == "TokenScore":
            row.update(source=attrs.get("source"), layer=node.metadata_props.get("edgeattn.layer"),
                       head_reduce=attrs.get("head_reduce"))
        else:
            budget = node.inputs[2] if len(node.inputs) > 2 else None
            row.update(mode=attrs.get("mode"), k=attrs.get("k"),
                       k_input=budget.name if budget is not None else None,
                       k_default=int(budget.const_value.numpy()) if budget is not None and budget.const_value else None)
        rows.append(row)
    return rows


def read_report(model: ir.Model) -> dict[str, Any] | None:
    text = model.metadata_props.get(PRUNING_METADATA)
    return json.loads(text) if text else None
