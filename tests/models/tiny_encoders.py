"""One-layer vision encoders written directly in ONNX (not exported by edgeattn), with their weights,
so tests can compute every pruning rule by hand from the same numbers.

    tokens [B, S, C] -> self-attention (H heads) + residual -> [Slice off [CLS]] -> [projector MLP]
    -> image_features

`style` is "decomposed" (MatMul, Mul(scale), Softmax, MatMul: the eager dialect) or "fused" (the opset-23
`Attention` op). The projector's nodes are named `projector/...` as LLaVA's are scoped.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


@dataclass
class TinyEncoder:
    model: onnx.ModelProto
    wq: np.ndarray
    wk: np.ndarray
    wv: np.ndarray
    w1: np.ndarray | None
    w2: np.ndarray | None
    heads: int
    has_cls: bool
    projector: bool

    @property
    def scale(self) -> float:
        return 1.0 / np.sqrt(self.wq.shape[1] // self.heads)

    def probs(self, tokens: np.ndarray) -> np.ndarray:
        """[B, H, S, S] attention probabilities, in float64."""
        x = tokens.astype(np.float64)
        q, k = self._heads(x @ self.wq), self._heads(x @ self.wk)
        logits = q @ k.transpose(0, 1, 3, 2) * self.scale
        logits -= logits.max(-1, keepdims=True)
        e = np.exp(logits)
        return e / e.sum(-1, keepdims=True)

    def hidden(self, tokens: np.ndarray) -> np.ndarray:
        """The attention layer's output with the residual, [B, S, D] (float64)."""
        x = tokens.astype(np.float64)
        v = self._heads(x @ self.wv)
        out = (self.probs(tokens) @ v).transpose(0, 2, 1, 3).reshape(x.shape[0], x.shape[1], -1)
        return out + x

    def project(self, states: np.ndarray) -> np.ndarray:
        return np.tanh(states @ self.w1) @ self.w2 if self.projector else states

    def features(self, tokens: np.ndarray) -> np.ndarray:
        states = self.hidden(tokens)
        if self.projector and self.has_cls:
            states = states[:, 1:]
        return self.project(states)

    def _heads(self, x: np.ndarray) -> np.ndarray:
        b, s, d = x.shape
        return x.reshape(b, s, self.heads, d // self.heads).transpose(0, 2, 1, 3)


def tiny_encoder(grid: int = 4, width: int = 16, heads: int = 2, has_cls: bool = True, projector: bool = False,
                 style: str = "decomposed", seed: int = 0) -> TinyEncoder:
    rng = np.random.default_rng(seed)
    seq = grid * grid + (1 if has_cls else 0)
    weights = {name: (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
               for name in ("wq", "wk", "wv", "w1", "w2")}
    head = width // heads
    init = [numpy_helper.from_array(w, name) for name, w in weights.items()]
    init += [numpy_helper.from_array(np.array([0, 0, heads, head], np.int64), "split_shape"),
             numpy_helper.from_array(np.array([0, 0, width], np.int64), "merge_shape"),
             numpy_helper.from_array(np.array(1.0 / np.sqrt(head), np.float32), "scale"),
             numpy_helper.from_array(np.array([1], np.int64), "one"),
             numpy_helper.from_array(np.array([1 << 40], np.int64), "end")]
    nodes = []
    for name in ("q", "k", "v"):
        nodes += [helper.make_node("MatMul", ["tokens", f"w{name}"], [f"{name}_flat"], name=f"layer.0/{name}_proj"),
                  helper.make_node("Reshape", [f"{name}_flat", "split_shape"], [f"{name}_split"], name=f"layer.0/{name}_split"),
                  helper.make_node("Transpose", [f"{name}_split"], [f"{name}4"], perm=[0, 2, 1, 3], name=f"layer.0/{name}_t")]
    if style == "fused":
        nodes.append(helper.make_node("Attention", ["q4", "k4", "v4"], ["attn4"], name="layer.0/attention"))
        opset = 23
    else:
        nodes += [helper.make_node("Transpose", ["k4"], ["kt"], perm=[0, 1, 3, 2], name="layer.0/k_transpose"),
                  helper.make_node("MatMul", ["q4", "kt"], ["logits"], name="layer.0/qk"),
                  helper.make_node("Mul", ["logits", "scale"], ["scaled"], name="layer.0/scale"),
                  helper.make_node("Softmax", ["scaled"], ["probs"], axis=-1, name="layer.0/softmax"),
                  helper.make_node("MatMul", ["probs", "v4"], ["attn4"], name="layer.0/pv")]
        opset = 17
    nodes += [helper.make_node("Transpose", ["attn4"], ["attn_t"], perm=[0, 2, 1, 3], name="layer.0/merge_t"),
              helper.make_node("Reshape", ["attn_t", "merge_shape"], ["attn"], name="layer.0/merge"),
              helper.make_node("Add", ["attn", "tokens"], ["hidden" if projector else "image_features"],
                               name="layer.0/residual")]
    tokens_out = seq
    if projector:
        source = "hidden"
        if has_cls:
            nodes.append(helper.make_node("Slice", ["hidden", "one", "end", "one"], ["patches"], name="drop_cls"))
            source, tokens_out = "patches", seq - 1
        nodes += [helper.make_node("MatMul", [source, "w1"], ["p1"], name="projector/linear_1"),
                  helper.make_node("Tanh", ["p1"], ["p2"], name="projector/act"),
                  helper.make_node("MatMul", ["p2", "w2"], ["image_features"], name="projector/linear_2")]
    used = {name for node in nodes for name in node.input}
    init = [tensor for tensor in init if tensor.name in used]
    graph = helper.make_graph(
        nodes, "tiny_encoder",
        [helper.make_tensor_value_info("tokens", TensorProto.FLOAT, ["batch", seq, width])],
        [helper.make_tensor_value_info("image_features", TensorProto.FLOAT, ["batch", tokens_out, width])],
        init,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10
    model = onnx.shape_inference.infer_shapes(model)
    return TinyEncoder(model, weights["wq"], weights["wk"], weights["wv"], weights["w1"], weights["w2"], heads,
                       has_cls, projector)
