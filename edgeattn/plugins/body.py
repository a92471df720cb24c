"""A small recorder for the standard-op function bodies of edgeattn ops (onnx-ir nodes, unique names).

Bodies are written once for every opset from 13 on: the few ops whose signature changed (reductions
take their axes as an input from opset 18) go through helpers here. Loops (`loop`) record their body
graph with a nested recorder that shares the name counter, so every value name in a function is unique;
a loop body reads outer values by name and never reads a function attribute directly (attribute
references are resolved into Constants in the outer scope first).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import onnx_ir as ir

FLOAT = int(ir.DataType.FLOAT)
INT64 = int(ir.DataType.INT64)
BOOL = int(ir.DataType.BOOL)
DUPLICATE_SNAP = 1e-6  # cosine similarities this close to 1 count as duplicates (exactly 1)
_AXES_AS_INPUT = 18  # ReduceMean/ReduceMax/ReduceMin/... take `axes` as an input from opset 18


class Body:
    """Records nodes; `op` returns the output value(s) of the node it adds."""

    def __init__(self, opset: int, *, counter: list[int] | None = None, prefix: str = "t") -> None:
        self.opset = opset
        self.nodes: list[ir.Node] = []
        self.inputs: list[ir.Value] = []
        self._counter = counter if counter is not None else [0]
        self._prefix = prefix

    # -- plumbing ------------------------------------------------------------------------------
    def _name(self) -> str:
        self._counter[0] += 1
        return f"{self._prefix}{self._counter[0]}"

    def input(self, name: str) -> ir.Value:
        value = ir.Value(name=name)
        self.inputs.append(value)
        return value

    def op(self, op_type: str, *inputs: ir.Value | None, outputs: int = 1, **attributes: Any) -> Any:
        attrs = [
            value if isinstance(value, ir.Attr) else ir.convenience.convert_attribute(name, value)
            for name, value in attributes.items()
        ]
        node = ir.Node("", op_type, list(inputs), attributes=attrs, num_outputs=outputs, name=f"n{self._name()}")
        for value in node.outputs:
            value.name = self._name()
        self.nodes.append(node)
        return node.outputs[0] if outputs == 1 else tuple(node.outputs)

    def const(self, array: Any, dtype: Any = None) -> ir.Value:
        return self.op("Constant", value=ir.tensor(np.asarray(array, dtype=dtype)))

    def ints(self, *values: int) -> ir.Value:
        return self.const(np.array(values, np.int64))

    def ref_int(self, attr_name: str) -> ir.Value:
        """A scalar int64 Constant holding the node's attribute `attr_name`."""
        return self.op("Constant", value_int=ir.RefAttr("value_int", attr_name, ir.AttributeType.INT))

    def ref_float(self, attr_name: str) -> ir.Value:
        """A scalar float Constant holding the node's attribute `attr_name`."""
        return self.op("Constant", value_float=ir.RefAttr("value_float", attr_name, ir.AttributeType.FLOAT))

    # -- common pieces -------------------------------------------------------------------------
    def to_float(self, value: ir.Value) -> ir.Value:
        return self.op("Cast", value, to=FLOAT)

    def reduce(self, kind: str, value: ir.Value, axes: Sequence[int], keepdims: int = 0) -> ir.Value:
        """ReduceSum/ReduceMean/ReduceMax/ReduceMin over constant axes, in the form this opset takes."""
        op_type = f"Reduce{kind}"
        if op_type == "ReduceSum" or self.opset >= _AXES_AS_INPUT:
            return self.op(op_type, value, self.ints(*axes), keepdims=keepdims)
        return self.op(op_type, value, axes=list(axes), keepdims=keepdims)

    def unsqueeze(self, value: ir.Value, *axes: int) -> ir.Value:
        return self.op("Unsqueeze", value, self.ints(*axes))

    def squeeze(self, value: ir.Value, *axes: int) -> ir.Value:
        return self.op("Squeeze", value, self.ints(*axes))

    def dim(self, value: ir.Value, axis: int) -> ir.Value:
        """Dimension `axis` of `value` as an int64 scalar."""
        return self.op("Gather", self.op("Shape", value), self.const(np.int64(axis)), axis=0)

    def vector(self, scalar: ir.Value) -> ir.Value:
        return self.op("Reshape", scalar, self.ints(1))

    def minmax(self, value: ir.Value, axis: int = -1) -> ir.Value:
        """(x - min) / max(max - min, 1e-12) along `axis` (all-equal rows become zeros)."""
        low = self.reduce("Min", value, [axis], keepdims=1)
        high = self.reduce("Max", value, [axis], keepdims=1)
        span = self.op("Max", self.op("Sub", high, low), self.const(np.float32(1e-12)))
        return self.op("Div", self.op("Sub", value, low), span)

    def l2_normalize(self, value: ir.Value) -> ir.Value:
        """x / max(||x||, 1e-12) over the last axis (torch.nn.functional.normalize)."""
        norm = self.op("Sqrt", self.reduce("Sum", self.op("Mul", value, value), [-1], keepdims=1))
        return self.op("Div", value, self.op("Max", norm, self.const(np.float32(1e-12))))

    def cosine(self, keys: ir.Value, other: ir.Value | None = None) -> ir.Value:
        """Cosine similarities [B, N, M] between rows of keys [B, N, C] and other [B, M, C] (default: keys).
        Similarities within DUPLICATE_SNAP of 1 are exactly 1, so duplicated tokens tie exactly (the float
        noise of a normalised dot product would otherwise order them differently in every runtime)."""
        left = self.l2_normalize(keys)
        right = left if other is None else self.l2_normalize(other)
        cos = self.op("MatMul", left, self.op("Transpose", right, perm=[0, 2, 1]))
        one = self.const(np.float32(1))
        return self.op("Where", self.op("Greater", cos, self.const(np.float32(1 - DUPLICATE_SNAP))), one, cos)

    def positions(self, length: ir.Value) -> ir.Value:
        """[0, 1, ..., length - 1] as int64."""
        return self.op("Range", self.const(np.int64(0)), length, self.const(np.int64(1)))

    def stable_order(self, scores: ir.Value, count: ir.Value, largest: int = 1) -> tuple[ir.Value, ir.Value]:
        """TopK along the last axis: values and indices, ties broken by the lower index (the ONNX rule)."""
        return self.op("TopK", scores, self.vector(count), axis=-1, largest=largest, sorted=1, outputs=2)

    def ascending(self, indices: ir.Value) -> ir.Value:
        """int64 indices [B, k] sorted ascending (raster order)."""
        count = self.dim(indices, -1)
        values, _ = self.stable_order(indices, count, largest=0)
        return values

    def gather_rows(self, data: ir.Value, indices: ir.Value) -> ir.Value:
        """data [B, N, D] at indices [B, k] -> [B, k, D]."""
        expanded = self.op("Expand", self.unsqueeze(indices, -1), self._rows_shape(data, indices))
        return self.op("GatherElements", data, expanded, axis=1)

    def _rows_shape(self, data: ir.Value, indices: ir.Value) -> ir.Value:
        index_shape = self.op("Shape", indices)
        width = self.op("Slice", self.op("Shape", data), self.ints(-1), self.ints(1 << 62), self.ints(0))
        return self.op("Concat", index_shape, width, axis=0)

    # -- loops ---------------------------------------------------------------------------------
    def loop(
        self,
        trip_count: ir.Value | None,
        carried: Sequence[ir.Value],
        step: Callable[[Body, ir.Value, list[ir.Value]], tuple[list[ir.Value], ir.Value | None]],
        condition: ir.Value | None = None,
        types: Sequence[tuple[ir.DataType, int]] = (),
    ) -> list[ir.Value]:
        """A Loop: at most `trip_count` iterations (None: no limit) while the condition holds (starts as
        `condition`, default true). `step(body, iteration, carried)` records one iteration in `body` and
        returns the new carried values and the condition for the next iteration (None: unchanged).
        `types` gives (element type, rank) of each carried value, written on the body's inputs and
        outputs (the ONNX checker requires typed graph inputs and outputs). Returns the final carried values."""
        inner = Body(self.opset, counter=self._counter, prefix="l")
        iteration = inner.input(self._name())
        cond_in = inner.input(self._name())
        carried_in = [inner.input(self._name()) for _ in carried]
        iteration.dtype, iteration.shape = ir.DataType.INT64, ir.Shape([])
        cond_in.dtype, cond_in.shape = ir.DataType.BOOL, ir.Shape([])
        new_carried, cond_out = step(inner, iteration, carried_in)
        cond_out = inner.op("Identity", cond_in if cond_out is None else cond_out)
        outputs = [cond_out, *(inner.op("Identity", v) for v in new_carried)]
        cond_out.dtype, cond_out.shape = ir.DataType.BOOL, ir.Shape([])
        for (dtype, rank), inside, outside in zip(types, carried_in, outputs[1:]):
            for value in (inside, outside):
                value.dtype, value.shape = dtype, ir.Shape([None] * rank)
        graph = ir.Graph(inner.inputs, outputs, nodes=inner.nodes, name=self._name())
        start = condition if condition is not None else self.const(np.bool_(True))
        count = len(carried)
        result = self.op("Loop", trip_count, start, *carried, outputs=count, body=graph)
        return [result] if count == 1 else list(result)

    def finish(
        self, domain: str, name: str, overload: str, outputs: Sequence[tuple[ir.Value, str]], attributes: Sequence[Any]
    ) -> ir.Function:
        """The ir.Function with these outputs (renamed) and the op's attributes with their defaults."""
        values = []
        for value, output_name in outputs:
            if value.producer() is None or value in self.inputs:
                value = self.op("Identity", value)
            value.name = output_name
            values.append(value)
        graph = ir.Graph(self.inputs, values, nodes=self.nodes, opset_imports={"": self.opset}, name=name)
        attrs = [ir.convenience.convert_attribute(a.name, list(a.default) if isinstance(a.default, tuple) else a.default)
                 for a in attributes]
        return ir.Function(domain, name, overload, graph=graph, attributes=attrs)
