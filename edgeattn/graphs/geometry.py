"""Masks that depend on the inputs only through their shapes ("geometry"), and which of them are causal.

Exporters build causal masks in many ways: a lower triangle sliced from a constant buffer (GPT-2:
`Slice(bias, [T - S, 0], [T, T])`), `Trilu` of a filled matrix, `Less`/`LessOrEqual`/`Greater` of two
`Range`s, And/Or/Not of those, Where with a large negative fill, additive `triu(full(min), 1)`. Rather
than one pattern per exporter, the nodes computing such a value (its *cone*, which reads graph values
only through `Shape` nodes, and constants) are evaluated with onnxruntime at several sizes, and the
result is compared with the causal mask of the same size.

Sizes: every symbolic dim the cone's Shape nodes read gets a value per trial; a dim written as a sum of
symbols and integers (`past_sequence_length + sequence_length`, as onnxruntime's symbolic shape
inference writes it) is the sum of its terms' values, so relations between lengths hold in every trial.
Nothing read from the file is evaluated as code.
"""

from __future__ import annotations

import random
import re
import weakref
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import onnx
import onnx_ir as ir

from edgeattn.ops.dims import Dim, canonical_dim, dims

MAX_CONE_NODES = 200
BIG_CONSTANT_BYTES = 16 << 20  # a constant buffer up to this size may be part of a cone (GPT-2's 1024² triangle)
TRIALS = 6
_TERM = re.compile(r"^(?:[A-Za-z_][A-Za-z0-9_.:/]*|\d+)$")


@dataclass(frozen=True)
class Trial:
    """One evaluation: the values of the symbols, and the arrays the probed values took."""

    symbols: dict[str, int]
    arrays: tuple[np.ndarray, ...]


def shape_only_cone(value: ir.Value) -> list[ir.Node] | None:
    """The nodes computing `value` when it reads graph values only through Shape nodes (and constants),
    else None. The Shape nodes are included; what they read is not."""
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
            if const is None or const.nbytes > BIG_CONSTANT_BYTES:
                return None
            continue
        if id(node) in seen:
            continue
        seen.add(id(node))
        has_subgraph = any(a.type == ir.AttributeType.GRAPH for a in node.attributes.values())
        if node.domain not in ("", "ai.onnx") or has_subgraph:
            return None
        cone.append(node)
        if len(cone) > MAX_CONE_NODES:
            return None
        if node.op_type == "Shape":
            continue  # only the shape of what it reads matters
        work.extend(v for v in node.inputs if v is not None)
    return cone


def sum_terms(dim: Dim) -> list[str | int] | None:
    """A dim as the terms of a sum: 4 -> [4]; "S" -> ["S"]; "P + S" -> ["P", "S"]; None when it is
    unknown or another expression."""
    if isinstance(dim, int):
        return [dim]
    if not isinstance(dim, str):
        return None
    terms = [t.strip() for t in dim.split("+")]
    if not all(_TERM.match(t) for t in terms):
        return None
    return [int(t) if t.isdigit() else t for t in terms]


def at_least(larger: Dim, smaller: Dim) -> bool:
    """True when `larger >= smaller` holds for every non-negative value of the symbols (dims are sizes)."""
    big, small = sum_terms(canonical_dim(larger)), sum_terms(canonical_dim(smaller))
    if big is None or small is None:
        return False
    big_symbols = [t for t in big if isinstance(t, str)]
    small_symbols = [t for t in small if isinstance(t, str)]
    for symbol in small_symbols:
        if symbol not in big_symbols:
            return False
        big_symbols.remove(symbol)
    return sum(t for t in big if isinstance(t, int)) >= sum(t for t in small if isinstance(t, int))


def probe(values: Sequence[ir.Value], opset: int) -> list[Trial] | None:
    """Evaluate `values` (each shape-only) at several symbol assignments; None when that is not possible."""
    cones = [shape_only_cone(v) for v in values]
    if any(cone is None for cone in cones):
        return None
    nodes = {id(n): n for cone in cones for n in cone or []}
    order = _topological(list(nodes.values()))
    shaped = _shape_sources(order)
    if shaped is None:
        return None
    base = sorted({t for _, shape in shaped for d in shape for t in (sum_terms(d) or []) if isinstance(t, str)})
    session = _session(order, shaped, values, opset)
    if session is None:
        return None
    rng = random.Random(0)
    assignments = [{s: rng.randint(1, 9) for s in base} for _ in range(TRIALS)]
    assignments += [{s: size for s in base} for size in (1, 4)]
    trials = []
    for symbols in assignments:
        feeds = {name: np.zeros([_size(d, symbols) for d in shape], dtype=np.uint8) for name, shape in shaped}
        try:
            arrays = session.run(None, feeds)
        except Exception:  # noqa: BLE001 - what onnxruntime cannot run is simply not proven
            return None
        trials.append(Trial(symbols, tuple(np.asarray(a) for a in arrays)))
    return trials


def _size(dim: Dim, symbols: dict[str, int]) -> int:
    terms = sum_terms(dim) or [1]
    return sum(symbols[t] if isinstance(t, str) else t for t in terms)


def _shape_sources(nodes: list[ir.Node]) -> list[tuple[str, list[Dim]]] | None:
    """The values the cone's Shape nodes read, by probe input name, with their dims (None when a dim
    cannot be sized: unknown, or an expression other than a sum)."""
    found: dict[int, tuple[str, list[Dim]]] = {}
    for node in nodes:
        if node.op_type != "Shape" or not node.inputs or node.inputs[0] is None:
            continue
        source = node.inputs[0]
        shape = dims(source)
        if shape is None or any(sum_terms(d) is None for d in shape):
            return None
        found.setdefault(id(source), (f"__shape_source_{len(found)}", shape))
    return list(found.values())


def _session(nodes: list[ir.Node], shaped: list[tuple[str, list[Dim]]], values: Sequence[ir.Value], opset: int):
    import onnxruntime as ort

    names = {id(node.inputs[0]): None for node in nodes if node.op_type == "Shape" and node.inputs}
    source_names = dict(zip(names, (name for name, _ in shaped)))
    proto_nodes = []
    for node in nodes:
        proto = ir.serde.serialize_node(node)
        if node.op_type == "Shape":
            proto.input[0] = source_names[id(node.inputs[0])]
        proto_nodes.append(proto)
    inputs = [onnx.helper.make_tensor_value_info(name, onnx.TensorProto.UINT8, [None] * len(shape))
              for name, shape in shaped]
    outputs = [onnx.helper.make_tensor_value_info(v.name, int(v.dtype or 0), None) for v in values]
    graph = onnx.helper.make_graph(proto_nodes, "geometry_probe", inputs, outputs, initializer=_constants(nodes, values))
    try:
        model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)], ir_version=10)
        options = ort.SessionOptions()
        options.log_severity_level = 4
        return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception:  # noqa: BLE001 - anything onnxruntime rejects is simply not proven
        return None


def _topological(nodes: list[ir.Node]) -> list[ir.Node]:
    graph = nodes[0].graph if nodes else None
    if graph is None:
        return nodes
    position = {id(n): i for i, n in enumerate(graph)}
    return sorted(nodes, key=lambda n: position.get(id(n), 0))


def _constants(nodes: list[ir.Node], values: Sequence[ir.Value]) -> list[onnx.TensorProto]:
    out: dict[str, onnx.TensorProto] = {}
    candidates = [v for node in nodes if node.op_type != "Shape" for v in node.inputs if v is not None] + list(values)
    for value in candidates:
        if value.producer() is None and not value.is_graph_input() and value.const_value is not None and value.name:
            tensor = ir.serde.serialize_tensor(value.const_value)
            tensor.name = value.name
            out[value.name] = tensor
    return list(out.values())


ALL_VISIBLE = 3  # a mask that hides nothing (an exporter's placeholder): the same as no mask


def causal_masks(q_len: int, kv_len: int) -> dict[int, np.ndarray]:
    """Where keys may be attended, per causal mode: 1 upper-left (j <= i), 2 lower-right (j <= i + T - S),
    and `ALL_VISIBLE` (every key)."""
    rows, cols = np.arange(q_len)[:, None], np.arange(kv_len)[None, :]
    return {1: cols <= rows, 2: cols <= rows + kv_len - q_len, ALL_VISIBLE: np.ones((q_len, kv_len), bool)}


_CAUSAL_CACHE: weakref.WeakKeyDictionary[ir.Value, dict[tuple, int]] = weakref.WeakKeyDictionary()


def causal_mode(value: ir.Value, form: str, q_len: Dim, kv_len: Dim, opset: int, max_fill: float) -> int:
    """The causal mode (1 upper-left, 2 lower-right, `ALL_VISIBLE` for a mask that hides nothing) `value`
    equals, or 0.

    `form`: "keep" (boolean, true = attend), "drop" (boolean, true = masked) or "add" (additive: 0 where
    attended, at most `max_fill` elsewhere). The value's last two dims must be the scores' query and key
    lengths; upper-left is preferred (it is also lower-right when S = T)."""
    shape = dims(value)
    if shape is None or len(shape) < 2 or q_len is None or kv_len is None:
        return 0
    if canonical_dim(shape[-2]) != canonical_dim(q_len) or canonical_dim(shape[-1]) != canonical_dim(kv_len):
        return 0
    key = (form, str(canonical_dim(q_len)), str(canonical_dim(kv_len)), opset, max_fill)
    cached = _CAUSAL_CACHE.setdefault(value, {})
    if key not in cached:
        cached[key] = _causal_mode(value, form, opset, max_fill)
    return cached[key]


def _causal_mode(value: ir.Value, form: str, opset: int, max_fill: float) -> int:
    trials = probe([value], opset)
    if not trials:
        return 0
    modes = {1, 2, ALL_VISIBLE}
    for trial in trials:
        array = trial.arrays[0]
        if array.ndim < 2:
            return 0
        allowed = _allowed(array, form, max_fill)
        if allowed is None:
            return 0
        for mode, expected in causal_masks(array.shape[-2], array.shape[-1]).items():
            if not np.array_equal(allowed, np.broadcast_to(expected, allowed.shape)):
                modes.discard(mode)
        if not modes:
            return 0
    return min(modes)


def _allowed(array: np.ndarray, form: str, max_fill: float) -> np.ndarray | None:
    if form in ("keep", "drop"):
        if array.dtype != np.bool_:
            return None
        return array if form == "keep" else ~array
    if not np.issubdtype(array.dtype, np.floating):
        return None
    attended = array == 0
    if not np.all(attended | (array <= max_fill)):
        return None
    return attended
