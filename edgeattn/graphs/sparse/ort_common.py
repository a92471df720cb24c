"""What the onnxruntime lowerings share: which nodes they take (with the reason when not), per-graph
values computed once for every layer, and the pieces of the gathered-blocks attention."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import onnx_ir as ir

from edgeattn.graphs.dim_expr import canonical_dim
from edgeattn.graphs.values import dims, static_dim
from edgeattn.plugins.bodies import BOOL, Nodes

ATTENTION_OPSET = 23  # the standard Attention op the lowerings run their dense pieces on


@dataclass(frozen=True)
class Site:
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


def read_site(node: ir.Node, attrs: dict[str, Any], opset: int) -> Site | str:
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
    return Site(node, query, key, value, mask, attrs, scale, q_heads // kv_heads)


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


__all__ = ["ATTENTION_OPSET", "SharedValues", "Site", "if_else", "read_site"]
