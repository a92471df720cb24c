"""Helpers for the pruning tests: one edgeattn node in a graph, lowered and run in onnxruntime."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import onnx_ir as ir

from edgeattn.graphs.attach import attach_bodies
from edgeattn.ops.registry import default_registry

_TYPES = {np.dtype(np.float32): ir.DataType.FLOAT, np.dtype(np.int64): ir.DataType.INT64,
          np.dtype(np.bool_): ir.DataType.BOOL, np.dtype(np.float16): ir.DataType.FLOAT16}


def single_node_model(op: str, inputs: Sequence[tuple[str, np.ndarray | None]], attributes: Mapping[str, Any],
                      outputs: Sequence[str], opset: int = 23, symbolic: bool = True) -> ir.Model:
    """A model whose graph is one edgeattn `op` node; None inputs are left absent."""
    values: list[ir.Value | None] = []
    graph_inputs = []
    for name, array in inputs:
        if array is None:
            values.append(None)
            continue
        dims = [f"{name}_{i}" if symbolic else d for i, d in enumerate(array.shape)]
        value = ir.val(name, _TYPES[array.dtype], ir.Shape(dims))
        graph_inputs.append(value)
        values.append(value)
    while values and values[-1] is None:
        values.pop()
    attrs = [ir.convenience.convert_attribute(k, v) for k, v in attributes.items()]
    node = ir.Node("edgeattn", op, values, attributes=attrs, num_outputs=len(outputs), name=op)
    float_type = next((v.dtype for n, v in zip([n for n, a in inputs if a is not None], graph_inputs)
                       if n in ("features", "X")), ir.DataType.FLOAT)
    for value, name in zip(node.outputs, outputs):
        value.name = name
        value.dtype = ir.DataType.INT64 if name == "kept_indices" else (
            ir.DataType.FLOAT if name == "scores" else float_type)
        value.shape = ir.Shape([None] * (3 if name == "selected" else 2))
    graph = ir.Graph(graph_inputs, list(node.outputs), nodes=[node], opset_imports={"": opset, "edgeattn": 1},
                     name=f"one_{op}")
    model = ir.Model(graph, ir_version=10)
    attach_bodies(model, "ort", default_registry())
    return model


def run_node(op: str, inputs: Sequence[tuple[str, np.ndarray | None]], attributes: Mapping[str, Any],
             outputs: Sequence[str], opset: int = 23) -> list[np.ndarray]:
    import onnxruntime as ort

    model = single_node_model(op, inputs, attributes, outputs, opset)
    proto = ir.serde.serialize_model(model)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    feeds = {name: array for name, array in inputs if array is not None}
    return session.run(list(outputs), feeds)
