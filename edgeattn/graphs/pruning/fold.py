"""Folding a run-time budget into the graph: `num_tokens` (input) -> TokenSelect's `k` (attribute).

A graph pruned with dynamic=1 serves any budget in onnxruntime; once the budget is chosen (or for
TensorRT, which needs static shapes) the input is removed and its value written into the nodes.
"""

from __future__ import annotations

import json

import numpy as np
import onnx_ir as ir

from edgeattn.errors import PruningError
from edgeattn.graphs.pruning.insert import BUDGET_INPUT, INDICES_OUTPUT
from edgeattn.graphs.pruning.report import PRUNING_METADATA
from edgeattn.ops.spec import DOMAIN


def fold_budget_input(model: ir.Model, k: int | None = None) -> int:
    """Replace the `num_tokens` input by the attribute k (default: the input's default value); returns k.
    No lowering: the pipeline attaches the bodies last (`fold_budget` in pruning/api.py runs it)."""
    graph = model.graph
    budget = next((v for v in graph.inputs if v.name == BUDGET_INPUT), None)
    if budget is None:
        raise PruningError(f"the graph has no {BUDGET_INPUT} input; its budget is already fixed")
    if k is None:
        if budget.const_value is None:
            raise PruningError(f"{BUDGET_INPUT} has no default value; give k")
        k = int(np.asarray(budget.const_value.numpy()).reshape(()))
    for node in graph:
        if node.domain == DOMAIN and node.op_type == "TokenSelect" and len(node.inputs) > 2 \
                and node.inputs[2] is budget:
            node.replace_input_with(2, None)
            while node.inputs and node.inputs[-1] is None:
                node.resize_inputs(len(node.inputs) - 1)
            node.attributes["k"] = ir.AttrInt64("k", int(k))
            _fix_rows(node, int(k))
    graph.inputs.remove(budget)
    graph.initializers.pop(BUDGET_INPUT, None)
    text = model.metadata_props.get(PRUNING_METADATA)
    if text:
        record = json.loads(text)
        record.update(k=int(k), params={**record["params"], "dynamic": 0})
        model.metadata_props[PRUNING_METADATA] = json.dumps(record)
    return int(k)


def _fix_rows(node: ir.Node, k: int) -> None:
    for value in node.outputs:
        if value.shape is not None and len(value.shape) >= 2 and not isinstance(value.shape[1], int):
            dims = list(value.shape)
            dims[1] = k if value.name == INDICES_OUTPUT or node.attributes.get_int("keep_prefix", 0) == 0 else None
            value.shape = ir.Shape(dims)
