"""Moving a causal mask out of an attention site's mask input and into its `causal` attribute.

Exporters write causal attention as a boolean mask: Hugging Face's decoders build
`And(causal(positions), padding(attention_mask))`, expanded to [B, 1, Sq, Skv], and the attention node
itself says is_causal = 0. Lowerings that skip the work above the diagonal need to know the site is
causal, so this pass takes the mask apart:

- the mask is split into the factors of its And tree (through Expand, which only broadcasts);
- a factor that depends on the graph inputs only through their shapes is a *geometry* factor;
  together they must be lower-right causal: their last two dims are, symbolically, the site's query
  and key lengths, and evaluated with onnxruntime at several assignments of the symbols they read,
  they equal `key <= query + Skv - Sq`;
- the other factors stay the mask (a padding mask [B, 1, 1, Skv] in the Hugging Face case).

The node then gets causal = 2 and the remaining mask (or none). Its meaning is unchanged.

Encoders build the same tree for bidirectional attention: there the geometry factors hide nothing (they
evaluate to all true) and are dropped, which leaves the padding mask alone: a key-only mask, what the GPU
kernels take. A float mask made as `Where(tree, 0, c)` (a constant c) is taken apart the same way and
rebuilt as `Where(rest, 0, c)`; its causal part moves into the attribute only when c is -inf (any other c
would give a row that sees no key a different result).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Iterable

import numpy as np
import onnx
import onnx_ir as ir

from edgeattn.graphs.apply import remove_unused
from edgeattn.ops.attention.spec import INPUTS
from edgeattn.ops.attention.spec import NAME as ATTENTION_NAME
from edgeattn.ops.dims import canonical_dim
from edgeattn.ops.spec import DOMAIN, standard_opset
from edgeattn.graphs.values import dims, static_scalar

_MAX_CONE_NODES = 200
_SMALL = 1 << 16  # initializers larger than this (bytes) are not part of a geometry cone
_TRIALS = 6


@dataclass(frozen=True)
class Factored:
    mask: ir.Value | None  # what stays the mask (None: nothing)
    new_nodes: tuple[ir.Node, ...]  # And nodes that combine what stays (and the Where of a float mask)
    causal: bool  # the geometry factors were lower-right causal (else they hid nothing)


def factor_causal_masks(model: ir.Model, ops: Iterable[str]) -> list[str]:
    """Give causal = 2 to every edgeattn node among `ops` (op types) whose mask holds a lower-right causal
    factor, and drop geometry factors that hide nothing; returns the names of the nodes changed."""
    wanted = set(ops)
    cache: dict[tuple[int, str, str], Factored | None] = {}
    changed = []
    graph = model.graph
    for node in list(graph):
        if node.domain != DOMAIN or node.op_type not in wanted or len(node.inputs) < 4 or _has_cache(node):
            continue
        mask, query, key = node.inputs[3], node.inputs[0], node.inputs[1]
        if mask is None or node.attributes.get_int("causal", 0) != 0:
            continue
        if query is None or key is None or query.shape is None or len(query.shape) != 4:
            continue
        lengths = (str(canonical_dim(dims(query)[2])), str(canonical_dim(dims(key)[2])))
        cache_key = (id(mask), *lengths)
        if cache_key not in cache:
            cache[cache_key] = _factor_mask(model, mask, dims(query)[2], dims(key)[2])
            if cache[cache_key] is not None and cache[cache_key].new_nodes:
                graph.insert_before(node, cache[cache_key].new_nodes)
        result = cache[cache_key]
        if result is None:
            continue
        old_mask = node.inputs[3]
        node.replace_input_with(3, result.mask)
        remove_unused([old_mask])
        while node.inputs and node.inputs[-1] is None:
            node.resize_inputs(len(node.inputs) - 1)
        if result.causal:
            node.attributes["causal"] = ir.AttrInt64("causal", 2)
        changed.append(node.name or "")
    return changed


def _factor_mask(model: ir.Model, mask: ir.Value, q_len: object, kv_len: object) -> Factored | None:
    """A boolean mask taken apart, or a float `Where(boolean, 0, c)` taken apart and rebuilt; None: kept."""
    if mask.dtype == ir.DataType.BOOL:
        return _factor(model, mask, q_len, kv_len)
    where = mask.producer()
    if where is None or where.domain not in ("", "ai.onnx") or where.op_type != "Where" or len(where.inputs) != 3:
        return None
    condition, kept, hidden = where.inputs
    if condition is None or condition.dtype != ir.DataType.BOOL or static_scalar(kept) != 0.0:
        return None
    fill = static_scalar(hidden)
    if fill is None:
        return None
    result = _factor(model, condition, q_len, kv_len)
    if result is None or (result.causal and fill != -math.inf):
        return None
    if result.mask is None:
        return result
    name = f"{mask.name}/edgeattn.key_mask"
    rebuilt = ir.node("Where", [result.mask, kept, hidden], name=name)
    rebuilt.outputs[0].name, rebuilt.outputs[0].dtype = name, mask.dtype
    rest = dims(result.mask)
    if rest is not None and len(rest) == 4:
        rebuilt.outputs[0].shape = ir.Shape(rest)
    return Factored(rebuilt.outputs[0], (*result.new_nodes, rebuilt), result.causal)


def _has_cache(node: ir.Node) -> bool:
    """A KV cache inside the op (past_key, past_value): its mask covers the cached keys too, and its causal
    diagonal sits after them; such a node keeps its mask."""
    cache = [index for index, io in enumerate(INPUTS) if io.name in ("past_key", "past_value")]
    return any(index < len(node.inputs) and node.inputs[index] is not None for index in cache) and \
        node.op_type == ATTENTION_NAME


def _factors(value: ir.Value) -> list[ir.Value]:
    node = value.producer()
    if node is not None and node.domain in ("", "ai.onnx"):
        if node.op_type == "And":
            return [f for v in node.inputs if v is not None for f in _factors(v)]
        if node.op_type == "Expand" and node.inputs[0] is not None:
            return _factors(node.inputs[0])
    return [value]


def _factor(model: ir.Model, mask: ir.Value, q_len: object, kv_len: object) -> Factored | None:
    factors = _factors(mask)
    geometry, rest = [], []
    for factor in factors:
        (geometry if _shape_only(factor) is not None else rest).append(factor)
    if not geometry or q_len is None or kv_len is None:
        return None
    kind = _geometry_kind(geometry, standard_opset(model.opset_imports, 21))
    if kind is None:
        return None
    causal = kind == "causal"
    if causal and not (all(_lengths_match(f, q_len, kv_len) or _broadcasts(f) for f in geometry)
                       and any(_lengths_match(f, q_len, kv_len) for f in geometry)):
        return None
    if not rest:
        return Factored(None, (), causal)
    combined, nodes = rest[0], []
    for other in rest[1:]:
        node = ir.node("And", [combined, other], name=f"{mask.name}/edgeattn.uncausal_{len(nodes)}")
        node.outputs[0].name = f"{mask.name}/edgeattn.uncausal_{len(nodes)}"
        node.outputs[0].dtype = ir.DataType.BOOL
        nodes.append(node)
        combined = node.outputs[0]
    return Factored(combined, tuple(nodes), causal)


def _lengths_match(value: ir.Value, q_len: object, kv_len: object) -> bool:
    shape = dims(value)
    return (shape is not None and len(shape) >= 2 and canonical_dim(shape[-2]) == canonical_dim(q_len)
            and canonical_dim(shape[-1]) == canonical_dim(kv_len))


def _broadcasts(value: ir.Value) -> bool:
    shape = dims(value)
    return shape is not None and all(d == 1 for d in shape)


def _shape_only(value: ir.Value) -> list[ir.Node] | None:
    """The nodes computing `value` when it reads graph inputs only through Shape nodes, else None."""
    cone: list[ir.Node] = []
    seen: set[int] = set()
    work = [value]
    while work:
        current = work.pop()
        node = current.producer()
        if node is None:
            if current.is_graph_input():
                return None  # read directly, not through Shape
            const = current.const_value
            if const is None or const.nbytes > _SMALL:
                return None
            continue
        if id(node) in seen:
            continue
        seen.add(id(node))
        has_subgraph = any(a.type == ir.AttributeType.GRAPH for a in node.attributes.values())
        if node.domain not in ("", "ai.onnx") or has_subgraph:
            return None
        cone.append(node)
        if len(cone) > _MAX_CONE_NODES:
            return None
        if node.op_type == "Shape":
            continue  # only the shape of what it reads matters
        work.extend(v for v in node.inputs if v is not None)
    return cone


def _geometry_kind(factors: list[ir.Value], opset: int) -> str | None:
    """"causal" when the And of `factors` is lower-right causal, "all" when it is all true, at several symbol
    assignments evaluated with onnxruntime; None otherwise."""
    import onnxruntime as ort

    cones = [_shape_only(f) for f in factors]
    nodes = {id(n): n for cone in cones for n in (cone or [])}
    order = _topological([n for n in nodes.values()])
    inputs = _shape_inputs(order)
    if any(dims(value) is None or value.dtype is None for value in inputs):
        return None  # a shape the probe cannot be fed
    symbols = sorted({d for value in inputs for d in (dims(value) or []) if isinstance(d, str)})
    proto_nodes = [ir.serde.serialize_node(node) for node in order]
    initializers = _initializers(order, factors)
    out_names = [f.name for f in factors]
    combined = out_names[0]
    for index, name in enumerate(out_names[1:]):
        proto_nodes.append(onnx.helper.make_node("And", [combined, name], [f"__causal_and_{index}"]))
        combined = f"__causal_and_{index}"
    graph_inputs = [onnx.helper.make_tensor_value_info(v.name, int(v.dtype), [d if isinstance(d, int) else d
                    for d in dims(v)]) for v in inputs]
    output = onnx.helper.make_tensor_value_info(combined, onnx.TensorProto.BOOL, None)
    graph = onnx.helper.make_graph(proto_nodes, "causal_probe", graph_inputs, [output], initializer=initializers)
    opsets = [onnx.helper.make_opsetid("", opset)]
    try:
        probe = onnx.helper.make_model(graph, opset_imports=opsets, ir_version=10)
        options = ort.SessionOptions()
        options.log_severity_level = 4
        session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception:  # noqa: BLE001 - anything onnxruntime rejects is simply not proven causal
        return None
    rng = random.Random(0)
    trials = [{s: rng.randint(1, 9) for s in symbols} for _ in range(_TRIALS)]
    trials += [{s: value for s in symbols} for value in (1, 4)]
    kinds = {"causal", "all"}
    for assignment in trials:
        feeds = {v.name: np.zeros([assignment.get(d, 1) if isinstance(d, str) else (d or 1) for d in dims(v)],
                                  dtype=v.dtype.numpy()) for v in inputs}
        try:
            (result,) = session.run(None, feeds)
        except Exception:  # noqa: BLE001
            return None
        if not np.all(result):
            kinds.discard("all")
        if result.ndim < 2:
            kinds.discard("causal")
        else:
            q_len, kv_len = result.shape[-2], result.shape[-1]
            expected = np.arange(kv_len)[None, :] <= np.arange(q_len)[:, None] + kv_len - q_len
            if not np.array_equal(result, np.broadcast_to(expected, result.shape)):
                kinds.discard("causal")
        if not kinds:
            return None
    # both hold only when every trial had one query row: causal is the safe reading (it hides nothing then)
    return "causal" if "causal" in kinds else "all"


def _topological(nodes: list[ir.Node]) -> list[ir.Node]:
    graph = nodes[0].graph if nodes else None
    if graph is None:
        return nodes
    position = {id(n): i for i, n in enumerate(graph)}
    return sorted(nodes, key=lambda n: position.get(id(n), 0))


def _shape_inputs(nodes: list[ir.Node]) -> list[ir.Value]:
    """What the probe is fed: the graph inputs the cone reads and the values its Shape nodes read (an
    encoder reads the shape of its hidden states, not of a graph input); only their shapes matter."""
    found: dict[str, ir.Value] = {}
    inside = {id(out) for node in nodes for out in node.outputs}
    for node in nodes:
        for value in node.inputs:
            if value is None or not value.name or id(value) in inside:
                continue
            if value.is_graph_input() or (node.op_type == "Shape" and value.producer() is not None):
                found[value.name] = value
    return list(found.values())


def _initializers(nodes: list[ir.Node], factors: list[ir.Value]) -> list[onnx.TensorProto]:
    out: dict[str, onnx.TensorProto] = {}
    values = [v for node in nodes for v in node.inputs if v is not None] + list(factors)
    for value in values:
        if value.producer() is None and not value.is_graph_input() and value.const_value is not None and value.name:
            tensor = ir.serde.serialize_tensor(value.const_value)
            tensor.name = value.name
            out[value.name] = tensor
    return list(out.values())


__all__ = ["factor_causal_masks"]
