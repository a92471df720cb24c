"""Adding the pruning nodes to a graph: named, tagged, appended after every existing node.

Every node reads only values computed before it, so appending keeps the graph topologically sorted.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx_ir as ir

from edgeattn.graphs.detect import RULE_TAG
from edgeattn.graphs.values import dims

PREFIX = "prune"


class Emitter:
    def __init__(self, graph: ir.Graph, rule: str) -> None:
        self.graph = graph
        self.rule = rule
        self._count = 0

    def name(self, purpose: str) -> str:
        self._count += 1
        return f"{PREFIX}/{purpose}_{self._count}"

    def node(self, op_type: str, inputs: list[ir.Value | None], purpose: str, *, domain: str = "",
             outputs: int = 1, **attributes: Any) -> ir.Node:
        node = ir.node(op_type, inputs, attributes=attributes, domain=domain, num_outputs=outputs,
                       name=self.name(purpose))
        for index, value in enumerate(node.outputs):
            value.name = node.name if outputs == 1 else f"{node.name}:{index}"
        node.metadata_props[RULE_TAG] = self.rule
        self.graph.append(node)
        return node

    def op(self, op_type: str, *inputs: ir.Value | None, purpose: str | None = None, **attributes: Any) -> ir.Value:
        return self.node(op_type, list(inputs), purpose or op_type.lower(), **attributes).outputs[0]

    def const(self, array: Any, purpose: str = "const") -> ir.Value:
        return self.op("Constant", purpose=purpose, value=ir.tensor(np.asarray(array)))

    def initializer(self, name: str, array: np.ndarray) -> ir.Value:
        value = ir.Value(name=name, const_value=ir.tensor(array, name=name),
                         type=ir.TensorType(ir.DataType.from_numpy(array.dtype)), shape=ir.Shape(array.shape))
        self.graph.register_initializer(value)
        return value

    def adopt(self, nodes: list[ir.Node], purpose: str) -> None:
        """Append nodes built elsewhere (a rule's input builder), named and tagged like ours."""
        for node in nodes:
            node.name = self.name(purpose)
            for index, value in enumerate(node.outputs):
                if not value.name:
                    value.name = f"{node.name}:{index}"
            node.metadata_props[RULE_TAG] = self.rule
            self.graph.append(node)

    def batch_dim(self, value: ir.Value) -> ir.Value:
        """[1] int64: the first dimension of `value`."""
        shape = self.op("Shape", value, purpose="shape")
        return self.op("Slice", shape, self.const(np.array([0], np.int64)), self.const(np.array([1], np.int64)),
                       purpose="batch")

    def slice_tokens(self, value: ir.Value, start: int, purpose: str = "candidates") -> ir.Value:
        """value[:, start:]."""
        if start == 0:
            return value
        out = self.op("Slice", value, self.const(np.array([start], np.int64)),
                      self.const(np.array([1 << 62], np.int64)), self.const(np.array([1], np.int64)),
                      purpose=purpose)
        shape = dims(value)  # known here: later steps (zeroth-order's perturbations) need the static width
        if shape is not None and len(shape) >= 2:
            rows = shape[1] - start if isinstance(shape[1], int) else None
            out.dtype, out.shape = value.dtype, ir.Shape([shape[0], rows, *shape[2:]])
        return out
