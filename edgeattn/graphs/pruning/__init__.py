"""Visual-token pruning as a graph pass: TokenScore + TokenSelect inserted into a vision-encoder graph.

    from edgeattn.graphs.pruning import parse_prune, prune, prune_file

    model, report = prune("vision.onnx", parse_prune("fastervlm:64"))
    prune_file("vision.onnx", "vision_pruned.onnx", "holov:64")
"""

from __future__ import annotations

from edgeattn.graphs.pruning.api import fold_budget, prune, prune_file
from edgeattn.graphs.pruning.methods import METHODS, PruneSpec, describe_methods, make_spec, parse_prune
from edgeattn.graphs.pruning.report import POSITIONS, PruneReport, pruning_nodes, read_report

__all__ = [
    "METHODS",
    "POSITIONS",
    "PruneReport",
    "PruneSpec",
    "describe_methods",
    "fold_budget",
    "make_spec",
    "parse_prune",
    "prune",
    "prune_file",
    "pruning_nodes",
    "read_report",
]
