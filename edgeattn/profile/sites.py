"""Which attention site (or edgeattn op) a node that onnxruntime ran belongs to, named by its layer.

onnxruntime names the nodes of its profile after the graph it executes, not the file it was given:

- an edgeattn op is a model-local function, which onnxruntime inlines before running: every node of
  call number i of op `Op` is named ``_inlfunc_<Op>_<body node name>`` for the first call of `Op`,
  ``_inlfunc_<Op>_token_<n>_<body node name>`` for later ones, where n grows with every name the graph
  generates (so within one op, a larger n is a later call), and calls are inlined in the order of the
  graph's node list (measured with onnxruntime 1.31; tests/test_profile.py checks it on a rewritten
  decoder). The call node's own name does not survive, so a call is found by its rank;
- a node its optimizers fused keeps its name with the fusion appended: ``MatMul_3/MatMulScaleFusion/``;
- a site lowered to standard ops for onnxruntime (`--sparse block`, `window`) is a set of nodes tagged
  with the site (metadata `edgeattn.lowered`);
- a site still in an exporter's dialect (the standard `Attention` op, or MatMul-Softmax-MatMul) is the
  set of nodes `find_sites` reports for it.

Labels read "layer 3 SkipSoftmaxAttention", "layer 0 Attention (onnx-attention)", "layer 1
BlockSparseAttention (block-gather)", or "TokenSelect" for an op that belongs to no layer.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterable

INLINE_PREFIX = "_inlfunc_"
_TOKEN = re.compile(r"_token_(\d+)_")


class SiteMap:
    """Node names of one ONNX file -> site labels, and the function calls onnxruntime inlines."""

    def __init__(self, labels: dict[str, str], calls: dict[str, list[str]]) -> None:
        self.labels = labels  # graph node name -> label
        self.calls = calls  # function op type -> call node names, in the graph's node order

    @classmethod
    def from_onnx(cls, path: str | Path) -> SiteMap:
        """Read the sites of `path` (its main graph; a private copy is loaded, the file is only read)."""
        from edgeattn.graphs import find_sites, load
        from edgeattn.graphs.detect import LOWERED_TAG

        model = load(path)
        report = find_sites(model)
        labels: dict[str, str] = {}
        for site in report.sites:
            label = site_label(site.op, site.layer, None if site.dialect == "edgeattn" else site.dialect, site.name)
            for name in site.nodes:
                labels[name] = label
        others = [node for node in report.edgeattn_nodes if node.name not in labels]
        for node in others:
            same = sum(1 for other in others if other.op == node.op)
            labels[node.name] = node.op if same == 1 else f"{node.op} {node.name}"
        for graph in model.graphs():
            for node in graph:
                tag = node.metadata_props.get(LOWERED_TAG)
                if tag is not None and node.name:
                    labels[node.name] = _lowered_label(tag)
        calls: dict[str, list[str]] = {}
        functions = set(model.functions)
        for node in model.graph:
            if (node.domain, node.op_type, node.overload) in functions:
                calls.setdefault(node.op_type, []).append(node.name or "")
        return cls(labels, calls)

    def label_all(self, names: Iterable[str]) -> dict[str, str | None]:
        """The label of each profiled node name (None: outside every site)."""
        names = list(dict.fromkeys(names))
        ranks = self._inline_ranks(names)
        out: dict[str, str | None] = {}
        for name in names:
            inlined = self._inlined(name)
            if inlined is not None:
                op, token = inlined
                rank = ranks.get((op, token))
                call = self.calls[op][rank] if rank is not None else None
                out[name] = self.labels.get(call or "", f"{op} (inlined)") if call is not None else f"{op} (inlined)"
            else:
                out[name] = self._by_prefix(name)
        return out

    def _inlined(self, name: str) -> tuple[str, int] | None:
        """(op type, token) of an inlined node name; token -1 for the op's first call."""
        if not name.startswith(INLINE_PREFIX):
            return None
        rest = name[len(INLINE_PREFIX):]
        for op in sorted(self.calls, key=len, reverse=True):
            if not rest.startswith(op + "_"):
                continue
            found = _TOKEN.match(rest, len(op))
            return (op, int(found.group(1))) if found else (op, -1)
        return None

    def _inline_ranks(self, names: list[str]) -> dict[tuple[str, int], int]:
        """(op, token) -> call rank, when the calls seen per op match the graph's calls of that op."""
        seen: dict[str, set[int]] = {}
        for name in names:
            inlined = self._inlined(name)
            if inlined is not None:
                seen.setdefault(inlined[0], set()).add(inlined[1])
        ranks = {}
        for op, tokens in seen.items():
            if len(tokens) != len(self.calls.get(op, ())):  # a call ran no node, or more ran: no guess
                continue
            for rank, token in enumerate(sorted(tokens)):
                ranks[(op, token)] = rank
        return ranks

    def _by_prefix(self, name: str) -> str | None:
        """The label of `name`, or of the longest graph node name it extends by "/..." (a fused node)."""
        candidate = name
        while candidate:
            for form in (candidate, candidate.rstrip("/")):
                if form in self.labels:
                    return self.labels[form]
            cut = candidate.rstrip("/").rfind("/")
            if cut <= 0:
                return None
            candidate = candidate[:cut]
        return None


def site_label(op: str, layer: int | None, dialect: str | None, name: str) -> str:
    where = f"layer {layer}" if layer is not None else name
    return f"{where} {op}" + (f" ({dialect})" if dialect else "")


def _lowered_label(tag: str) -> str:
    try:
        info = json.loads(tag)
    except json.JSONDecodeError:
        return "lowered site"
    if not isinstance(info, dict):
        return "lowered site"
    layer = info.get("layer")
    layer = layer if isinstance(layer, int) and not isinstance(layer, bool) else None
    return site_label(str(info.get("op", "Attention")), layer, str(info.get("lowering", "lowered")),
                      str(info.get("site", "site")))


__all__ = ["INLINE_PREFIX", "SiteMap", "site_label"]
