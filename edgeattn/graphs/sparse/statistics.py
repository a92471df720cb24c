"""Statistics outputs of sparse ops as graph outputs (skip ratio, density), for calibration and
benchmarks. A node that reports statistics keeps its function body, which computes them exactly."""

from __future__ import annotations

import onnx_ir as ir

from edgeattn.graphs.detect import LAYER_TAG, SITE_TAG
from edgeattn.ops.registry import Registry
from edgeattn.ops.spec import DOMAIN


def expose_statistics(model: ir.Model, registry: Registry) -> list[str]:
    """Give every sparse node of the main graph its statistics output, named
    `statistics.<layer or site>.<name>`, as a graph output; returns the output names."""
    graph = model.graph
    names = []
    for node in list(graph):
        spec = registry.find(node.domain, node.op_type) if node.domain == DOMAIN else None
        if spec is None or spec.statistics_output is None or len(node.outputs) > 1:
            continue
        stat = spec.statistics_output
        replacement = ir.Node(node.domain, node.op_type, list(node.inputs), attributes=list(node.attributes.values()),
                              overload=node.overload, num_outputs=len(spec.outputs), name=node.name,
                              metadata_props=dict(node.metadata_props))
        old = node.outputs[0]
        new = replacement.outputs[0]
        new.name, new.dtype, new.shape = old.name, old.dtype, old.shape
        old.name = f"{old.name}_old"
        graph.insert_before(node, [replacement])
        ir.convenience.replace_all_uses_with(old, new, replace_graph_outputs=True)
        graph.remove(node, safe=True)
        label = replacement.metadata_props.get(LAYER_TAG) or replacement.metadata_props.get(SITE_TAG, node.name)
        extra = replacement.outputs[1]
        extra.name = f"statistics.{label}.{stat}"
        extra.dtype, extra.shape = ir.DataType.FLOAT, ir.Shape([])
        graph.outputs.append(extra)
        names.append(extra.name)
    return names
