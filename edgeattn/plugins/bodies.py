"""Writing standard-op node lists: what function bodies and onnxruntime lowerings are built with.

`Nodes` records nodes in order and names every value it makes with one prefix, so the same code can
write a model-local function body (`function(...)`) or nodes that go straight into a graph (the
onnxruntime lowerings insert `nodes.nodes` before the op they replace). Reductions are written in the
form the opset takes (axes as an input from opset 18, as an attribute before it).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import onnx_ir as ir

INT64 = ir.DataType.INT64
FLOAT = ir.DataType.FLOAT
BOOL = ir.DataType.BOOL
MIN_OPSET = 15  # CastLike (opset 15) keeps constants in the type of the data they meet


class Nodes:
    """An ordered list of standard-op nodes whose values are named `<prefix>/<n>`."""

    def __init__(self, opset: int, prefix: str = "t") -> None:
        if opset < MIN_OPSET:
            raise ValueError(f"sparse attention bodies need ONNX opset >= {MIN_OPSET}, the model has {opset}")
        self.opset = opset
        self.prefix = prefix
        self.nodes: list[ir.Node] = []
        self.inputs: list[ir.Value] = []
        self._count = 0

    # -- plumbing --------------------------------------------------------------------------------
    def input(self, name: str, dtype: ir.DataType | None = None, shape: ir.Shape | None = None) -> ir.Value:
        value = ir.Value(name=name, type=ir.TensorType(dtype) if dtype is not None else None, shape=shape)
        self.inputs.append(value)
        return value

    def op(self, op_type: str, *inputs: ir.Value | None, outputs: int = 1, domain: str = "", **attributes: Any) -> Any:
        """One node; returns its output (or a tuple of them when `outputs` > 1)."""
        attrs = [value if isinstance(value, ir.Attr) else ir.convenience.convert_attribute(name, value)
                 for name, value in attributes.items()]
        node = ir.Node(domain, op_type, list(inputs), attributes=attrs, num_outputs=outputs,
                       name=f"{self.prefix}/{op_type}_{len(self.nodes)}")
        for out in node.outputs:
            self._count += 1
            out.name = f"{self.prefix}/{self._count}"
        self.nodes.append(node)
        return node.outputs[0] if outputs == 1 else tuple(node.outputs)

    def const(self, array: Any, dtype: Any = None) -> ir.Value:
        return self.op("Constant", value=ir.tensor(np.asarray(array, dtype=dtype)))

    def i64(self, *values: int) -> ir.Value:
        """A 1-D int64 constant."""
        return self.const(np.array(values, np.int64))

    def scalar(self, value: int | float | bool) -> ir.Value:
        """A 0-D constant: int64 for ints, float32 for floats, bool for bools."""
        kind = np.bool_ if isinstance(value, bool) else np.int64 if isinstance(value, int) else np.float32
        return self.const(np.array(value, kind))

    def like(self, value: ir.Value, reference: ir.Value) -> ir.Value:
        return self.op("CastLike", value, reference)

    def cast(self, value: ir.Value, dtype: ir.DataType) -> ir.Value:
        return self.op("Cast", value, to=int(dtype))

    # -- shapes ------------------------------------------------------------------------------------
    def dim(self, value: ir.Value, axis: int) -> ir.Value:
        """Dim `axis` of `value` as a 0-D int64."""
        end = {"end": axis + 1} if axis != -1 else {}
        return self.op("Squeeze", self.op("Shape", value, start=axis, **end), self.i64(0))

    def dims(self, value: ir.Value, start: int, end: int | None = None) -> ir.Value:
        """Dims [start, end) of `value` as a 1-D int64."""
        return self.op("Shape", value, start=start, **({"end": end} if end is not None else {}))

    def vec(self, *scalars: ir.Value | int) -> ir.Value:
        """A 1-D int64 from 0-D int64 values and ints (a shape built at run time)."""
        parts = [self.i64(s) if isinstance(s, int) else self.op("Unsqueeze", s, self.i64(0)) for s in scalars]
        return parts[0] if len(parts) == 1 else self.op("Concat", *parts, axis=0)

    def reshape(self, value: ir.Value, *dims: ir.Value | int) -> ir.Value:
        return self.op("Reshape", value, self.vec(*dims))

    def ceil_div(self, a: ir.Value, b: int | ir.Value) -> ir.Value:
        """ceil(a / b) for non-negative 0-D int64 a and positive b."""
        b_value = self.scalar(b) if isinstance(b, int) else b
        return self.op("Div", self.op("Add", a, self.op("Sub", b_value, self.scalar(1))), b_value)

    def arange(self, end: ir.Value | int, start: ir.Value | int = 0) -> ir.Value:
        as_value = lambda x: self.scalar(x) if isinstance(x, int) else x  # noqa: E731
        return self.op("Range", as_value(start), as_value(end), self.scalar(1))

    def reduce(self, kind: str, value: ir.Value, axes: Sequence[int], keepdims: bool = False) -> ir.Value:
        """ReduceSum/Max/Min/Mean over `axes` in the form the opset takes."""
        op_type = f"Reduce{kind}"
        if kind == "Sum" or self.opset >= 18:
            return self.op(op_type, value, self.i64(*axes), keepdims=int(keepdims))
        return self.op(op_type, value, axes=list(axes), keepdims=int(keepdims))

    def pad_axis(self, value: ir.Value, rank: int, axis: int, before: ir.Value | int, after: ir.Value | int,
                 fill: ir.Value | None = None) -> ir.Value:
        """Pad one axis of a tensor of known rank (0-D int64 amounts); `fill` defaults to 0."""
        zero = self.scalar(0)
        as_value = lambda x: self.scalar(x) if isinstance(x, int) else x  # noqa: E731
        starts = [as_value(before) if a == axis else zero for a in range(rank)]
        ends = [as_value(after) if a == axis else zero for a in range(rank)]
        pads = self.vec(*starts, *ends)
        return self.op("Pad", value, pads, fill) if fill is not None else self.op("Pad", value, pads)

    def where_inf(self, keep: ir.Value, value: ir.Value, sign: float = -1.0) -> ir.Value:
        """`value` where `keep`, else -inf (or +inf), in the type of `value`."""
        return self.op("Where", keep, value, self.like(self.scalar(sign * np.inf), value))

    # -- results -------------------------------------------------------------------------------------
    def graph(self, outputs: Sequence[ir.Value], name: str, inputs: Sequence[ir.Value] | None = None) -> ir.Graph:
        return ir.Graph(list(self.inputs if inputs is None else inputs), list(outputs), nodes=self.nodes,
                        opset_imports={"": self.opset}, name=name)

    def function(self, domain: str, name: str, overload: str, outputs: Sequence[ir.Value],
                 attributes: Sequence[ir.Attr], doc: str) -> ir.Function:
        graph = self.graph(outputs, name)
        function = ir.Function(domain, name, overload, graph=graph, attributes=list(attributes))
        function.doc_string = doc
        return function


_ATTR_TYPES = {"int": ir.AttributeType.INT, "float": ir.AttributeType.FLOAT, "string": ir.AttributeType.STRING,
               "ints": ir.AttributeType.INTS, "floats": ir.AttributeType.FLOATS}


def declared_attributes(specs: Sequence[Any]) -> list[ir.Attr]:
    """The attributes a function body declares (with their defaults), from the op's AttrSpecs."""
    return [ir.Attr(spec.name, _ATTR_TYPES[spec.kind], list(spec.default) if isinstance(spec.default, tuple)
                    else spec.default) for spec in specs]


def split_heads(b: Nodes, value: ir.Value, heads: int) -> ir.Value:
    """[B, S, H·d] -> [B, H, S, d]."""
    return b.op("Transpose", b.op("Reshape", value, b.i64(0, 0, heads, -1)), perm=[0, 2, 1, 3])


def merge_heads(b: Nodes, value: ir.Value) -> ir.Value:
    """[B, H, S, d] -> [B, S, H·d]."""
    return b.op("Reshape", b.op("Transpose", value, perm=[0, 2, 1, 3]), b.i64(0, 0, -1))


def attention_scale(b: Nodes, scale: float, query: ir.Value) -> ir.Value:
    """The softmax scale as a float32 0-D value: `scale`, or 1/sqrt(head size) when it is 0."""
    if scale > 0:
        return b.scalar(float(scale))
    head = b.cast(b.dim(query, -1), FLOAT)
    return b.op("Reciprocal", b.op("Sqrt", head))
