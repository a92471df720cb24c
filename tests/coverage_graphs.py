"""Attention graphs as other projects' exporters write them, for tests/test_rewrite_coverage*.py.

Built with onnx.helper: GPT-2's sliced causal triangle (uint8 buffer, -10000 fill) with a KV cache,
Trilu and Range/Greater causal masks, a CastLike reading the scores (Phi-2), tf2onnx's Einsum BERT
attention, masks of unknown shape, and models that import the standard opset as "ai.onnx".
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

F32 = TensorProto.FLOAT
I64 = TensorProto.INT64
HEADS, HEAD = 2, 4
FINFO_MIN = float(np.finfo(np.float32).min)


class Builder:
    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.count = 0

    def node(self, op: str, inputs: list[str], outputs: int = 1, **attrs: Any) -> Any:
        self.count += 1
        outs = [f"{op.lower()}_{self.count}_{i}" for i in range(outputs)]
        self.nodes.append(helper.make_node(op, inputs, outs, name=f"/h.0/attn/{op}_{self.count}", **attrs))
        return outs[0] if outputs == 1 else outs

    def const(self, value: Any, dtype: Any = np.float32) -> str:
        self.count += 1
        name = f"c{self.count}"
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def dim(self, value: str, axis: int) -> str:
        """Shape(value)[axis] as a 1-D int64 tensor."""
        shape = self.node("Shape", [value])
        return self.node("Slice", [shape, self.const([axis], np.int64), self.const([axis + 1], np.int64)])


def tensor(name: str, dims: list | None, dtype: int = F32) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, dims)


def _attention_tail(b: Builder, scores_masked: str, value: str) -> str:
    probs = b.node("Softmax", [scores_masked], axis=-1)
    out = b.node("MatMul", [probs, value])
    return out


def _scores(b: Builder, q: str, k: str) -> str:
    kt = b.node("Transpose", [k], perm=[0, 1, 3, 2])
    return b.node("Mul", [b.node("MatMul", [q, kt]), b.const(1 / np.sqrt(HEAD))])


def gpt2_cached(fill: float = -10000.0, max_positions: int = 16) -> onnx.ModelProto:
    """GPT-2 (transformers' eager attention, legacy export): K and V are the cache concatenated with the
    new tokens; the causal mask is bias[:, :, T-S:T, :T] of a uint8 lower triangle, selected with Where."""
    b = Builder()
    key = b.node("Concat", ["past_key", "k"], axis=2)
    value = b.node("Concat", ["past_value", "v"], axis=2)
    scores = _scores(b, "q", key)
    q_len, kv_len = b.dim("q", 2), b.dim(key, 2)
    start = b.node("Sub", [kv_len, q_len])
    bias = b.const(np.tril(np.ones((max_positions, max_positions), np.uint8))[None, None], np.uint8)
    rows = b.node("Slice", [bias, start, kv_len, b.const([2], np.int64)])
    window = b.node("Slice", [rows, b.const([0], np.int64), kv_len, b.const([3], np.int64)])
    condition = b.node("Cast", [window], to=TensorProto.BOOL)
    masked = b.node("Where", [condition, scores, b.const(fill)])
    b.node("MatMul", [b.node("Softmax", [masked], axis=-1), value])
    b.nodes[-1].output[0] = "y"
    inputs = [tensor("q", ["B", HEADS, "S", HEAD]), tensor("k", ["B", HEADS, "S", HEAD]),
              tensor("v", ["B", HEADS, "S", HEAD]), tensor("past_key", ["B", HEADS, "P", HEAD]),
              tensor("past_value", ["B", HEADS, "P", HEAD])]
    return _finish(b, inputs)


def trilu_causal(upper: int = 0) -> onnx.ModelProto:
    """A boolean causal mask from Trilu of a filled [S, S] matrix (upper=1 keeps the upper triangle: not causal)."""
    b = Builder()
    scores = _scores(b, "q", "k")
    size = b.node("Concat", [b.dim("q", 2), b.dim("k", 2)], axis=0)
    ones = b.node("ConstantOfShape", [size], value=numpy_helper.from_array(np.array([True])))
    keep = b.node("Trilu", [ones], upper=upper)
    masked = b.node("Where", [keep, scores, b.const(-np.inf)])
    b.node("MatMul", [b.node("Softmax", [masked], axis=-1), "v"])
    b.nodes[-1].output[0] = "y"
    return _finish(b, _qkv())


def range_causal(fill: float = FINFO_MIN) -> onnx.ModelProto:
    """Keys after the query masked with Where(Greater(cols, rows), fill, scores) (drop form)."""
    b = Builder()
    scores = _scores(b, "q", "k")
    q_len = b.node("Squeeze", [b.dim("q", 2)])
    kv_len = b.node("Squeeze", [b.dim("k", 2)])
    zero, one = b.const(0, np.int64), b.const(1, np.int64)
    rows = b.node("Unsqueeze", [b.node("Range", [zero, q_len, one]), b.const([1], np.int64)])
    cols = b.node("Unsqueeze", [b.node("Range", [zero, kv_len, one]), b.const([0], np.int64)])
    blocked = b.node("Greater", [cols, rows])
    masked = b.node("Where", [blocked, b.const(fill), scores])
    b.node("MatMul", [b.node("Softmax", [masked], axis=-1), "v"])
    b.nodes[-1].output[0] = "y"
    return _finish(b, _qkv())


def cast_like_reader() -> onnx.ModelProto:
    """Phi-2's export: the mask fill is CastLike'd to the scores, so the scores have a second reader."""
    b = Builder()
    scores = _scores(b, "q", "k")
    fill = b.node("CastLike", [b.const(-np.inf), scores])
    masked = b.node("Where", ["mask", scores, fill])
    b.node("MatMul", [b.node("Softmax", [masked], axis=-1), "v"])
    b.nodes[-1].output[0] = "y"
    return _finish(b, [*_qkv(), tensor("mask", ["B", 1, "S", "S"], TensorProto.BOOL)])


def _qkv() -> list[onnx.ValueInfoProto]:
    return [tensor(n, ["B", HEADS, "S", HEAD]) for n in ("q", "k", "v")]


def _finish(b: Builder, inputs: list[onnx.ValueInfoProto], opset: int = 17) -> onnx.ModelProto:
    graph = helper.make_graph(b.nodes, "coverage", inputs, [tensor("y", ["B", HEADS, "S", HEAD])], b.inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def feeds(model: onnx.ModelProto, seed: int = 0, sizes: dict[str, int] | None = None) -> dict[str, np.ndarray]:
    """Random inputs for `model` (symbolic dims from `sizes`; booleans keep key 0 of every row)."""
    sizes = {"B": 2, "S": 3, "P": 4, "T": 7, **(sizes or {})}
    rng = np.random.default_rng(seed)
    out = {}
    for info in model.graph.input:
        shape = [d.dim_value if d.HasField("dim_value") else sizes[d.dim_param] for d in info.type.tensor_type.shape.dim]
        dtype = helper.tensor_dtype_to_np_dtype(info.type.tensor_type.elem_type)
        if dtype == np.bool_:
            array = rng.random(shape) > 0.3
            array[..., 0] = True
        elif np.issubdtype(dtype, np.integer):
            array = rng.integers(1, 4, shape).astype(dtype)
        else:
            array = rng.standard_normal(shape).astype(dtype)
        out[info.name] = array
    return out


def strip_value_info(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model as a legacy export writes it: no shapes on intermediates or outputs."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    del copy.graph.value_info[:]
    for output in copy.graph.output:
        output.type.tensor_type.ClearField("shape")
    return copy


def mixed_precision(inputs: int = F32) -> onnx.ModelProto:
    """Attention exported in mixed precision (onnxruntime's DiT generator with fp16 casts): Q·Kᵀ, the scale
    and the softmax in float32 (a Cast to float32 right after the product), then P and V cast to float16
    for P @ V. `inputs` float16: Q, K, V in float16, the scores cast up (softmax in float32)."""
    b = Builder()
    product = b.node("MatMul", ["q", b.node("Transpose", ["k"], perm=[0, 1, 3, 2])])
    scaled = b.node("Mul", [b.node("Cast", [product], to=F32), b.const(1 / np.sqrt(HEAD))])
    probs = b.node("Cast", [b.node("Softmax", [scaled], axis=-1)], to=TensorProto.FLOAT16)
    value = b.node("Cast", ["v"], to=TensorProto.FLOAT16) if inputs == F32 else "v"
    b.node("MatMul", [probs, value])
    b.nodes[-1].output[0] = "y"
    shape = ["B", HEADS, "S", HEAD]
    graph = helper.make_graph(b.nodes, "coverage", [tensor(n, shape, inputs) for n in "qkv"],
                              [tensor("y", shape, TensorProto.FLOAT16)], b.inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def einsum_bert(scores_eq: str = "abcd,aecd->acbe", out_eq: str = "acbe,aecd->abcd",
                scale: float = 1 / np.sqrt(HEAD)) -> onnx.ModelProto:
    """tf2onnx's BERT attention: Q, K, V as [B, S, H, d]; Einsum products; an additive [B, 1, 1, T] mask."""
    b = Builder()
    scores = b.node("Einsum", ["q", "k"], equation=scores_eq)
    scaled = b.node("Mul", [scores, b.const(scale)])
    masked = b.node("Add", [scaled, "mask"])
    b.node("Einsum", [b.node("Softmax", [masked], axis=-1), "v"], equation=out_eq)
    b.nodes[-1].output[0] = "y"
    inputs = [tensor("q", ["B", "S", HEADS, HEAD]), tensor("k", ["B", "S", HEADS, HEAD]),
              tensor("v", ["B", "S", HEADS, HEAD]), tensor("mask", ["B", 1, 1, "S"])]
    graph = helper.make_graph(b.nodes, "coverage", inputs, [tensor("y", ["B", "S", HEADS, HEAD])], b.inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
