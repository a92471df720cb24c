"""The standard-op function body of edgeattn.Attention (what onnxruntime inlines and TensorRT falls back to).

A body is specialised on what a function attribute reference cannot express: the layout, the kind of
mask, the causal mode, whether heads are grouped, whether the softmax changes precision. For
onnxruntime each combination is one overload of `edgeattn.Attention`; TensorRT looks local functions up
by name only, so its form has one generic body (`Variant.generic`) that reads every choice from the
node's attributes at run time. Scalars (scale, head counts, softmax precision) always come from the
node's attributes by reference, so layers that differ only in them share a body.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx_ir as ir

from edgeattn.plugins.attention.spec import ATTRIBUTES, NAME
from edgeattn.plugins.spec import DOMAIN, CallFacts, Target

BOOL = int(ir.DataType.BOOL)
INT64 = int(ir.DataType.INT64)
FLOAT = int(ir.DataType.FLOAT)
_CAST_LIKE_OPSET = 15  # CastLike appears in opset 15; below it constants are cast to a known type


@dataclass(frozen=True)
class Variant:
    """The structure of one function body."""

    opset: int
    rank: int  # 3 or 4
    mask: str  # "none", "bool" or "additive"
    mask_cast: bool  # an additive mask of another type than Q is cast to Q's type
    causal: int | None  # 0, 1, 2, or None: read the `causal` attribute at run time
    gqa: str  # "none", "attr" (group = q_num_heads / kv_num_heads) or "shape" (from Q and K shapes)
    scale_from_head: str  # "no" (scale attribute > 0), "yes" (always 1/sqrt(d)), "runtime" (if scale == 0)
    softmax_cast: bool  # cast the scores to the softmax_precision attribute and back
    dtype: int | None  # Q's element type; needed below opset 15 for typed constants

    @property
    def guarded(self) -> bool:
        """Rows can be fully masked (then zeroed) only with a mask or a lower-right causal bias."""
        return self.mask != "none" or self.causal not in (0, 1)

    @property
    def key(self) -> str:
        parts = [
            f"r{self.rank}",
            f"m{self.mask}{'c' if self.mask_cast else ''}",
            f"c{'x' if self.causal is None else self.causal}",
            f"g{self.gqa}",
            f"s{self.scale_from_head}",
        ]
        if self.softmax_cast:
            parts.append("sm")
        if self.dtype is not None:
            parts.append(f"t{self.dtype}")
        return "_".join(parts)

    @staticmethod
    def generic(opset: int, dtype: int | None) -> Variant:
        """The one body of the TensorRT form: 4-D, additive mask of Q's type, every choice at run time."""
        return Variant(opset, 4, "additive", False, None, "shape", "runtime", True, _typed(opset, dtype))


def variant_of(call: CallFacts) -> Variant:
    """The body a node needs, from its resolved attributes and what is known of its inputs."""
    attrs, inputs = call.attributes, call.inputs
    query = inputs[0]
    dtype = _typed(call.opset, query.dtype)
    if len(inputs) > 3 and inputs[3].present:
        mask_dtype = inputs[3].dtype
        if mask_dtype is None:
            raise ValueError("the element type of the mask is unknown")
        mask = "bool" if mask_dtype == BOOL else "additive"
        mask_cast = mask == "additive" and mask_dtype != query.dtype
    else:
        mask, mask_cast = "none", False
    q_heads, kv_heads = int(attrs["q_num_heads"]), int(attrs["kv_num_heads"])
    if q_heads > 0 and kv_heads > 0:
        gqa = "none" if q_heads == kv_heads else "attr"
    else:
        gqa = "none" if query.rank == 3 else "shape"
    precision = int(attrs["softmax_precision"])
    softmax_cast = precision != 0 and precision != query.dtype
    scale_from_head = "no" if float(attrs["scale"]) > 0 else "yes"
    if query.rank not in (3, 4):
        raise ValueError(f"Q has rank {query.rank}; edgeattn.Attention takes 3-D or 4-D inputs")
    if query.rank == 3 and q_heads <= 0:
        raise ValueError("3-D Q needs q_num_heads > 0 to split its heads")
    return Variant(call.opset, query.rank, mask, mask_cast, int(attrs["causal"]), gqa, scale_from_head, softmax_cast, dtype)


def _typed(opset: int, dtype: int | None) -> int | None:
    if opset >= _CAST_LIKE_OPSET:
        return None
    if dtype is None:
        raise ValueError(f"opset {opset} has no CastLike, and the element type of Q is unknown")
    return dtype


def function_key(call: CallFacts, target: Target) -> str:
    """The overload name of the body a node needs ("" for TensorRT's single generic body)."""
    return "" if target == "trt" else variant_of(call).key


def build_function(call: CallFacts, target: Target, overload: str) -> ir.Function:
    query_dtype = call.inputs[0].dtype
    variant = Variant.generic(call.opset, query_dtype) if target == "trt" else variant_of(call)
    return build_body(variant, overload)


def build_body(variant: Variant, overload: str) -> ir.Function:
    body = _Body(variant)
    query, key, value = body.input("Q"), body.input("K"), body.input("V")
    mask = body.input("mask") if variant.mask != "none" else None
    if variant.rank == 3:
        query = body.split_heads(query, "q_num_heads")
        key = body.split_heads(key, "kv_num_heads")
        value = body.split_heads(value, "kv_num_heads")
    if variant.gqa != "none":
        group = body.group_size(query, key)
        key, value = body.repeat_heads(key, group), body.repeat_heads(value, group)
    scores = body.op("MatMul", query, body.op("Transpose", key, perm=[0, 1, 3, 2]))
    scores = body.op("Mul", scores, body.like(body.scale(query), scores))
    scores = body.apply_mask(scores, mask)
    scores = body.apply_causal(scores)
    probs = body.softmax(scores, value)
    out = body.op("MatMul", probs, value)
    if variant.rank == 3:
        out = body.merge_heads(out)
    return body.finish(out, overload)


class _Body:
    """Records the nodes of one function body; every value gets a unique name."""

    def __init__(self, variant: Variant) -> None:
        self.variant = variant
        self.nodes: list[ir.Node] = []
        self.inputs: list[ir.Value] = []
        self._count = 0

    # -- plumbing ------------------------------------------------------------------------------
    def input(self, name: str) -> ir.Value:
        value = ir.Value(name=name)
        self.inputs.append(value)
        return value

    def op(self, op_type: str, *inputs: ir.Value | None, **attributes: Any) -> ir.Value:
        attrs = [
            value if isinstance(value, ir.Attr) else ir.convenience.convert_attribute(name, value)
            for name, value in attributes.items()
        ]
        node = ir.Node("", op_type, list(inputs), attributes=attrs, num_outputs=1, name=f"n{len(self.nodes)}")
        self._count += 1
        node.outputs[0].name = f"t{self._count}"
        self.nodes.append(node)
        return node.outputs[0]

    def const(self, array: np.ndarray | float | int) -> ir.Value:
        return self.op("Constant", value=ir.tensor(np.asarray(array)))

    def ref(self, attr_name: str) -> ir.Value:
        """A scalar Constant whose value is the node's attribute `attr_name`."""
        if attr_name == "scale":
            return self.op("Constant", value_float=ir.RefAttr("value_float", attr_name, ir.AttributeType.FLOAT))
        return self.op("Constant", value_int=ir.RefAttr("value_int", attr_name, ir.AttributeType.INT))

    def like(self, value: ir.Value, reference: ir.Value) -> ir.Value:
        """`value` cast to the element type of `reference` (which has Q's type below opset 15)."""
        if self.variant.dtype is None:
            return self.op("CastLike", value, reference)
        return self.op("Cast", value, to=self.variant.dtype)

    def dim(self, value: ir.Value, axis: int) -> ir.Value:
        return self.op("Gather", self.op("Shape", value), self.const(np.int64(axis)), axis=0)

    def shape_slice(self, shape: ir.Value, start: int, end: int) -> ir.Value:
        return self.op("Slice", shape, self.const(np.array([start], np.int64)), self.const(np.array([end], np.int64)))

    def vector(self, scalar: ir.Value) -> ir.Value:
        return self.op("Reshape", scalar, self.const(np.array([1], np.int64)))

    def finish(self, output: ir.Value, overload: str) -> ir.Function:
        output.name = "Y"
        graph = ir.Graph(self.inputs, [output], nodes=self.nodes, opset_imports={"": self.variant.opset}, name=NAME)
        attributes = [ir.convenience.convert_attribute(a.name, a.default) for a in ATTRIBUTES]
        function = ir.Function(DOMAIN, NAME, overload, graph=graph, attributes=attributes)
        function.doc_string = f"edgeattn.Attention body {self.variant.key}"
        return function

    # -- attention pieces ----------------------------------------------------------------------
    def split_heads(self, value: ir.Value, heads_attr: str) -> ir.Value:
        """[B, S, H·d] -> [B, H, S, d] with H from the node's attribute."""
        heads = self.vector(self.ref(heads_attr))
        zeros = self.const(np.array([0, 0], np.int64))
        shape = self.op("Concat", zeros, heads, self.const(np.array([-1], np.int64)), axis=0)
        return self.op("Transpose", self.op("Reshape", value, shape), perm=[0, 2, 1, 3])

    def merge_heads(self, value: ir.Value) -> ir.Value:
        """[B, H, S, dv] -> [B, S, H·dv]."""
        moved = self.op("Transpose", value, perm=[0, 2, 1, 3])
        return self.op("Reshape", moved, self.const(np.array([0, 0, -1], np.int64)))

    def group_size(self, query: ir.Value, key: ir.Value) -> ir.Value:
        if self.variant.gqa == "attr":
            return self.vector(self.op("Div", self.ref("q_num_heads"), self.ref("kv_num_heads")))
        return self.vector(self.op("Div", self.dim(query, 1), self.dim(key, 1)))

    def repeat_heads(self, value: ir.Value, group: ir.Value) -> ir.Value:
        """[B, Hkv, S, d] -> [B, Hkv·g, S, d], each head repeated g times in place (h0 h0 h1 h1 ...)."""
        shape = self.op("Shape", value)
        leading, trailing = self.shape_slice(shape, 0, 2), self.shape_slice(shape, 2, 4)
        expanded = self.op(
            "Expand",
            self.op("Unsqueeze", value, self.const(np.array([2], np.int64))),
            self.op("Concat", leading, group, trailing, axis=0),
        )
        batch = self.shape_slice(shape, 0, 1)
        merged = self.op("Concat", batch, self.const(np.array([-1], np.int64)), trailing, axis=0)
        return self.op("Reshape", expanded, merged)

    def scale(self, query: ir.Value) -> ir.Value:
        mode = self.variant.scale_from_head
        if mode == "no":
            return self.ref("scale")
        head = self.op("Cast", self.dim(query, -1), to=FLOAT)
        inverse_sqrt = self.op("Reciprocal", self.op("Sqrt", head))
        if mode == "yes":
            return inverse_sqrt
        given = self.ref("scale")
        return self.op("Where", self.op("Greater", given, self.const(np.float32(0))), given, inverse_sqrt)

    def apply_mask(self, scores: ir.Value, mask: ir.Value | None) -> ir.Value:
        if mask is None:
            return scores
        if self.variant.mask == "bool":
            return self.op("Where", mask, scores, self.like(self.const(np.float32(-np.inf)), scores))
        if self.variant.mask_cast:
            mask = self.like(mask, scores)
        return self.op("Add", scores, mask)

    def apply_causal(self, scores: ir.Value) -> ir.Value:
        causal = self.variant.causal
        if causal == 0:
            return scores
        q_len, kv_len = self.dim(scores, -2), self.dim(scores, -1)
        zero, one = self.const(np.int64(0)), self.const(np.int64(1))
        rows = self.op("Unsqueeze", self.op("Range", zero, q_len, one), self.const(np.array([1], np.int64)))
        cols = self.op("Range", zero, kv_len, one)
        lower_right = self.op("Sub", kv_len, q_len)
        if causal == 1:
            blocked = self.op("Greater", cols, rows)
        elif causal == 2:
            blocked = self.op("Greater", cols, self.op("Add", rows, lower_right))
        else:
            mode = self.ref("causal")
            offset = self.op("Where", self.op("Equal", mode, self.const(np.int64(2))), lower_right, zero)
            beyond = self.op("Greater", cols, self.op("Add", rows, offset))
            blocked = self.op("And", beyond, self.op("Greater", mode, zero))
        return self.op("Where", blocked, self.like(self.const(np.float32(-np.inf)), scores), scores)

    def softmax(self, scores: ir.Value, value: ir.Value) -> ir.Value:
        if self.variant.softmax_cast:
            precision = ir.RefAttr("to", "softmax_precision", ir.AttributeType.INT)
            scores_cast = self.op("Cast", scores, to=precision)
            probs = self.like(self.op("Softmax", scores_cast, axis=-1), value)
        else:
            probs = self.op("Softmax", scores, axis=-1)
        if not self.variant.guarded:
            return probs
        zero = self.like(self.const(np.float32(0)), probs)
        return self.op("Where", self.op("IsNaN", probs), zero, probs)
