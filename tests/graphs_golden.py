"""Golden attention graphs built by code, and the comparison every graph test uses.

`build(Dialect(...))` writes one attention site with onnx.helper the way other tools write them: scale
before or after the product (Mul or Div, either operand order), K transposed / in BSHd / given
pre-transposed, masks added or selected with Where (boolean, -inf or a large negative fill), Cast
pairs around Softmax, the IsNaN/Where guard, inference Dropout, grouped-query Unsqueeze/Expand/Reshape,
constants as initializers or Constant nodes, 4-D or 3-D (heads folded into the batch).

Parity is measured as relative error = max|a - b| / max|a| over every output (float32 must be < 1e-5).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

F32 = TensorProto.FLOAT
RTOL_FLOAT32 = 1e-5  # relative error bound for float32 parity, as the issue states
FINFO_MIN = float(np.finfo(np.float32).min)


@dataclass(frozen=True)
class Dialect:
    heads: int = 4
    kv_heads: int = 4
    head_size: int = 8
    scale: str = "after_mul"  # after_mul, after_mul_left, after_div, sqrt_q_k, q_div, none
    key: str = "transpose"  # transpose, bshd, pre
    mask: str = "add"  # none, add, add_left, bool_keep, bool_drop, fill_min, where_then_add
    mask_dims: str = "b11t"  # letters b (batch), h (heads), s (queries), t (keys), 1
    cast: bool = False  # Cast to float and back around Softmax
    guard: bool = False  # Where(IsNaN(p), 0, p) after Softmax
    dropout: bool = False  # inference-mode Dropout after Softmax
    gqa: bool = False  # K and V repeated with Unsqueeze/Expand/Reshape
    constants: str = "initializer"  # initializer or node
    rank: int = 4  # 4: [B, H, S, d]; 3: [B·H, S, d]
    opset: int = 17
    scale_value: float | None = None  # default 1/sqrt(head_size)
    layers: int = 1  # sites chained: layer i's output is layer i+1's query

    @property
    def group(self) -> int:
        return self.heads // self.kv_heads


@dataclass
class Golden:
    model: onnx.ModelProto
    dialect: Dialect
    extra: dict[str, Any] = field(default_factory=dict)

    def feeds(self, seed: int = 0, batch: int = 2, q_len: int = 5, kv_len: int = 7) -> dict[str, np.ndarray]:
        return dialect_feeds(self.dialect, seed, batch, q_len, kv_len)


class _Graph:
    def __init__(self, dialect: Dialect) -> None:
        self.d = dialect
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.count = 0
        self.layer = 0

    def node(self, op: str, inputs: list[str], **attrs: Any) -> str:
        self.count += 1
        out = f"{op.lower()}_{self.count}"
        name = f"/layers.{self.layer}/attn/{op}_{self.count}"
        self.nodes.append(helper.make_node(op, inputs, [out], name=name, **attrs))
        return out

    def const(self, array: Any, dtype: Any = np.float32) -> str:
        array = np.asarray(array, dtype=dtype)
        self.count += 1
        name = f"c{self.count}"
        tensor = onnx.numpy_helper.from_array(array, name)
        if self.d.constants == "node":
            self.nodes.append(helper.make_node("Constant", [], [name], value=tensor))
        else:
            self.inits.append(tensor)
        return name


def _dims(d: Dialect) -> dict[str, list[Any]]:
    h, kvh, hd = d.heads, d.kv_heads, d.head_size
    if d.rank == 3:
        return {"q": ["BH", "S", hd], "k": ["BH", "T", hd], "v": ["BH", "T", hd]}
    key = {"transpose": ["B", kvh, "T", hd], "bshd": ["B", "T", kvh, hd], "pre": ["B", kvh, hd, "T"]}[d.key]
    return {"q": ["B", h, "S", hd], "k": key, "v": ["B", kvh, "T", hd]}


def _mask_shape(d: Dialect) -> list[Any]:
    names = {"b": "BH" if d.rank == 3 else "B", "h": d.heads, "s": "S", "t": "T", "1": 1}
    return [names[c] for c in d.mask_dims]


def _repeat_heads(g: _Graph, value: str) -> str:
    """[B, Hkv, T, d] -> [B, H, T, d] as transformers' repeat_kv exports (shape built from Shape)."""
    shape = g.node("Shape", [value])
    lead = g.node("Slice", [shape, g.const([0], np.int64), g.const([2], np.int64)])
    tail = g.node("Slice", [shape, g.const([2], np.int64), g.const([4], np.int64)])
    target = g.node("Concat", [lead, g.const([g.d.group], np.int64), tail], axis=0)
    expanded = g.node("Expand", [g.node("Unsqueeze", [value, g.const([2], np.int64)]), target])
    batch = g.node("Slice", [shape, g.const([0], np.int64), g.const([1], np.int64)])
    merged = g.node("Concat", [batch, g.const([g.d.heads], np.int64), tail], axis=0)
    return g.node("Reshape", [expanded, merged])


def _key_transposed(g: _Graph, key: str) -> str:
    d = g.d
    if d.rank == 3:
        return g.node("Transpose", [key], perm=[0, 2, 1])
    if d.key == "pre":
        return key
    if d.key == "bshd":
        key = g.node("Transpose", [key], perm=[0, 2, 1, 3])
    if d.gqa:
        key = _repeat_heads(g, key)
    return g.node("Transpose", [key], perm=[0, 1, 3, 2])


def _scores(g: _Graph, q: str, kt: str) -> str:
    d = g.d
    scale = d.scale_value if d.scale_value is not None else 1.0 / math.sqrt(d.head_size)
    if d.scale == "sqrt_q_k":
        root = g.const(math.sqrt(scale))
        q, kt = g.node("Mul", [q, root]), g.node("Mul", [kt, root])
    elif d.scale == "q_div":
        q = g.node("Div", [q, g.const(1.0 / scale)])
    scores = g.node("MatMul", [q, kt])
    if d.scale == "after_mul":
        return g.node("Mul", [scores, g.const(scale)])
    if d.scale == "after_mul_left":
        return g.node("Mul", [g.const(scale), scores])
    if d.scale == "after_div":
        return g.node("Div", [scores, g.const(1.0 / scale)])
    return scores


def _masked(g: _Graph, scores: str) -> str:
    kind = g.d.mask
    if kind == "add":
        return g.node("Add", [scores, "mask"])
    if kind == "add_left":
        return g.node("Add", ["mask", scores])
    if kind == "bool_keep":
        return g.node("Where", ["mask", scores, g.const(-np.inf)])
    if kind == "bool_drop":
        return g.node("Where", ["mask", g.const(-np.inf), scores])
    if kind == "fill_min":
        return g.node("Where", ["mask", scores, g.const(FINFO_MIN)])
    if kind == "where_then_add":
        kept = g.node("Where", ["mask", scores, g.const(FINFO_MIN)])
        return g.node("Add", [kept, "bias"])
    return scores


def _probabilities(g: _Graph, logits: str) -> str:
    d = g.d
    if d.cast:
        logits = g.node("Cast", [logits], to=F32)
    probs = g.node("Softmax", [logits], axis=-1)
    if d.cast:
        probs = g.node("Cast", [probs], to=F32)
    if d.guard:
        probs = g.node("Where", [g.node("IsNaN", [probs]), g.const(0.0), probs])
    if d.dropout:
        probs = g.node("Dropout", [probs, g.const(0.1), g.const(False, np.bool_)])
    return probs


def build(d: Dialect) -> Golden:
    g = _Graph(d)
    dims = _dims(d)
    inputs = [helper.make_tensor_value_info(n, F32, dims[n]) for n in ("q", "k", "v")]
    if d.mask in ("bool_keep", "bool_drop", "fill_min", "where_then_add"):
        inputs.append(helper.make_tensor_value_info("mask", TensorProto.BOOL, _mask_shape(d)))
    elif d.mask != "none":
        inputs.append(helper.make_tensor_value_info("mask", F32, _mask_shape(d)))
    if d.mask == "where_then_add":
        inputs.append(helper.make_tensor_value_info("bias", F32, _mask_shape(d)))
    query = "q"
    for layer in range(d.layers):
        g.layer = layer
        value = _repeat_heads(g, "v") if d.gqa and d.rank == 4 else "v"
        logits = _masked(g, _scores(g, query, _key_transposed(g, "k")))
        query = g.node("MatMul", [_probabilities(g, logits), value])
    g.nodes[-1].output[0] = "y"
    y_dims = ["BH", "S", d.head_size] if d.rank == 3 else ["B", d.heads, "S", d.head_size]
    graph = helper.make_graph(g.nodes, "golden", inputs, [helper.make_tensor_value_info("y", F32, y_dims)], g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", d.opset)], ir_version=8)
    return Golden(model, d)


def dialect_feeds(d: Dialect, seed: int, batch: int, q_len: int, kv_len: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    sizes = {"B": batch, "BH": batch * d.heads, "S": q_len, "T": kv_len}

    def shape(dims: list[Any]) -> list[int]:
        return [sizes.get(x, x) if isinstance(x, str) else x for x in dims]

    dims = _dims(d)
    feeds = {n: rng.standard_normal(shape(dims[n])).astype(np.float32) for n in ("q", "k", "v")}
    mask_shape = shape(_mask_shape(d))
    if d.mask in ("add", "add_left"):
        feeds["mask"] = np.where(rng.random(mask_shape) < 0.3, -1e9, rng.standard_normal(mask_shape)).astype(np.float32)
        feeds["mask"][..., 0] = 0.0
    elif d.mask != "none":
        keep = rng.random(mask_shape) > 0.3
        keep[..., 0] = True  # every query row keeps at least one key
        feeds["mask"] = ~keep if d.mask == "bool_drop" else keep
    if d.mask == "where_then_add":
        feeds["bias"] = rng.standard_normal(mask_shape).astype(np.float32)
    return feeds


def session(model: onnx.ModelProto | str) -> ort.InferenceSession:
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def relative_error(expected: list[np.ndarray], got: list[np.ndarray]) -> float:
    """max |a - b| / max |a| over all outputs (0 when both are all zeros)."""
    worst = 0.0
    for a, b in zip(expected, got):
        a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
        scale = float(np.abs(a64).max()) if a64.size else 0.0
        diff = float(np.abs(a64 - b64).max()) if a64.size else 0.0
        worst = max(worst, diff / scale if scale else diff)
    return worst


def parity(original: onnx.ModelProto | str, rewritten: onnx.ModelProto | str, feeds: dict[str, np.ndarray]) -> float:
    expected = session(original).run(None, feeds)
    got = session(rewritten).run(None, feeds)
    return relative_error(expected, got)
