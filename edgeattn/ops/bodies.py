"""Writing standard-op node lists: what function bodies and onnxruntime lowerings are built with.

`Nodes` records nodes in order and names every value it makes with one prefix, so the same code can
write a model-local function body (`function(...)`) or nodes that go straight into a graph (the
onnxruntime lowerings insert `nodes.nodes` before the op they replace). Reductions are written in the
form the opset takes (axes as an input from opset 18, as an attribute before it), and dims with
Shape(start, end) from opset 15 (Gather/Slice of the shape before it). A subgraph (`loop`) is recorded
by a nested `Nodes` with a longer prefix, so every value name in a function is unique; a loop body reads
outer values by name and never reads a function attribute directly (attribute references are resolved
into Constants in the outer scope first, with `ref_int` / `ref_float`).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import numpy as np
import onnx_ir as ir

INT64 = ir.DataType.INT64
FLOAT = ir.DataType.FLOAT
BOOL = ir.DataType.BOOL
CASTLIKE_OPSET = 15  # CastLike (opset 15) keeps constants in the type of the data they meet
_SHAPE_SLICE_OPSET = 15  # Shape takes start/end from opset 15
_AXES_AS_INPUT = 18  # ReduceMean/ReduceMax/ReduceMin/... take `axes` as an input from opset 18


class Nodes:
    """An ordered list of standard-op nodes whose values are named `<prefix>/<n>`.

    `min_opset` is the oldest opset the bodies written with this class build for (subclasses that use
    no CastLike may lower it, down to 13); `bodies` names them in the error for older opsets."""

    min_opset = CASTLIKE_OPSET
    bodies = "sparse attention bodies"

    def __init__(self, opset: int, prefix: str = "t") -> None:
        if opset < self.min_opset:
            raise ValueError(f"{self.bodies} need ONNX opset >= {self.min_opset}, the model has {opset}")
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

    def ref_int(self, attr_name: str) -> ir.Value:
        """A 0-D int64 Constant holding the function attribute `attr_name`."""
        return self.op("Constant", value_int=ir.RefAttr("value_int", attr_name, ir.AttributeType.INT))

    def ref_float(self, attr_name: str) -> ir.Value:
        """A 0-D float32 Constant holding the function attribute `attr_name`."""
        return self.op("Constant", value_float=ir.RefAttr("value_float", attr_name, ir.AttributeType.FLOAT))

    def scalar(self, value: int | float | bool) -> ir.Value:
        """A 0-D constant: int64 for ints, float32 for floats, bool for bools."""
        kind = np.bool_ if isinstance(value, bool) else np.int64 if isinstance(value, int) else np.float32
        return self.const(np.array(value, kind))

    def like(self, value: ir.Value, reference: ir.Value) -> ir.Value:
        """`value` in the type of `reference` (CastLike: opset 15)."""
        return self.op("CastLike", value, reference)

    def cast(self, value: ir.Value, dtype: ir.DataType) -> ir.Value:
        return self.op("Cast", value, to=int(dtype))

    # -- shapes ------------------------------------------------------------------------------------
    def dim(self, value: ir.Value, axis: int) -> ir.Value:
        """Dim `axis` of `value` as a 0-D int64."""
        if self.opset < _SHAPE_SLICE_OPSET:
            return self.op("Gather", self.op("Shape", value), self.scalar(axis), axis=0)
        end = {"end": axis + 1} if axis != -1 else {}
        return self.op("Squeeze", self.op("Shape", value, start=axis, **end), self.i64(0))

    def dims(self, value: ir.Value, start: int, end: int | None = None) -> ir.Value:
        """Dims [start, end) of `value` as a 1-D int64."""
        if self.opset < _SHAPE_SLICE_OPSET:
            stop = self.i64(end if end is not None else 1 << 62)
            return self.op("Slice", self.op("Shape", value), self.i64(start), stop, self.i64(0))
        return self.op("Shape", value, start=start, **({"end": end} if end is not None else {}))

    def vec(self, *scalars: ir.Value | int) -> ir.Value:
        """A 1-D int64 from 0-D int64 values and ints (a shape built at run time)."""
        parts = [self.i64(s) if isinstance(s, int) else self.op("Unsqueeze", s, self.i64(0)) for s in scalars]
        return parts[0] if len(parts) == 1 else self.op("Concat", *parts, axis=0)

    def reshape(self, value: ir.Value, *dims: ir.Value | int) -> ir.Value:
        return self.op("Reshape", value, self.vec(*dims))

    def unsqueeze(self, value: ir.Value, *axes: int) -> ir.Value:
        return self.op("Unsqueeze", value, self.i64(*axes))

    def squeeze(self, value: ir.Value, *axes: int) -> ir.Value:
        return self.op("Squeeze", value, self.i64(*axes))

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
        if kind == "Sum" or self.opset >= _AXES_AS_INPUT:
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

    # -- loops ---------------------------------------------------------------------------------------
    def loop(
        self,
        trip_count: ir.Value | None,
        carried: Sequence[ir.Value],
        step: Callable[[Nodes, ir.Value, list[ir.Value]], tuple[list[ir.Value], ir.Value | None]],
        condition: ir.Value | None = None,
        types: Sequence[tuple[ir.DataType, int]] = (),
    ) -> list[ir.Value]:
        """A Loop: at most `trip_count` iterations (None: no limit) while the condition holds (starts as
        `condition`, default true). `step(inner, iteration, carried)` records one iteration in `inner` (a
        recorder of this class with its own prefix) and returns the new carried values and the condition
        for the next iteration (None: unchanged). `types` gives (element type, rank) of each carried value,
        written on the body's inputs and outputs (the ONNX checker requires typed graph inputs and
        outputs). Returns the final carried values."""
        inner = type(self)(self.opset, f"{self.prefix}/loop{len(self.nodes)}")
        iteration = inner.input(f"{inner.prefix}/iteration", INT64, ir.Shape([]))
        cond_in = inner.input(f"{inner.prefix}/condition", BOOL, ir.Shape([]))
        carried_in = [inner.input(f"{inner.prefix}/carried{i}") for i in range(len(carried))]
        new_carried, cond_out = step(inner, iteration, carried_in)
        cond_out = inner.op("Identity", cond_in if cond_out is None else cond_out)
        outputs = [cond_out, *(inner.op("Identity", v) for v in new_carried)]
        cond_out.dtype, cond_out.shape = BOOL, ir.Shape([])
        for (dtype, rank), inside, outside in zip(types, carried_in, outputs[1:]):
            for value in (inside, outside):
                value.dtype, value.shape = dtype, ir.Shape([None] * rank)
        start = condition if condition is not None else self.scalar(True)
        result = self.op("Loop", trip_count, start, *carried, outputs=len(carried),
                         body=inner.graph(outputs, inner.prefix))
        return [result] if len(carried) == 1 else list(result)

    # -- results -------------------------------------------------------------------------------------
    def graph(self, outputs: Sequence[ir.Value], name: str, inputs: Sequence[ir.Value] | None = None) -> ir.Graph:
        return ir.Graph(list(self.inputs if inputs is None else inputs), list(outputs), nodes=self.nodes,
                        opset_imports={"": self.opset}, name=name)

    def function(self, domain: str, name: str, overload: str, outputs: Mapping[str, ir.Value],
                 attributes: Sequence[ir.Attr], doc: str) -> ir.Function:
        """The ir.Function with these outputs, renamed to their keys (an output this recorder did not
        make, such as an input, is copied by an Identity first)."""
        values = []
        for output_name, value in outputs.items():
            if value.producer() not in self.nodes:
                value = self.op("Identity", value)
            value.name = output_name
            values.append(value)
        function = ir.Function(domain, name, overload, graph=self.graph(values, name), attributes=list(attributes))
        function.doc_string = doc
        return function


_ATTR_TYPES = {"int": ir.AttributeType.INT, "float": ir.AttributeType.FLOAT, "string": ir.AttributeType.STRING,
               "ints": ir.AttributeType.INTS, "floats": ir.AttributeType.FLOATS}


def declared_attributes(specs: Sequence[Any]) -> list[ir.Attr]:
    """The attributes a function body declares (with their defaults), from the op's AttrSpecs."""
    return [ir.Attr(spec.name, _ATTR_TYPES[spec.kind], list(spec.default) if isinstance(spec.default, tuple)
                    else spec.default) for spec in specs]


def split_heads(b: Nodes, value: ir.Value, heads: int | ir.Value) -> ir.Value:
    """[B, S, H·d] -> [B, H, S, d]; H is an int or a 0-D int64 value (such as `ref_int`'s)."""
    shape = b.vec(0, 0, heads, -1) if isinstance(heads, ir.Value) else b.i64(0, 0, heads, -1)
    return b.op("Transpose", b.op("Reshape", value, shape), perm=[0, 2, 1, 3])


def merge_heads(b: Nodes, value: ir.Value) -> ir.Value:
    """[B, H, S, d] -> [B, S, H·d]."""
    return b.op("Reshape", b.op("Transpose", value, perm=[0, 2, 1, 3]), b.i64(0, 0, -1))


def attention_scale(b: Nodes, scale: float, query: ir.Value) -> ir.Value:
    """The softmax scale as a float32 0-D value: `scale`, or 1/sqrt(head size) when it is 0."""
    if scale > 0:
        return b.scalar(float(scale))
    head = b.cast(b.dim(query, -1), FLOAT)
    return b.op("Reciprocal", b.op("Sqrt", head))
