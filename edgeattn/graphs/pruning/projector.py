"""The projector M of a vision graph, and a clone of it applied to perturbed inputs (ZOO-Prune).

The projector is the set of main-graph nodes whose name or exporter scope matches a glob
(`*projector*`: LLaVA's `multi_modal_projector`, our wrapper's `projector`). It must read exactly one
computed value X [B, T, C] (its other inputs are constants) and produce the pruned output. Zeroth-order
sensitivity needs M(x ± h·u_j) for m random unit directions u_j: the nodes of M are cloned once and run
on all 2m perturbed copies of every candidate token at once ([B, N·2m, C]), so M must act token-wise
(an MLP does; a projector that mixes tokens would make the score meaningless and is not detected).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from edgeattn.errors import PruningError
from edgeattn.graphs.pruning.emit import Emitter
from edgeattn.graphs.values import dims

_SCOPE_KEYS = ("pkg.torch.onnx.name_scopes", "namespace")


@dataclass(frozen=True)
class Projector:
    nodes: tuple[ir.Node, ...]
    source: ir.Value  # X, what the projector reads
    output: ir.Value  # M(X)


def _matches(node: ir.Node, pattern: str) -> bool:
    texts = [node.name or ""] + [node.metadata_props.get(key, "") for key in _SCOPE_KEYS]
    return any(fnmatch.fnmatchcase(text, pattern) for text in texts if text)


def _is_constant(value: ir.Value) -> bool:
    if value.is_initializer() or value.const_value is not None:
        return True
    producer = value.producer()
    return producer is not None and producer.op_type == "Constant" and producer.domain in ("", "ai.onnx")


def find_projector(graph: ir.Graph, pattern: str, output: ir.Value, where: str) -> Projector | None:
    """The projector nodes ending in `output`, or None when none is found; PruningError when they
    match but do not form one token-wise block from one input to `output`.

    When no node matches the glob (a version-converted graph loses the exporter's scope metadata), the
    projector is read from the structure instead: the token-wise block (matmuls by constant weights,
    elementwise ops) that ends in `output` and starts from a single value (`structural_projector`)."""
    nodes = [node for node in graph if _matches(node, pattern) and node.op_type != "Constant"]
    if not nodes:
        return structural_projector(graph, output)
    members = set(nodes)
    sources = {value for node in nodes for value in node.inputs
               if value is not None and value.producer() not in members and not _is_constant(value)}
    outputs = {value for node in nodes for value in node.outputs
               if value.is_graph_output() or any(user not in members for user, _ in value.uses())}
    if len(sources) != 1 or outputs != {output}:
        raise PruningError(
            f"the {len(nodes)} nodes of {where} matching projector={pattern!r} read {len(sources)} computed values and "
            f"produce {sorted(v.name or '?' for v in outputs)}; zeroth-order needs one block from one input to "
            f"{output.name!r}; pass projector=GLOB naming exactly the projector nodes")
    for node in nodes:
        if any(attr.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS) for attr in node.attributes.values()):
            raise PruningError(f"projector node {node.name} has a subgraph; it cannot be cloned")
    return Projector(tuple(nodes), sources.pop(), output)


_TOKEN_WISE = {"Add", "Sub", "Mul", "Div", "Pow", "Sqrt", "Erf", "Gelu", "Tanh", "Sigmoid", "Relu", "Cast",
               "Identity", "Neg", "Exp", "FastGelu", "QuickGelu", "BiasGelu"}


def structural_projector(graph: ir.Graph, output: ir.Value) -> Projector | None:
    """The block of token-wise nodes before `output` (constant-weight MatMul/Gemm and elementwise ops),
    when it has exactly one computed input and contains at least one matmul; else None."""
    members: list[ir.Node] = []
    sources: set[ir.Value] = set()
    frontier = [output]
    seen: set[ir.Value] = set()
    while frontier:
        value = frontier.pop()
        if value in seen:
            continue
        seen.add(value)
        node = value.producer()
        if node is None or not _token_wise(node):
            sources.add(value)
            continue
        if node not in members:
            members.append(node)
        frontier.extend(v for v in node.inputs if v is not None and not _is_constant(v))
    order = {node: index for index, node in enumerate(graph)}
    members.sort(key=order.__getitem__)
    if len(sources) != 1 or not any(n.op_type in ("MatMul", "Gemm") for n in members):
        return None
    source = sources.pop()
    if any(user not in members for node in members for value in node.outputs if value is not output
           for user, _ in value.uses()):
        return None
    return Projector(tuple(members), source, output)


def _token_wise(node: ir.Node) -> bool:
    if node.domain not in ("", "ai.onnx", "com.microsoft"):
        return False
    if node.op_type in ("MatMul", "Gemm"):
        return len(node.inputs) > 1 and node.inputs[1] is not None and _is_constant(node.inputs[1])
    return node.op_type in _TOKEN_WISE


def directions(count: int, width: int, seed: int) -> np.ndarray:
    """`count` random unit vectors [count, width] (seeded Gaussian, normalised), as ZOO-Prune draws them."""
    rng = np.random.default_rng(seed)
    raw = rng.standard_normal((count, width))
    return (raw / np.maximum(np.linalg.norm(raw, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def perturbed_outputs(emit: Emitter, projector: Projector, candidates: ir.Value, count: int, step: float,
                      seed: int) -> tuple[ir.Value, ir.Value]:
    """M(x + h·u_j) and M(x - h·u_j), each [B, N, m, D], for candidates x [B, N, C]."""
    width = (dims(candidates) or [None])[-1]
    if not isinstance(width, int):
        raise PruningError(f"the projector input {candidates.name!r} has no static width; zeroth-order needs it")
    shifts = emit.initializer("prune/zo_directions", directions(count, width, seed) * np.float32(step))
    x = emit.op("Unsqueeze", candidates, emit.const(np.array([2], np.int64)), purpose="zo_x")  # [B, N, 1, C]
    plus = emit.op("Add", x, shifts, purpose="zo_plus")
    minus = emit.op("Sub", x, shifts, purpose="zo_minus")
    both = emit.op("Concat", plus, minus, axis=2, purpose="zo_both")  # [B, N, 2m, C]
    leading = emit.op("Slice", emit.op("Shape", candidates, purpose="shape"), emit.const(np.array([0], np.int64)),
                      emit.const(np.array([2], np.int64)), purpose="zo_bn")
    flat_shape = emit.op("Concat", emit.batch_dim(candidates), emit.const(np.array([-1, width], np.int64)), axis=0,
                         purpose="zo_flat_shape")
    projected = _clone(emit, projector, emit.op("Reshape", both, flat_shape, purpose="zo_flat"))
    split_shape = emit.op("Concat", leading, emit.const(np.array([2 * count, -1], np.int64)), axis=0,
                          purpose="zo_split_shape")
    grouped = emit.op("Reshape", projected, split_shape, purpose="zo_grouped")  # [B, N, 2m, D]
    sizes = emit.const(np.array([count, count], np.int64))
    node = emit.node("Split", [grouped, sizes], "zo_split", outputs=2, axis=2)
    return node.outputs[0], node.outputs[1]


def _clone(emit: Emitter, projector: Projector, new_source: ir.Value) -> ir.Value:
    mapping: dict[ir.Value, ir.Value] = {projector.source: new_source}
    for node in projector.nodes:
        inputs = [mapping.get(v, v) if v is not None else None for v in node.inputs]
        attributes = {name: attr.value for name, attr in node.attributes.items()}
        clone = emit.node(node.op_type, inputs, "zo_projector", domain=node.domain, outputs=len(node.outputs),
                          **attributes)
        for old, new in zip(node.outputs, clone.outputs):
            mapping[old] = new
    return mapping[projector.output]
