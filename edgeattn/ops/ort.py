"""What the ops' onnxruntime lowerings share: which nodes they take (with the reason when not), their
settings, per-graph values computed once for every layer, and the pieces of the gathered-blocks attention.

An op offers a lowering through its `OpSpec.ort_lowering` hook: given a node, its resolved attributes and
the model's opset, it returns a `Plan` (a name and a builder) or the reason the node keeps its function
body. `edgeattn.graphs.sparse.lower_ort` applies the plans (the `LowerForOrt` pass)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import onnx_ir as ir

from edgeattn.ops.dims import canonical_dim, dims, static_dim
from edgeattn.ops.bodies import BOOL, Nodes

ATTENTION_OPSET = 23  # the standard Attention op the lowerings run their dense pieces on


@dataclass(frozen=True)
class OrtLowering:
    """Settings of the onnxruntime lowerings (speed only; results do not depend on them)."""

    chunks: int = 16  # causal dense: query slices
    min_chunk_rows: int = 64  # causal dense: below chunks·min_chunk_rows rows, one Attention


@dataclass(frozen=True)
class Plan:
    """A lowering an op chose for a node: its name (what `inspect` shows) and the builder of its nodes."""

    name: str
    build: Callable[[Nodes, "SharedValues", OrtLowering], ir.Value]


@dataclass(frozen=True)
class LoweringSite:
    """One edgeattn node as a lowering sees it."""

    node: ir.Node
    query: ir.Value
    key: ir.Value
    value: ir.Value
    key_mask: ir.Value | None  # bool [B|1, 1, 1, Lkv], or None
    attrs: dict[str, Any]
    scale: float  # resolved (never 0)
    group: int  # query heads per key/value head

    @property
    def lengths(self) -> tuple[str, str]:
        """The query and key lengths as the graph writes them (what makes layers share values)."""
        q_len, kv_len = dims(self.query)[2], dims(self.key)[2]
        if q_len is None or kv_len is None:  # unknown lengths: nothing is shared with other layers
            return f"node:{id(self.node)}", ""
        return str(canonical_dim(q_len)), str(canonical_dim(kv_len))


def read_site(node: ir.Node, attrs: dict[str, Any], opset: int) -> LoweringSite | str:
    """The site, or the reason the fast lowerings leave `node` to its function body."""
    if opset < ATTENTION_OPSET:
        return f"the fast lowerings use the opset-23 Attention op; the model imports opset {opset}"
    query, key, value = (node.inputs[i] if i < len(node.inputs) else None for i in range(3))
    if any(v is None or dims(v) is None or len(dims(v)) != 4 for v in (query, key, value)):
        return "Q, K and V must be 4-D [B, H, S, d] (3-D layouts keep the function body)"
    if len(node.outputs) > 1 and (node.outputs[1].uses() or node.outputs[1].is_graph_output()):
        return "the statistics output is read (the function body computes it exactly)"
    mask = node.inputs[3] if len(node.inputs) > 3 else None
    if mask is not None:
        shape = dims(mask)
        if mask.dtype != BOOL or shape is None or len(shape) != 4 or shape[1] != 1 or shape[2] != 1:
            return "the mask is not a boolean key mask [B, 1, 1, Skv] (other masks keep the function body)"
    if any(len(node.inputs) > i and node.inputs[i] is not None for i in range(4, len(node.inputs))):
        return "a parameter comes from a graph input (fold it into an attribute first)"
    q_heads, kv_heads = static_dim(query, 1), static_dim(key, 1)
    head_size = static_dim(query, 3)
    if q_heads is None or kv_heads is None or head_size is None or q_heads % kv_heads:
        return "the head counts and head size must be static"
    scale = float(attrs["scale"]) or 1.0 / float(np.sqrt(head_size))
    return LoweringSite(node, query, key, value, mask, attrs, scale, q_heads // kv_heads)


@dataclass
class SharedValues:
    """Values computed once per graph and read by every layer that asks with the same key.

    Their nodes go before the first node that asks, which every later layer follows."""

    made: dict[tuple, Any] = field(default_factory=dict)
    count: int = 0

    def get(self, key: tuple, before: ir.Node, make: Callable[[Nodes], Any], opset: int) -> Any:
        if key not in self.made:
            self.count += 1
            nodes = Nodes(opset, f"edgeattn/shared{self.count}")
            self.made[key] = make(nodes)
            before.graph.insert_before(before, nodes.nodes)
        return self.made[key]


def _branch(b: Nodes, name: str, build) -> ir.Graph:
    """A subgraph (If branch) whose nodes read outer values by reference."""
    inner = Nodes(b.opset, f"{b.prefix}/{name}")
    out = build(inner)
    if out.producer() is None or out.producer() not in inner.nodes:
        out = inner.op("Identity", out)  # a branch outputs a value it makes (an Identity copies)
    return inner.graph([out], name, inputs=[])


def if_else(b: Nodes, condition: ir.Value, then_build, else_build) -> ir.Value:
    """An If node; each branch gets its own value-name prefix (names are unique across subgraphs)."""
    index = len(b.nodes)
    then_graph, else_graph = _branch(b, f"then{index}", then_build), _branch(b, f"else{index}", else_build)
    return b.op("If", condition, then_branch=ir.Attr("then_branch", ir.AttributeType.GRAPH, then_graph),
                else_branch=ir.Attr("else_branch", ir.AttributeType.GRAPH, else_graph))


def pad_rows(b: Nodes, x: ir.Value, before: ir.Value | int, after: ir.Value) -> ir.Value:
    """Pad axis 2 of a 4-D tensor with zeros, without a copy when there is nothing to pad (a Pad by
    zero still copies its input, tens of MB per layer at 4096 tokens)."""
    total = after if isinstance(before, int) and before == 0 else b.op("Add", before, after)
    return if_else(b, b.op("Equal", total, b.scalar(0)), lambda inner: inner.op("Identity", x),
                   lambda inner: inner.pad_axis(x, 4, 2, before, after))


def gather_blocks(b: Nodes, x: ir.Value, n_kv: ir.Value, block: int, kv_len: ir.Value, flat_index: ir.Value,
                  n_q: ir.Value, slots: ir.Value) -> ir.Value:
    """[B, Hkv, Lkv, d] -> the blocks named by `flat_index` (over B·Hkv·nKB) as [B·Hkv, nQB, S·block, d].

    One Gather on a flattened block axis: each index moves one contiguous block of `block`·d values."""
    padded = pad_rows(b, x, 0, b.op("Sub", b.op("Mul", n_kv, b.scalar(block)), kv_len))
    blocks = b.op("Reshape", padded, b.vec(-1, block, b.dim(x, 3)))
    gathered = b.op("Gather", blocks, flat_index, axis=0)
    return b.op("Reshape", gathered, b.vec(-1, n_q, b.op("Mul", slots, b.scalar(block)), b.dim(x, 3)))


def stack_query_rows(b: Nodes, query: ir.Value, front: ir.Value, n_q: ir.Value, block: int, group: int,
                     q_len: ir.Value) -> ir.Value:
    """[B, Hq, Lq, d] -> [B·Hkv, nQB, g·block, d]: rows padded to whole position-aligned blocks, the g
    query heads of each key/value head stacked as rows of one block (they read the same keys)."""
    after = b.op("Sub", b.op("Sub", b.op("Mul", n_q, b.scalar(block)), q_len), front)
    padded = pad_rows(b, query, front, after)
    split = b.op("Reshape", padded, b.vec(0, -1, group, n_q, block, b.dim(query, 3)))
    moved = b.op("Transpose", split, perm=[0, 1, 3, 2, 4, 5])
    return b.op("Reshape", moved, b.vec(-1, n_q, group * block, b.dim(query, 3)))


def unstack_rows(b: Nodes, out: ir.Value, query: ir.Value, front: ir.Value, n_q: ir.Value, block: int, group: int,
                 q_len: ir.Value) -> ir.Value:
    """[B·Hkv, nQB, g·block, dv] -> [B, Hq, Lq, dv] (the inverse of `stack_query_rows`)."""
    split = b.op("Reshape", out, b.vec(b.dim(query, 0), -1, n_q, group, block, b.dim(out, 3)))
    moved = b.op("Transpose", split, perm=[0, 1, 3, 2, 4, 5])
    rows = b.op("Reshape", moved, b.vec(0, b.dim(query, 1), -1, b.dim(out, 3)))
    return b.op("Slice", rows, b.vec(front), b.vec(b.op("Add", front, q_len)), b.i64(2))


def slot_mask_rows(s: Nodes, token_mask: ir.Value, group: int) -> ir.Value:
    """[nQB, block, S·block] -> [1, nQB, g·block, S·block]: the same mask for the g stacked heads."""
    expanded = s.op("Expand", s.op("Unsqueeze", token_mask, s.i64(1)),
                    s.op("Concat", s.dims(token_mask, 0, 1), s.i64(group), s.dims(token_mask, 1, 3), axis=0))
    return s.op("Reshape", expanded, s.vec(1, s.dim(token_mask, 0), -1, s.dim(token_mask, 2)))


def flat_block_index(s: Nodes, key: ir.Value, n_kv: ir.Value) -> ir.Value:
    """[B, Hkv, 1, 1] int64: the first flattened block of each (batch, key/value head)."""
    heads = s.op("Mul", s.dim(key, 0), s.dim(key, 1))
    starts = s.op("Mul", s.arange(heads), n_kv)
    return s.op("Reshape", starts, s.vec(s.dim(key, 0), s.dim(key, 1), 1, 1))


def causal_site(node: ir.Node, attrs: dict[str, Any], opset: int) -> LoweringSite | str:
    """The site when `node` is causal attention a fast lowering can take, else the reason it is not."""
    if int(attrs.get("causal", 0)) not in (1, 2):
        return "the fast lowerings need causal attention (causal = 1 or 2)"
    if int(attrs.get("softmax_precision", 0)) not in (0, 1):
        return "softmax in another precision than float keeps the function body"
    return read_site(node, attrs, opset)


def attention(b: Nodes, q: ir.Value, k: ir.Value, v: ir.Value, mask: ir.Value | None, scale: float) -> ir.Value:
    inputs = [q, k, v] + ([mask] if mask is not None else [])
    return b.op("Attention", *inputs, scale=float(scale))


def causal_mask(s: Nodes, rows: ir.Value, keys: ir.Value, first_position: ir.Value,
                 key_mask: ir.Value | None) -> ir.Value:
    """[B|1, 1, rows, keys] bool: key j visible to row i at position first_position + i (and kept by
    the key mask)."""
    positions = s.op("Unsqueeze", s.op("Add", s.arange(rows), first_position), s.i64(1))
    causal = s.op("Unsqueeze", s.op("LessOrEqual", s.arange(keys), positions), s.i64(0, 1))
    if key_mask is None:
        return causal
    window = s.op("Slice", key_mask, s.i64(0), s.vec(keys), s.i64(3))
    return s.op("And", causal, window)


__all__ = ["ATTENTION_OPSET", "OrtLowering", "Plan", "SharedValues", "LoweringSite", "attention", "causal_mask", "causal_site",
           "if_else", "read_site"]
