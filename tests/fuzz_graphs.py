"""A seeded generator of small attention-like ONNX graphs, for tests/test_graph_fuzz.py.

`case(index)` is a pure function of `index` (and SEED): one graph, the inputs to run it with, and a
description to reproduce it by. The families:

- golden: a random `graphs_golden.Dialect` (eager / SDPA scales before or after the product, Mul or Div,
  K transposed / BSHD / pre-transposed, additive, boolean, fill and two-step masks, Cast pairs, the NaN
  guard, Dropout, grouped-query repetition, broadcast K/V heads, 3-D heads-in-batch, 1-2 layers,
  constants as initializers or Constant nodes), opset 13..24;
- mutant: a golden graph with one change that the rules should refuse or survive (Softmax axis, extra
  readers or graph outputs inside the site, head-size mismatches, hostile scale and fill values, scales
  and fills from inputs, per-head scales, training Dropout, NaN guards that do not write zeros, missing
  shapes, masks larger than the scores, Tanh soft-capping, Softmax precision casts, sites sharing their
  K transpose, LogSoftmax, ranks 2/5/6, K through an arbitrary Transpose);
- onnx-attention: the standard `Attention` op (opset 22..24; 3-D and 4-D, GQA, repeated K/V heads in
  front of it, causal, scale, softcap, masks of several shapes and types, present/qk outputs);
- ms: `com.microsoft.Attention` and `MultiHeadAttention` with masks, biases, past state, rotary;
- subgraph / function: a golden site inside an `If` branch or a model-local function;
- rerewrite: a model edgeattn already rewrote, with hostile metadata or attributes on its node;
- junk: Softmax and fused attention nodes in shapes no rule expects (missing inputs and outputs...).

Every graph then may get: symbolic dims renamed (hostile names, collapsed, static sizes incl. 1, or
unknown), value and node names replaced by weird ones (unicode, code-looking, lookalikes, duplicate
node names), domain "ai.onnx" instead of "", and a random IR version. Dims stay <= 8.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from graphs_golden import Dialect, build

SEED = 20250917
COUNT = 1000
F32 = TensorProto.FLOAT

HOSTILE_SYMBOLS = [
    "__import__('os').system('x')", "a+b", "1e999", "σκορ", "序列", "🙂", "", " ", "batch", "B", "S", "T",
    "N/A", "x.y", "-1", "0", "None", "nan", "${T}", "{0}", "%s", "\\", "'", '"', "a" * 120, "\u200b",
    "layers.3", "S\n", "B*H", "2**64",
]
WEIRD_NAMES = [
    "__import__('os').system('x')", "a+b", "1e999", "σκορ", "名前", "🙂", " ", "x y", "/layers.0/attn/Softmax",
    "layers.3.self_attn", "q", "k", "v", "y", "mask", "x", "x ", "X", "x\u200b", "x:0", "x.1", "..", "'", '"',
    "\\", "%", "{}", "${HOME}", "-1", "0", "None", "nan", "scores", "edgeattn", "ai.onnx", "Softmax",
    "é", "e\u0301", "\ufeffbom", "a" * 200, "tab\tname", "/", "::",
]
WEIRD_NODE_NAMES = WEIRD_NAMES + [
    "", "", "attn", "attn", "/model/layers.7/self_attn/Softmax", "layers.٣", "h.99999999999999999999",
    "block_1e3", "layers.-1", "layers.00012", "edgeattn.Attention",
]


@dataclass
class Case:
    index: int
    family: str
    description: str
    model: onnx.ModelProto
    feeds: dict[str, np.ndarray]
    trt: bool = False  # also rewrite for TensorRT
    cli: bool = False  # also through the CLI
    parity: bool = True  # False: the graph's semantics were changed on purpose (only "no crash" counts)
    runnable: bool = True  # False: never given to onnxruntime (see Inputs.runnable)


# ---------------------------------------------------------------------------------------------- feeds

@dataclass
class Inputs:
    """How to fill each graph input: its kind by (original) name; sizes of symbolic dims by name."""

    kinds: dict[str, str] = field(default_factory=dict)  # keep, drop, additive, lengths, keep01, scalar:<v>
    sizes: dict[str, int] = field(default_factory=dict)
    # False: the graph must not reach onnxruntime at all (a zero head count makes its kernels divide by
    # zero: SIGFPE kills the test process), so only "no crash" is checked
    runnable: bool = True


def make_feeds(model: onnx.ModelProto, spec: Inputs, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {}
    initializers = {t.name for t in model.graph.initializer}
    for info in model.graph.input:
        if info.name in initializers or not info.type.HasField("tensor_type"):
            continue
        tensor_type = info.type.tensor_type
        dtype = helper.tensor_dtype_to_np_dtype(tensor_type.elem_type) if tensor_type.elem_type else np.float32
        shape = []
        for dim in tensor_type.shape.dim:
            if dim.HasField("dim_value"):
                shape.append(dim.dim_value)
            else:
                shape.append(spec.sizes.setdefault(dim.dim_param or f"?{len(spec.sizes)}", int(rng.integers(1, 6))))
        kind = spec.kinds.get(info.name, "normal")
        if kind.startswith("lengths:"):  # lengths:<symbol> -> at most that symbol's size
            kind = f"lengths:{spec.sizes.setdefault(kind[8:], int(rng.integers(1, 6)))}"
        feeds[info.name] = _fill(kind, shape, dtype, rng)
    return feeds


def _fill(kind: str, shape: list[int], dtype: Any, rng: np.random.Generator) -> np.ndarray:
    if kind.startswith("scalar:"):
        return np.full(shape, float(kind[7:])).astype(dtype)
    if kind in ("keep", "drop", "keep01"):
        keep = rng.random(shape) > 0.3
        if keep.ndim:
            keep[..., 0] = True  # every query row keeps at least one key
        value = ~keep if kind == "drop" else keep
        return value.astype(dtype)
    if kind == "additive":
        low = max(-1e9, float(np.finfo(dtype).min)) if np.issubdtype(np.dtype(dtype), np.floating) else -1e9
        mask = np.where(rng.random(shape) < 0.3, low, rng.standard_normal(shape))
        if mask.ndim:
            mask[..., 0] = 0.0
        return mask.astype(dtype)
    if kind.startswith("lengths:"):
        top = max(1, int(kind.split(":", 1)[1]))
        return rng.integers(1, top + 1, size=shape).astype(dtype)
    if np.issubdtype(np.dtype(dtype), np.bool_):
        return (rng.random(shape) > 0.5)
    if np.issubdtype(np.dtype(dtype), np.integer):
        return rng.integers(0, 2, size=shape).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)


# ------------------------------------------------------------------------------------ proto helpers

def _tensor(name: str, dims: list | None, dtype: int = F32) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, dims)


def _const(name: str, value: Any, dtype: Any = np.float32) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype=dtype), name)


def _model(nodes: list, inputs: list, outputs: list, opset: int, inits: list | None = None,
           extra_imports: list | None = None, ir_version: int = 10) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "fuzz", inputs, outputs, inits or [])
    imports = [helper.make_opsetid("", opset), *(extra_imports or [])]
    return helper.make_model(graph, opset_imports=imports, ir_version=ir_version)


def _nodes(model: onnx.ModelProto, op_type: str) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.op_type == op_type]


def _producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {out: n for n in model.graph.node for out in n.output}


def _scalar_sources(model: onnx.ModelProto, name: str) -> onnx.TensorProto | None:
    """The TensorProto holding constant `name` (initializer or Constant node value)."""
    for init in model.graph.initializer:
        if init.name == name:
            return init
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            for attr in node.attribute:
                if attr.name == "value":
                    return attr.t
    return None


def _set_tensor(target: onnx.TensorProto, array: np.ndarray) -> None:
    name = target.name
    target.CopyFrom(numpy_helper.from_array(array, name))


def _input_dims(model: onnx.ModelProto, name: str) -> onnx.TensorShapeProto | None:
    for info in model.graph.input:
        if info.name == name:
            return info.type.tensor_type.shape
    return None


# ------------------------------------------------------------------------------------------ golden

RANK4_MASKS = ["b11t", "bhst", "1st", "st", "t", "b1st", "1hst", "11st", "bh1t"]
RANK3_MASKS = ["bst", "st", "t", "1st", "b1t", "11t"]
MASK_KINDS = {"add": "additive", "add_left": "additive", "bool_keep": "keep", "bool_drop": "drop",
              "fill_min": "keep", "where_then_add": "keep"}


def random_dialect(r: random.Random, simple: bool = False) -> Dialect:
    rank = r.choice([4, 4, 4, 3])
    kv_heads = r.randint(1, 3)
    group = r.choice([1, 1, 2, 3])
    key = r.choice(["transpose", "bshd", "pre"]) if rank == 4 else "transpose"
    gqa = rank == 4 and group > 1 and key != "pre" and r.random() < 0.8
    heads = kv_heads * group if gqa else kv_heads
    if rank == 4 and not gqa and r.random() < 0.1:
        heads, kv_heads = r.randint(2, 4), 1  # K and V heads broadcast by MatMul itself (MQA without repeat)
    mask = r.choice(["none", "add", "add_left", "bool_keep", "bool_drop", "fill_min", "where_then_add"])
    scale_value = None
    roll = r.random()
    if roll < 0.15:
        scale_value = round(r.uniform(0.05, 2.5), 4)
    elif roll < 0.2:
        scale_value = 1.0
    return Dialect(
        heads=heads, kv_heads=kv_heads, head_size=r.randint(1, 8),
        scale=r.choice(["after_mul", "after_mul_left", "after_div", "sqrt_q_k", "q_div", "none"]),
        key=key, mask=mask, mask_dims=r.choice(RANK4_MASKS if rank == 4 else RANK3_MASKS),
        cast=not simple and r.random() < 0.2, guard=not simple and r.random() < 0.2,
        dropout=not simple and r.random() < 0.2, gqa=gqa,
        constants=r.choice(["initializer", "node"]), rank=rank, opset=r.randint(13, 24),
        scale_value=scale_value, layers=1 if simple else r.choice([1, 1, 1, 2]),
    )


def golden_model(d: Dialect) -> tuple[onnx.ModelProto, Inputs]:
    model = build(d).model
    spec = Inputs()
    if d.mask != "none":
        spec.kinds["mask"] = MASK_KINDS[d.mask]
    return model, spec


# ----------------------------------------------------------------------------------------- mutants

def _softmax_axis(r, model, spec, d) -> str:
    axis = r.choice([0, 1, 2, -2, -3, 3, -4, 2 if d.rank == 3 else 3, -1, 7])
    softmax = _nodes(model, "Softmax")[0]
    del softmax.attribute[:]
    if r.random() < 0.9:
        softmax.attribute.append(helper.make_attribute("axis", axis))
        return f"softmax axis={axis}"
    return "softmax without axis attribute"


def _chain_values(model: onnx.ModelProto) -> list[str]:
    ops = {"MatMul", "Mul", "Div", "Add", "Where", "Softmax", "Cast", "Transpose", "Dropout", "IsNaN", "Reshape"}
    return [n.output[0] for n in model.graph.node if n.op_type in ops and n.output[0] != "y"]


def _graph_output(r, model, spec, d) -> str:
    name = r.choice(_chain_values(model))
    model.graph.output.append(_tensor(name, None))
    return f"intermediate {name} is also a graph output"


def _extra_reader(r, model, spec, d) -> str:
    name = r.choice(_chain_values(model))
    op = r.choice(["Identity", "Neg", "Softmax", "Relu"])
    model.graph.node.append(helper.make_node(op, [name], ["extra_out"], name="extra_reader"))
    model.graph.output.append(_tensor("extra_out", None))
    return f"intermediate {name} is also read by {op}"


def _set_last_dim(model: onnx.ModelProto, name: str, value: int) -> None:
    for info in [*model.graph.input, *model.graph.output]:
        if info.name == name:
            info.type.tensor_type.shape.dim[-1].Clear()
            info.type.tensor_type.shape.dim[-1].dim_value = value


def _key_head_size(r, model, spec, d) -> str:
    size = r.choice([x for x in range(1, 9) if x != d.head_size])
    if d.key == "pre":  # K is [B, H, d, T]
        shape = _input_dims(model, "k")
        shape.dim[2].Clear()
        shape.dim[2].dim_value = size
    else:
        _set_last_dim(model, "k", size)
    return f"K head size {size} != Q head size {d.head_size}"


def _value_head_size(r, model, spec, d) -> str:
    size = r.choice([x for x in range(1, 9) if x != d.head_size])
    _set_last_dim(model, "v", size)
    _set_last_dim(model, "y", size)
    return f"V head size {size} != Q head size {d.head_size} (valid attention)"


def _scale_constants(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    found = []
    for node in model.graph.node:
        if node.op_type in ("Mul", "Div"):
            for name in node.input:
                tensor = _scalar_sources(model, name)
                if tensor is not None and tensor.data_type == F32 and not tensor.dims:
                    found.append(tensor)
    return found


def _hostile_scale(r, model, spec, d) -> str:
    value = r.choice([0.0, -0.0, -0.5, -1.0, 1e-30, 1e30, math.inf, -math.inf, math.nan, 1e-8, 3.4e38])
    tensors = _scale_constants(model)
    for tensor in tensors:
        _set_tensor(tensor, np.array(value, np.float32))
    return f"scale constants ({len(tensors)}) set to {value!r}"


def _scale_shapes(r, model, spec, d) -> str:
    tensors = _scale_constants(model)
    if not tensors:
        return "no scale constant to reshape"
    shape = r.choice([[1, 1, 1, 1], [1], [1, 1, 1, 1, 1], [1, d.heads, 1, 1], [2], [1, 1, 1, 8]])
    tensor = r.choice(tensors)
    current = float(numpy_helper.to_array(tensor))
    values = np.full(shape, current, np.float32)
    if values.size > 1:
        values = values * np.linspace(0.5, 1.5, values.size, dtype=np.float32).reshape(shape)
    _set_tensor(tensor, values)
    return f"a scale constant of shape {shape}"


def _scale_from_input(r, model, spec, d) -> str:
    tensors = _scale_constants(model)
    if not tensors:
        return "no scale constant to replace"
    tensor = r.choice(tensors)
    value = float(numpy_helper.to_array(tensor))
    name = tensor.name
    _remove_constant(model, name)
    model.graph.input.append(_tensor(name, r.choice([[], [1], None])))
    spec.kinds[name] = f"scalar:{value!r}"
    return f"scale {name} comes from a graph input"


def _remove_constant(model: onnx.ModelProto, name: str) -> None:
    inits = [t for t in model.graph.initializer if t.name != name]
    del model.graph.initializer[:]
    model.graph.initializer.extend(inits)
    nodes = [n for n in model.graph.node if not (n.op_type == "Constant" and n.output[0] == name)]
    del model.graph.node[:]
    model.graph.node.extend(nodes)


def _dropout(r, model, spec, d) -> str:
    drops = _nodes(model, "Dropout")
    if not drops:
        return "no Dropout"
    node = drops[0]
    choice = r.choice(["train_true", "train_input", "ratio_input", "two_inputs", "mask_output"])
    if choice == "train_true":
        _set_tensor(_scalar_sources(model, node.input[2]), np.array(True))
    elif choice == "train_input":
        node.input[2] = "training"
        model.graph.input.append(_tensor("training", [], TensorProto.BOOL))
        spec.kinds["training"] = "scalar:0"
    elif choice == "ratio_input":
        node.input[1] = "ratio"
        model.graph.input.append(_tensor("ratio", []))
        spec.kinds["ratio"] = "scalar:0.1"
    elif choice == "two_inputs":
        del node.input[2:]
    else:
        node.output.append("dropout_mask")
        model.graph.output.append(_tensor("dropout_mask", None, TensorProto.BOOL))
    return f"dropout {choice}"


def _guard_fill(r, model, spec, d) -> str:
    producers = _producers(model)
    wheres = [n for n in model.graph.node
              if n.op_type == "Where" and n.input[0] in producers and producers[n.input[0]].op_type == "IsNaN"]
    if not wheres:
        return "no guard"
    value = r.choice([1.0, -0.0, math.nan, -1e9, 0.5])
    tensor = _scalar_sources(model, wheres[0].input[1])
    if tensor is not None:
        _set_tensor(tensor, np.array(value, np.float32))
    return f"NaN guard writes {value!r}"


def _mask_fill(r, model, spec, d) -> str:
    for node in _nodes(model, "Where"):
        for index in (1, 2):
            tensor = _scalar_sources(model, node.input[index])
            if tensor is not None and tensor.data_type == F32:
                if r.random() < 0.2:
                    _remove_constant(model, tensor.name)
                    model.graph.input.append(_tensor(tensor.name, []))
                    spec.kinds[tensor.name] = "scalar:-1e9"
                    return "mask fill from a graph input"
                value = r.choice([0.0, -1.0, -9999.0, -10000.0, -10001.0, -math.inf, math.nan, math.inf, -3.4e38, 1e9])
                _set_tensor(tensor, np.array(value, np.float32))
                return f"mask fill {value!r}"
    return "no Where mask"


def _strip_shapes(r, model, spec, d) -> str:
    names = [i.name for i in model.graph.input]
    chosen = r.sample(names, r.randint(1, len(names)))
    how = r.choice(["rank", "rank", "dims", "type"])
    for info in model.graph.input:
        if info.name not in chosen:
            continue
        if how == "rank":
            info.type.tensor_type.ClearField("shape")
        elif how == "dims":
            for dim in info.type.tensor_type.shape.dim:
                dim.Clear()
        else:
            info.ClearField("type")
    return f"inputs {chosen} lose their {how}"


def _mask_too_big(r, model, spec, d) -> str:
    shape = _input_dims(model, "mask")
    if shape is None:
        return "no mask"
    if r.random() < 0.5:
        for name in ("mask", "bias"):
            dims = _input_dims(model, name)
            if dims is None:
                continue
            copied = [onnx.TensorShapeProto.Dimension() for _ in dims.dim]
            for target, source in zip(copied, dims.dim):
                target.CopyFrom(source)
            del dims.dim[:]
            dims.dim.add().dim_value = 2
            for dim in copied:
                dims.dim.add().CopyFrom(dim)
        return "mask has an extra leading axis of 2"
    # Q fixed at 1 query, the mask over 3: onnxruntime broadcasts the scores to 3 rows
    q = _input_dims(model, "q")
    q.dim[-2].Clear()
    q.dim[-2].dim_value = 1
    for name in ("mask", "bias"):
        dims = _input_dims(model, name)
        if dims is not None and len(dims.dim) >= 2:
            dims.dim[-2].Clear()
            dims.dim[-2].dim_value = 3
    return "Q has 1 query, the mask 3"


def _softcap(r, model, spec, d) -> str:
    softmax = _nodes(model, "Softmax")[0]
    source = softmax.input[0]
    nodes = [helper.make_node("Tanh", [source], ["capped_t"], name="tanh"),
             helper.make_node("Mul", ["capped_t", "cap"], ["capped"], name="cap")]
    softmax.input[0] = "capped"
    position = list(model.graph.node).index(softmax)
    for offset, node in enumerate(nodes):
        model.graph.node.insert(position + offset, node)
    model.graph.initializer.append(_const("cap", 30.0))
    return "Tanh soft-capping before the Softmax"


def _precision_casts(r, model, spec, d) -> str:
    softmax = _nodes(model, "Softmax")[0]
    to = r.choice([TensorProto.DOUBLE, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16])
    source = softmax.input[0]
    position = list(model.graph.node).index(softmax)
    model.graph.node.insert(position, helper.make_node("Cast", [source], ["pre_cast"], to=to, name="pre_cast"))
    softmax.input[0] = "pre_cast"
    out = softmax.output[0]
    softmax.output[0] = "probs_cast"
    model.graph.node.insert(position + 2, helper.make_node("Cast", ["probs_cast"], [out], to=F32, name="post_cast"))
    return f"Softmax computed in {TensorProto.DataType.Name(to)}"


def _share_key(r, model, spec, d) -> str:
    transposes = [n for n in _nodes(model, "Transpose") if n.input[0] == "k"]
    if len(transposes) < 2:
        return "one key transpose"
    keep, drop = transposes[0], transposes[1]
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            if name == drop.output[0]:
                node.input[i] = keep.output[0]
    return "layers share the K transpose node"


def _log_softmax(r, model, spec, d) -> str:
    _nodes(model, "Softmax")[0].op_type = r.choice(["LogSoftmax", "Hardmax", "Sigmoid"])
    return "Softmax replaced"


def _swap_value_matmul(r, model, spec, d) -> str:
    last = [n for n in model.graph.node if n.output[0] == "y"][0]
    last.input[0], last.input[1] = last.input[1], last.input[0]
    return "the value MatMul takes (V, P)"


MUTATIONS: list[Callable[..., str]] = [
    _softmax_axis, _graph_output, _extra_reader, _key_head_size, _value_head_size, _hostile_scale, _scale_shapes,
    _scale_from_input, _dropout, _guard_fill, _mask_fill, _strip_shapes, _mask_too_big, _softcap, _precision_casts,
    _share_key, _log_softmax, _swap_value_matmul,
]


def mutant(r: random.Random) -> tuple[onnx.ModelProto, Inputs, str]:
    mutation = r.choice(MUTATIONS)
    d = random_dialect(r)
    if mutation is _dropout:
        d = Dialect(**{**d.__dict__, "dropout": True})
    if mutation is _guard_fill:
        d = Dialect(**{**d.__dict__, "guard": True})
    if mutation is _mask_fill and d.mask not in ("bool_keep", "bool_drop", "fill_min", "where_then_add"):
        d = Dialect(**{**d.__dict__, "mask": "fill_min"})
    if mutation is _share_key:
        d = Dialect(**{**d.__dict__, "layers": 2, "key": "transpose", "gqa": False, "heads": d.kv_heads})
    if mutation is _mask_too_big and d.mask == "none":
        d = Dialect(**{**d.__dict__, "mask": "add"})
    model, spec = golden_model(d)
    what = mutation(r, model, spec, d)
    return model, spec, f"{d} + {what}"


def any_rank(r: random.Random) -> tuple[onnx.ModelProto, Inputs, str]:
    """Q·Kᵀ -> scale -> Softmax -> ·V at rank 2, 5 or 6, or K through an arbitrary Transpose (rank 4)."""
    opset = r.randint(13, 24)
    d, dv = r.randint(1, 8), r.randint(1, 8)
    if r.random() < 0.5:
        rank = r.choice([2, 5, 6, 1])
        lead = [r.choice(["B", 1, 2]) for _ in range(max(0, rank - 2))]
        if rank == 1:
            q_dims, k_dims, v_dims = [d], [d], [d]
            perm = [0]
        else:
            q_dims, k_dims, v_dims = [*lead, "S", d], [*lead, "T", d], [*lead, "T", dv]
            perm = [*range(rank - 2), rank - 1, rank - 2]
        k_in = "k"
        what = f"rank {rank}"
    else:
        heads = r.randint(1, 3)
        base = ["B", heads, "T", d]
        layout = list(range(4))
        r.shuffle(layout)  # K is given as `base` permuted by `layout`
        k_dims = [base[i] for i in layout]
        inverse_target = [0, 1, 3, 2]  # want [B, H, d, T] = base[[0, 1, 3, 2]]
        perm = [layout.index(axis) for axis in inverse_target]
        q_dims, v_dims = ["B", heads, "S", d], ["B", heads, "T", dv]
        k_in = "k"
        what = f"K given in layout {layout}, Transpose perm {perm}"
    nodes = [
        helper.make_node("Transpose", [k_in], ["kt"], perm=perm, name="kt"),
        helper.make_node("MatMul", ["q", "kt"], ["scores"], name="qk"),
        helper.make_node("Mul", ["scores", "scale"], ["logits"], name="scale"),
        helper.make_node("Softmax", ["logits"], ["p"], axis=-1, name="softmax"),
        helper.make_node("MatMul", ["p", "v"], ["y"], name="pv"),
    ]
    inputs = [_tensor("q", q_dims), _tensor("k", k_dims), _tensor("v", v_dims)]
    model = _model(nodes, inputs, [_tensor("y", None)], opset, [_const("scale", d ** -0.5)])
    return model, Inputs(), what


# ---------------------------------------------------------------------------------- onnx Attention

def onnx_attention(r: random.Random) -> tuple[onnx.ModelProto, Inputs, str]:
    opset = r.choice([23, 23, 24, 24, 22])
    kv = r.randint(1, 3)
    heads = kv * r.choice([1, 1, 2, 3])
    d = r.randint(1, 8)
    dv = d if r.random() < 0.8 else r.randint(1, 8)
    rank = r.choice([4, 4, 3])
    attrs: dict[str, Any] = {}
    notes = []
    nodes: list = []
    inits: list = []
    if rank == 4:
        q_dims, k_dims, v_dims = ["B", heads, "S", d], ["B", kv, "T", d], ["B", kv, "T", dv]
    else:
        q_dims, k_dims, v_dims = ["B", "S", heads * d], ["B", "T", kv * d], ["B", "T", kv * dv]
        attrs["q_num_heads"] = heads
        attrs["kv_num_heads"] = kv
        if r.random() < 0.1:
            attrs["q_num_heads"] = r.choice([0, heads + 1, -1])
            notes.append("wrong q_num_heads")
    k_name, v_name = "k", "v"
    if rank == 4 and heads > kv and r.random() < 0.4:
        k_name, v_name = _repeat(nodes, inits, "k", heads // kv, heads), _repeat(nodes, inits, "v", heads // kv, heads)
        notes.append("K/V heads repeated in front")
    if r.random() < 0.3:
        attrs["is_causal"] = 1
    if r.random() < 0.4:
        attrs["scale"] = r.choice([round(r.uniform(0.05, 2.0), 4), 1.0, 0.0, -0.5])
    if r.random() < 0.1:
        attrs["softmax_precision"] = r.choice([TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16])
    if r.random() < 0.08:
        attrs["softcap"] = r.choice([30.0, 0.0])
    inputs = [_tensor("q", q_dims), _tensor("k", k_dims), _tensor("v", v_dims)]
    names = ["q", k_name, v_name]
    spec = Inputs()
    mask = r.choice(["none", "none", "bool", "float"])
    if mask != "none":
        shape = r.choice([["S", "T"], ["B", 1, "S", "T"], [1, 1, "S", "T"], ["T"], [1, heads, "S", "T"], ["S", 3],
                          ["B", heads, "S", "T"]])
        dtype = TensorProto.BOOL if mask == "bool" else r.choice([F32, F32, F32, TensorProto.FLOAT16])
        inputs.append(_tensor("mask", shape, dtype))
        names.append("mask")
        spec.kinds["mask"] = "keep" if mask == "bool" else "additive"
        notes.append(f"{mask} mask {shape}")
    extra = r.random()
    if extra < 0.05:
        inputs += [_tensor("past_key", ["B", kv, "P", d]), _tensor("past_value", ["B", kv, "P", dv])]
        names += [""] * (4 - len(names)) + ["past_key", "past_value"]
        notes.append("past inputs")
    elif extra < 0.08 and opset >= 24:
        inputs.append(_tensor("lens", ["B"], TensorProto.INT64))
        names += [""] * (6 - len(names)) + ["lens"]
        spec.kinds["lens"] = "lengths:T"
        notes.append("nonpad_kv_seqlen")
    elif extra < 0.1:
        names[r.randint(0, 2)] = ""
        notes.append(f"empty input in {names}")
    outputs = ["y"]
    roll = r.random()
    if roll < 0.1:
        outputs = ["y", "present_key", "present_value"]
    elif roll < 0.15:
        outputs = ["y", "", "", "qk"]
        attrs["qk_matmul_output_mode"] = r.randint(0, 3)
    node = helper.make_node("Attention", names, outputs, name=r.choice(["attention", "", "/layers.2/attn/Attention"]),
                            **attrs)
    nodes.append(node)
    model = _model(nodes, inputs, [_tensor(o, None) for o in outputs if o], opset, inits)
    spec.runnable = "wrong q_num_heads" not in notes
    return model, spec, f"opset {opset} rank {rank} heads {heads}/{kv} d {d}/{dv} attrs {attrs} {notes}"


def _repeat(nodes: list, inits: list, value: str, group: int, heads: int) -> str:
    """[B, Hkv, T, d] -> [B, H, T, d] with Unsqueeze/Expand/Reshape from Shape (as transformers exports)."""
    p = f"{value}_rep"
    inits += [_const(f"{p}_ax", [2], np.int64), _const(f"{p}_0", [0], np.int64), _const(f"{p}_1", [1], np.int64),
              _const(f"{p}_2", [2], np.int64), _const(f"{p}_4", [4], np.int64), _const(f"{p}_g", [group], np.int64),
              _const(f"{p}_h", [heads], np.int64)]
    nodes += [
        helper.make_node("Shape", [value], [f"{p}_shape"]),
        helper.make_node("Slice", [f"{p}_shape", f"{p}_0", f"{p}_2"], [f"{p}_lead"]),
        helper.make_node("Slice", [f"{p}_shape", f"{p}_2", f"{p}_4"], [f"{p}_tail"]),
        helper.make_node("Concat", [f"{p}_lead", f"{p}_g", f"{p}_tail"], [f"{p}_target"], axis=0),
        helper.make_node("Unsqueeze", [value, f"{p}_ax"], [f"{p}_un"]),
        helper.make_node("Expand", [f"{p}_un", f"{p}_target"], [f"{p}_ex"]),
        helper.make_node("Slice", [f"{p}_shape", f"{p}_0", f"{p}_1"], [f"{p}_batch"]),
        helper.make_node("Concat", [f"{p}_batch", f"{p}_h", f"{p}_tail"], [f"{p}_merged"], axis=0),
        helper.make_node("Reshape", [f"{p}_ex", f"{p}_merged"], [f"{p}_out"]),
    ]
    return f"{p}_out"


# -------------------------------------------------------------------------------- com.microsoft ops

MS = "com.microsoft"


def ms_attention(r: random.Random) -> tuple[onnx.ModelProto, Inputs, str]:
    heads, d = r.randint(1, 3), r.randint(1, 4)
    hidden = heads * d
    rng = np.random.default_rng(r.randint(0, 2**31))
    attrs: dict[str, Any] = {"num_heads": heads}
    sizes = [hidden, hidden, hidden]
    if r.random() < 0.15:
        v_hidden = heads * r.randint(1, 4)
        sizes = [hidden, hidden, v_hidden]
        attrs["qkv_hidden_sizes"] = sizes
    if r.random() < 0.2:
        attrs["unidirectional"] = 1
    if r.random() < 0.3:
        attrs["scale"] = round(r.uniform(0.1, 1.5), 4)
    if r.random() < 0.05:
        attrs["do_rotary"] = 1
    if r.random() < 0.05:
        attrs["num_heads"] = r.choice([0, heads + 1])
    width = sum(sizes)
    inits = [_const("w", rng.standard_normal((hidden, width)) * 0.3), _const("b", rng.standard_normal(width) * 0.1)]
    inputs = [_tensor("x", ["B", "S", hidden])]
    names = ["x", "w", "b"]
    spec = Inputs()
    mask = r.choice(["none", "2d", "1d", "3d", "4d"])
    if mask == "2d":
        inputs.append(_tensor("mask_index", ["B", "S"], TensorProto.INT32))
        spec.kinds["mask_index"] = "keep01"
    elif mask == "1d":
        inputs.append(_tensor("mask_index", [r.choice(["B", "N", 2])], TensorProto.INT32))
        spec.kinds["mask_index"] = "lengths:S"
    elif mask == "3d":
        inputs.append(_tensor("mask_index", ["B", "S", "S"], TensorProto.INT32))
        spec.kinds["mask_index"] = "keep01"
    elif mask == "4d":
        inputs.append(_tensor("mask_index", ["B", 1, 8, 8], TensorProto.INT32))
        spec.kinds["mask_index"] = "keep01"
    if mask != "none":
        names.append("mask_index")
    extra, past = r.random(), False
    if extra < 0.1:
        names += [""] * (5 - len(names)) + ["attention_bias"]
        inputs.append(_tensor("attention_bias", [1, heads, "S", "S"]))
    elif extra < 0.15:
        names += [""] * (4 - len(names)) + ["past"]
        inputs.append(_tensor("past", [2, "B", heads, "P", d]))
        past = True  # as for MultiHeadAttention: not a reliable reference (and refused)
    node = helper.make_node("Attention", names, ["y"], domain=MS, name="ms_attention", **attrs)
    model = _model([node], inputs, [_tensor("y", None)], r.choice([13, 14, 17]), inits, [helper.make_opsetid(MS, 1)])
    spec.runnable = attrs["num_heads"] == heads and not past
    return model, spec, f"com.microsoft.Attention {attrs} mask {mask} inputs {names}"


def ms_mha(r: random.Random) -> tuple[onnx.ModelProto, Inputs, str]:
    heads, d = r.randint(1, 3), r.randint(1, 4)
    hidden, v_hidden = heads * d, heads * (d if r.random() < 0.8 else r.randint(1, 4))
    rng = np.random.default_rng(r.randint(0, 2**31))
    attrs: dict[str, Any] = {"num_heads": heads}
    if r.random() < 0.3:
        attrs["scale"] = round(r.uniform(0.1, 1.5), 4)
    if r.random() < 0.15:
        attrs["unidirectional"] = 1
    if r.random() < 0.05:
        attrs["num_heads"] = r.choice([0, -2, heads + 1])
        spec_runnable = False
    else:
        spec_runnable = True
    q_dims = ["B", "S", hidden] if r.random() < 0.9 else r.choice([["B", "S", heads, 3, d], ["B", "S", "H"]])
    inputs = [_tensor("q", q_dims), _tensor("k", ["B", "T", hidden]), _tensor("v", ["B", "T", v_hidden])]
    names = ["q", "k", "v"]
    inits = []
    spec = Inputs()
    if r.random() < 0.25:
        names.append("bias")
        inits.append(_const("bias", rng.standard_normal(2 * hidden + v_hidden) * 0.1))
    mask = r.choice(["none", "none", "2d", "1d"])
    if mask != "none":
        names += [""] * (4 - len(names)) + ["kpm"]
        if mask == "2d":
            inputs.append(_tensor("kpm", ["B", "T"], TensorProto.INT32))
            spec.kinds["kpm"] = "keep01"
        else:
            inputs.append(_tensor("kpm", ["B"], TensorProto.INT32))
            spec.kinds["kpm"] = "lengths:T"
    if r.random() < 0.1:
        names += [""] * (5 - len(names)) + ["attention_bias"]
        inputs.append(_tensor("attention_bias", [1, heads, "S", "T"]))
    if r.random() < 0.05:
        names += [""] * (6 - len(names)) + ["pk", "pv"]
        inputs += [_tensor("pk", ["B", heads, "P", d]), _tensor("pv", ["B", heads, "P", d])]
        # onnxruntime 1.31's CPU MultiHeadAttention with a past reads uninitialized memory: its result
        # changes from run to run, so it is no reference (edgeattn refuses these sites anyway)
        spec_runnable = False
    node = helper.make_node("MultiHeadAttention", names, ["y"], domain=MS, name="mha", **attrs)
    model = _model([node], inputs, [_tensor("y", None)], r.choice([13, 17, 21]), inits, [helper.make_opsetid(MS, 1)])
    spec.runnable = spec_runnable
    return model, spec, f"com.microsoft.MultiHeadAttention {attrs} q {q_dims} mask {mask} inputs {names}"


# ------------------------------------------------------------------------- subgraphs and functions

def in_subgraph(r: random.Random) -> tuple[onnx.ModelProto, Inputs, str]:
    d = random_dialect(r, simple=True)
    model, spec = golden_model(d)
    outer = model.graph
    branch_nodes = list(outer.node)
    for node in branch_nodes:
        for i, name in enumerate(node.output):
            if name == "y":
                node.output[i] = "y_then"
    y_info = outer.output[0]
    then_out = onnx.ValueInfoProto()
    then_out.CopyFrom(y_info)
    then_out.name = "y_then"
    then_branch = helper.make_graph(branch_nodes, "then", [], [then_out])
    else_out = onnx.ValueInfoProto()
    else_out.CopyFrom(y_info)
    else_out.name = "y_else"
    else_branch = helper.make_graph([helper.make_node("Identity", ["q"], ["y_else"])], "else", [], [else_out])
    if_node = helper.make_node("If", ["cond"], ["y"], then_branch=then_branch, else_branch=else_branch, name="if")
    del outer.node[:]
    outer.node.append(if_node)
    outer.input.append(_tensor("cond", [], TensorProto.BOOL))
    spec.kinds["cond"] = "scalar:1"
    if r.random() < 0.6:  # the branch's values typed, as a shape-inferred file has them
        model = onnx.shape_inference.infer_shapes(model)
        return model, spec, f"{d} inside an If branch, shapes inferred"
    return model, spec, f"{d} inside an If branch"


def in_function(r: random.Random) -> tuple[onnx.ModelProto, Inputs, str]:
    d = random_dialect(r, simple=True)
    d = Dialect(**{**d.__dict__, "constants": "node"})
    model, spec = golden_model(d)
    graph = model.graph
    inputs = [i.name for i in graph.input]
    function = helper.make_function("fuzz.local", "AttentionFn", inputs, ["y"], list(graph.node),
                                    opset_imports=list(model.opset_import))
    del graph.node[:]
    graph.node.append(helper.make_node("AttentionFn", inputs, ["y"], domain="fuzz.local", name="call"))
    model.functions.append(function)
    model.opset_import.append(helper.make_opsetid("fuzz.local", 1))
    return model, spec, f"{d} inside a model-local function"


# ------------------------------------------------------------------------ rewritten, then tampered

def rerewrite(r: random.Random) -> tuple[onnx.ModelProto, Inputs, str, bool]:
    import onnx_ir as ir

    from edgeattn.graphs import rewrite

    d = random_dialect(r, simple=True)
    model, spec = golden_model(d)
    target = r.choice(["ort", "trt"])
    rewritten, _ = rewrite(model, target=target)  # type: ignore[arg-type]
    proto = ir.serde.serialize_model(rewritten)
    node = next((n for n in proto.graph.node if n.domain == "edgeattn"), None)
    if node is None:  # refused: nothing to tamper with
        return proto, spec, f"{d} rewritten for {target} (refused)", True
    metadata_only = r.random() < 0.5
    if metadata_only:
        key = r.choice(["edgeattn.layer", "edgeattn.site", "edgeattn.rule", "edgeattn.dialect"])
        value = r.choice(["²", "-1", "", "99999999999999999999999", "٣", " 3", "1e3", "__import__('os')", "🙂"])
        entries = [p for p in node.metadata_props if p.key != key]
        del node.metadata_props[:]
        node.metadata_props.extend(entries)
        node.metadata_props.add(key=key, value=value)
        what = f"metadata {key}={value!r}"
    else:
        choice = r.choice(["heads", "scale", "causal", "drop_attr", "unknown_attr", "drop_input", "overload",
                           "precision", "attr_type"])
        attrs = {a.name: a for a in node.attribute}
        if choice == "heads" and "q_num_heads" in attrs:
            attrs["q_num_heads"].i = r.choice([-3, 0, 7, 2**40])
        elif choice == "scale" and "scale" in attrs:
            attrs["scale"].f = r.choice([-1.0, math.nan, math.inf, 0.0])
        elif choice == "causal" and "causal" in attrs:
            attrs["causal"].i = r.choice([5, -1, 2])
        elif choice == "drop_attr" and node.attribute:
            del node.attribute[r.randrange(len(node.attribute))]
        elif choice == "unknown_attr":
            node.attribute.append(helper.make_attribute("mystery", 1))
        elif choice == "drop_input":
            del node.input[r.randint(1, len(node.input) - 1):]
        elif choice == "overload":
            node.overload = r.choice(["nonexistent", "", "r9_x"])
        elif choice == "precision" and "softmax_precision" in attrs:
            attrs["softmax_precision"].i = r.choice([7, 99, -1])
        elif choice == "attr_type" and "scale" in attrs:
            index = list(node.attribute).index(attrs["scale"])
            node.attribute[index].CopyFrom(helper.make_attribute("scale", "0.5"))
        what = f"attribute tampering {choice}"
        spec.runnable = False  # a head count of 0 reaches an integer Div in the body: SIGFPE in onnxruntime
    return proto, spec, f"{d} rewritten for {target}, then {what}", metadata_only


# -------------------------------------------------------------------------------------------- junk

def junk(r: random.Random) -> tuple[onnx.ModelProto, Inputs, str]:
    kind = r.choice(["classifier", "weights", "no_value_matmul", "softmax_of_input", "no_io_softmax", "gqa_op",
                     "short_attention", "empty", "ms_one_input", "unknown_edgeattn", "softmax_twice", "deep_scale",
                     "deep_shape"])
    q, k, v = _tensor("q", ["B", 2, "S", 4]), _tensor("k", ["B", 2, "T", 4]), _tensor("v", ["B", 2, "T", 4])
    opset = r.randint(13, 24)
    imports: list = []
    inits: list = []
    inputs = [q, k, v]
    if kind == "classifier":
        nodes = [helper.make_node("Softmax", ["q"], ["y"], axis=r.choice([-1, 0, 1]))]
        inputs = [q]
    elif kind == "weights":
        inits = [_const("w", np.ones((4, 3)))]
        nodes = [helper.make_node("Softmax", ["q"], ["p"]), helper.make_node("MatMul", ["p", "w"], ["y"])]
        inputs = [q]
    elif kind == "no_value_matmul":
        nodes = [helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
                 helper.make_node("MatMul", ["q", "kt"], ["s"]), helper.make_node("Softmax", ["s"], ["y"])]
    elif kind == "softmax_of_input":
        nodes = [helper.make_node("Softmax", ["s"], ["p"]), helper.make_node("MatMul", ["p", "v"], ["y"])]
        inputs = [_tensor("s", ["B", 2, "S", "T"]), v]
    elif kind == "no_io_softmax":
        nodes = [helper.make_node("Softmax", r.choice([[], ["q"]]), r.choice([[], ["p"]]), name="bare"),
                 helper.make_node("Identity", ["q"], ["y"])]
        inputs = [q]
    elif kind == "gqa_op":
        nodes = [helper.make_node("GroupQueryAttention", ["q", "k", "v"], ["y"], domain=MS)]
        imports = [helper.make_opsetid(MS, 1)]
    elif kind == "short_attention":
        nodes = [helper.make_node("Attention", r.choice([["q", "k"], ["q"], [], ["", "", ""]]), ["y"], name="a")]
        opset = 23
    elif kind == "empty":
        nodes = []
        inputs = [q]
        return _model(nodes, inputs, [_tensor("q", None)], opset), Inputs(), "junk empty graph"
    elif kind == "ms_one_input":
        nodes = [helper.make_node(r.choice(["Attention", "MultiHeadAttention"]), ["q"], ["y"], domain=MS)]
        imports = [helper.make_opsetid(MS, 1)]
    elif kind == "unknown_edgeattn":
        nodes = [helper.make_node(r.choice(["Mystery", "Attention"]), ["q"], ["y"], domain="edgeattn")]
        imports = [helper.make_opsetid("edgeattn", 1)]
    elif kind in ("deep_scale", "deep_shape"):
        return _deep(r, kind)
    else:  # the same scores through two Softmax nodes, both used by value MatMuls
        nodes = [helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
                 helper.make_node("MatMul", ["q", "kt"], ["s"]),
                 helper.make_node("Softmax", ["s"], ["p1"]), helper.make_node("Softmax", ["s"], ["p2"]),
                 helper.make_node("MatMul", ["p1", "v"], ["y1"]), helper.make_node("MatMul", ["p2", "v"], ["y2"]),
                 helper.make_node("Add", ["y1", "y2"], ["y"])]
    return _model(nodes, inputs, [_tensor("y", None)], opset, inits, imports), Inputs(), f"junk {kind}"


def _deep(r: random.Random, kind: str) -> tuple[onnx.ModelProto, Inputs, str]:
    depth = r.randint(3, 40)
    d = random_dialect(r, simple=True)
    if kind == "deep_shape":
        d = Dialect(**{**d.__dict__, "rank": 4, "key": "transpose", "gqa": True, "heads": 2 * d.kv_heads})
    else:
        d = Dialect(**{**d.__dict__, "scale": "after_mul", "constants": "initializer"})
    model, spec = golden_model(d)
    return deep_chain(d, kind[5:], depth), spec, f"{d} with a {depth}-deep chain of doubled reads into the {kind[5:]}"


def deep_chain(d: Dialect, into: str, depth: int) -> onnx.ModelProto:
    """A site whose scale (`into` "scale"; needs scale="after_mul") or K/V head-repetition shape ("shape";
    needs gqa) comes through `depth` nodes that each read the previous value twice: 2**depth paths
    through a few dozen nodes (inspect must not walk them all). The value is unchanged: the doubled
    scale is divided by 2**depth, the doubled shape sliced back."""
    model, _ = golden_model(d)
    graph = model.graph
    chain = []
    if into == "scale":
        target, slot = next(n for n in graph.node if n.op_type == "Mul"), 1
        current = target.input[slot]
        for i in range(depth):
            chain.append(helper.make_node("Add", [current, current], [f"deep_{i}"], name=f"deep_{i}"))
            current = f"deep_{i}"
        graph.initializer.append(_const("deep_divisor", 2.0 ** depth))
        chain.append(helper.make_node("Div", [current, "deep_divisor"], ["deep_scale"], name="deep_div"))
        current = "deep_scale"
    else:
        target, slot = next(n for n in graph.node if n.op_type == "Concat"), 0
        current = target.input[slot]  # the [B, Hkv] entries of K's shape
        graph.initializer.extend([_const("deep_0", [0], np.int64), _const("deep_2", [2], np.int64)])
        for i in range(depth):
            chain.append(helper.make_node("Concat", [current, current], [f"deep_c{i}"], axis=0, name=f"deep_c{i}"))
            chain.append(helper.make_node("Slice", [f"deep_c{i}", "deep_0", "deep_2"], [f"deep_s{i}"],
                                          name=f"deep_s{i}"))
            current = f"deep_s{i}"
    target.input[slot] = current
    position = list(graph.node).index(target)
    for offset, node in enumerate(chain):
        graph.node.insert(position + offset, node)
    return model


def retype_attribute(model: onnx.ModelProto, r: random.Random) -> str:
    """One attribute of one node given another type, or as a reference to a function attribute."""
    nodes = [n for n in _walk(model.graph) if n.attribute]
    if not nodes:
        return "no attribute to retype"
    node = r.choice(nodes)
    index = r.randrange(len(node.attribute))
    name = node.attribute[index].name
    choice = r.choice(["string", "float", "ints", "int", "ref"])
    if choice == "ref":
        new = onnx.AttributeProto(name=name, ref_attr_name="outer", type=node.attribute[index].type)
    else:
        new = helper.make_attribute(name, {"string": "7", "float": 1.5, "ints": [1, 2], "int": 3}[choice])
    node.attribute[index].CopyFrom(new)
    return f"attribute {name} of {node.op_type} '{node.name}' made {choice}"


# ------------------------------------------------------------------------------ whole-graph changes

def plan_symbols(model: onnx.ModelProto, r: random.Random, spec: Inputs) -> dict[str, Any]:
    """New dims for the symbolic ones: kept, hostile names, collapsed onto another symbol, static sizes
    (1 often) or unknown. Fills spec.sizes (by the original symbol) so the feeds agree with the new dims."""
    infos = _all_infos(model.graph)
    symbols = sorted({dim.dim_param for info in infos for dim in info.type.tensor_type.shape.dim if dim.dim_param})
    mapping: dict[str, Any] = {}
    by_new_name: dict[str, int] = {}
    for symbol in symbols:
        roll = r.random()
        if roll < 0.35:
            new: Any = symbol
        elif roll < 0.6:
            new = r.choice(HOSTILE_SYMBOLS)
        elif roll < 0.85:
            new = r.choice([1, 1, 2, 3, 5, 8])
        elif mapping:
            new = r.choice(list(mapping.values()))  # collapse onto another symbol's dim
        else:
            new = None  # unknown dim
        mapping[symbol] = new
        if isinstance(new, int):
            spec.sizes[symbol] = new
        elif new:
            spec.sizes[symbol] = by_new_name.setdefault(new, r.randint(1, 6))
        else:
            spec.sizes[symbol] = r.randint(1, 6)
    return mapping


def apply_symbols(model: onnx.ModelProto, mapping: dict[str, Any]) -> str:
    for info in _all_infos(model.graph):
        for dim in info.type.tensor_type.shape.dim:
            if dim.dim_param and dim.dim_param in mapping:
                new = mapping[dim.dim_param]
                dim.Clear()
                if isinstance(new, int):
                    dim.dim_value = new
                elif new:
                    dim.dim_param = new
    return f"symbols {mapping}"


def _all_infos(graph: onnx.GraphProto) -> list[onnx.ValueInfoProto]:
    infos = [*graph.input, *graph.output, *graph.value_info]
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                infos += _all_infos(attr.g)
    return infos


def rename_values(model: onnx.ModelProto, r: random.Random, feeds: dict[str, np.ndarray]) -> str:
    """Every value gets a weird (but unique) name; the feeds follow."""
    graph = model.graph
    order: list[str] = []
    for name in [*(i.name for i in graph.input), *(t.name for t in graph.initializer)]:
        order.append(name)
    for node in _walk(graph):
        order += [n for n in [*node.input, *node.output] if n]
    order += [o.name for o in graph.output]
    mapping: dict[str, str] = {}
    used: set[str] = set()
    for name in dict.fromkeys(order):
        new = r.choice(WEIRD_NAMES) if r.random() < 0.7 else name
        suffix = 0
        candidate = new
        while candidate in used:
            suffix += 1
            candidate = f"{new}{'_' * (suffix % 3 + 1)}{suffix}"
        used.add(candidate)
        mapping[name] = candidate
    _apply_names(graph, mapping)
    renamed = {mapping.get(k, k): v for k, v in feeds.items()}
    feeds.clear()
    feeds.update(renamed)
    return "values renamed"


def _walk(graph: onnx.GraphProto):
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _walk(attr.g)


def _apply_names(graph: onnx.GraphProto, mapping: dict[str, str]) -> None:
    for info in [*graph.input, *graph.output, *graph.value_info]:
        info.name = mapping.get(info.name, info.name)
    for tensor in graph.initializer:
        tensor.name = mapping.get(tensor.name, tensor.name)
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name:
                node.input[i] = mapping.get(name, name)
        for i, name in enumerate(node.output):
            if name:
                node.output[i] = mapping.get(name, name)
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                _apply_names(attr.g, mapping)


def rename_nodes(model: onnx.ModelProto, r: random.Random) -> str:
    """Weird node names: unique lookalikes, or (one time in four) exact duplicates and empty names."""
    duplicates = r.random() < 0.25
    used: set[str] = set()
    for node in _walk(model.graph):
        if r.random() < 0.8:
            name = r.choice(WEIRD_NODE_NAMES)
            while not duplicates and name in used:
                name += r.choice(["_", " ", "\u200b", "1"])
            node.name = name
        used.add(node.name)
    return "nodes renamed" + (" (duplicates allowed)" if duplicates else "")


def ai_onnx_domain(model: onnx.ModelProto, r: random.Random) -> str:
    for node in _walk(model.graph):
        if node.domain == "" and r.random() < 0.5:
            node.domain = "ai.onnx"
    if r.random() < 0.3:
        for opset in model.opset_import:
            if opset.domain == "":
                opset.domain = "ai.onnx"
        return "domain ai.onnx on nodes and the opset import"
    return "domain ai.onnx on some nodes"


# --------------------------------------------------------------------------------------------- case

FAMILIES = [("golden", 32), ("mutant", 30), ("any_rank", 5), ("onnx_attention", 13), ("ms_attention", 4),
            ("ms_mha", 4), ("subgraph", 3), ("function", 1), ("rerewrite", 3), ("junk", 5)]


def case(index: int) -> Case:
    r = random.Random(SEED * 1_000_003 + index)
    family = r.choices([f for f, _ in FAMILIES], [w for _, w in FAMILIES])[0]
    parity = True
    if family == "golden":
        d = random_dialect(r)
        model, spec = golden_model(d)
        description = str(d)
        if r.random() < 0.2:  # intermediate value_info present, as a shape-inferred file has it
            model = onnx.shape_inference.infer_shapes(model)
            description += ", shapes inferred"
    elif family == "mutant":
        model, spec, description = mutant(r)
    elif family == "any_rank":
        model, spec, description = any_rank(r)
    elif family == "onnx_attention":
        model, spec, description = onnx_attention(r)
    elif family == "ms_attention":
        model, spec, description = ms_attention(r)
    elif family == "ms_mha":
        model, spec, description = ms_mha(r)
    elif family == "subgraph":
        model, spec, description = in_subgraph(r)
    elif family == "function":
        model, spec, description = in_function(r)
    elif family == "rerewrite":
        model, spec, description, parity = rerewrite(r)
    else:
        model, spec, description = junk(r)
    changes = []
    mutate = family not in ("rerewrite", "junk")
    mapping = plan_symbols(model, r, spec) if mutate and r.random() < 0.5 else None
    feeds = make_feeds(model, spec, seed=index)  # before renaming: sizes are by the original symbols
    if mapping is not None:
        changes.append(apply_symbols(model, mapping))
    if mutate:
        if r.random() < 0.4:
            changes.append(rename_values(model, r, feeds))
        if r.random() < 0.4:
            changes.append(rename_nodes(model, r))
        if r.random() < 0.12:
            changes.append(ai_onnx_domain(model, r))
        if r.random() < 0.2:
            model.ir_version = r.choice([7, 8, 9, 10, 11, 12])
            changes.append(f"ir_version {model.ir_version}")
    if r.random() < 0.06:
        changes.append(retype_attribute(model, r))
        spec.runnable = False
    text = f"case {index} [{family}] {description}" + (f"; {'; '.join(changes)}" if changes else "")
    return Case(index, family, text, model, feeds, trt=index % 3 == 0, cli=index % 50 == 7, parity=parity,
                runnable=spec.runnable)
