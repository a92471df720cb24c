"""What an attention node uses beyond the site's basic form, and whether another op can take it.

Every attention op takes the site's basic form (Q, K, V, mask -> Y; scale, causal, heads, softmax
precision). edgeattn.Attention also takes the rest of the ONNX Attention contract (`FEATURE_ATTRIBUTES`,
`FEATURE_INPUTS`, `FEATURE_OUTPUTS` of `edgeattn.ops.attention.spec`: softcap, windows, a KV cache
inside the op, nonpad_kv_seqlen, qk_matmul_output). An op honours a feature when it declares it (an
attribute of that name, an input or output of that name at the same position). A recipe that gives a
site to an op that cannot honour what the site uses is refused for that site (`SiteRefused`), except a
KV cache inside the op: `detach_cache` moves its concatenation in front of the node (the present outputs
become the Concat outputs), which every attention op then computes exactly, when the causal alignment
stays the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx_ir as ir

from edgeattn.errors import RecipeError
from edgeattn.ops.attention.spec import FEATURE_ATTRIBUTES, FEATURE_INPUTS, FEATURE_OUTPUTS
from edgeattn.ops.dims import canonical_dim, dims
from edgeattn.ops.spec import OpSpec

CACHE_INPUTS = ("past_key", "past_value")
CACHE_OUTPUTS = ("present_key", "present_value")
_FEATURE_INPUT_NAMES = {io.name for io in FEATURE_INPUTS}
_FEATURE_OUTPUT_NAMES = {io.name for io in FEATURE_OUTPUTS}


class SiteRefused(RecipeError):
    """The op a recipe chose cannot compute this site exactly; the site keeps the op it has."""


@dataclass(frozen=True)
class Usage:
    """The features one node uses: attribute values, and the names of the inputs given and outputs read."""

    attributes: dict[str, Any]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]

    def phrases(self) -> list[str]:
        return [_phrase(name, value) for name, value in self.attributes.items()] + list(self.inputs) + list(self.outputs)

    def missing_in(self, spec: OpSpec) -> list[str]:
        """What of this usage `spec` does not declare, as phrases."""
        declared = {a.name for a in spec.attributes}
        missing = [_phrase(name, value) for name, value in self.attributes.items() if name not in declared]
        names_in = [io.name for io in spec.inputs]
        missing += [name for name in self.inputs if name not in names_in]
        names_out = [io.name for io in spec.outputs]
        missing += [name for name in self.outputs if name not in names_out]
        return missing


def _phrase(name: str, value: Any) -> str:
    return f"{name} = {value:g}" if isinstance(value, float) else f"{name} = {value}"


def is_read(value: ir.Value | None) -> bool:
    return value is not None and bool(value.name) and (bool(value.uses()) or value.is_graph_output())


def feature_usage(node: ir.Node, spec: OpSpec) -> Usage:
    """The features `node` (an op of `spec`) uses, read from its attributes, inputs and outputs."""
    attributes = {}
    for attr in FEATURE_ATTRIBUTES:
        given = node.attributes.get(attr.name)
        if given is None or given.is_ref() or given.value == attr.default:
            continue
        attributes[attr.name] = given.value
    inputs = tuple(io.name for index, io in enumerate(spec.inputs)
                   if io.name in _FEATURE_INPUT_NAMES and index < len(node.inputs) and node.inputs[index] is not None)
    outputs = tuple(io.name for index, io in enumerate(spec.outputs)
                    if io.name in _FEATURE_OUTPUT_NAMES and index < len(node.outputs) and is_read(node.outputs[index]))
    if "qk_matmul_output" not in outputs:
        attributes.pop("qk_matmul_output_mode", None)  # a mode without its output changes nothing
    return Usage(attributes, inputs, outputs)


def check_op_fits(graph: ir.Graph, node: ir.Node, source: OpSpec, target: OpSpec) -> None:
    """Make `node` (an op of `source`) fit `target`: nothing to do when `target` declares every feature the
    node uses; a KV cache inside the op is moved in front of it; anything else raises SiteRefused."""
    usage = feature_usage(node, source)
    missing = usage.missing_in(target)
    if not missing:
        return
    others = [m for m in missing if m not in CACHE_INPUTS + CACHE_OUTPUTS]
    if others:
        raise SiteRefused(f"{target.name} cannot honour {', '.join(others)} of this site; it stays {source.name} "
                          f"(give it op = \"{source.name}\" in the recipe, or leave it out of the entry)")
    reason = detach_cache(graph, node)
    if reason is not None:
        raise SiteRefused(f"{target.name} takes no KV cache inside the op, and {reason}; the site stays {source.name}")


def detach_cache(graph: ir.Graph, node: ir.Node) -> str | None:
    """Move the KV cache of an attention node in front of it: K <- Concat(past_key, K) (likewise V), the
    present outputs become those Concat outputs (or the 4-D new keys without a cache), causal 1 (aligned
    after the cache) becomes 2 (lower-right: the same when the new keys are as many as the queries).
    Returns why it cannot (nothing changed), or None."""
    past_key, past_value = (node.inputs[i] if i < len(node.inputs) else None for i in (4, 5))
    query, key, value = node.inputs[0], node.inputs[1], node.inputs[2]
    if (past_key is None) != (past_value is None) or query is None or key is None or value is None:
        return "its KV cache inputs are incomplete"
    four_dims = len(dims(query) or []) == 4
    causal = node.attributes.get_int("causal", 0)
    if past_key is not None and causal == 1 and not _same_length(query, key, 2 if four_dims else 1):
        return "the query and new key lengths are not provably equal (the causal diagonal sits after the cache)"
    heads = node.attributes.get_int("kv_num_heads", 0) or node.attributes.get_int("q_num_heads", 0)
    if not four_dims and heads <= 0:
        return "the head count of the 3-D keys is unknown"
    new_nodes: list[ir.Node] = []
    key_pair = _concatenated(node, new_nodes, "key", past_key, key, four_dims, heads)
    value_pair = _concatenated(node, new_nodes, "value", past_value, value, four_dims, heads)
    graph.insert_before(node, new_nodes)
    for index, (present, total) in enumerate((key_pair, value_pair), 1):
        if index < len(node.outputs):
            _take_over(node.outputs[index], present)
        node.replace_input_with(index, total)
    node.resize_inputs(min(len(node.inputs), 4))
    while node.inputs and node.inputs[-1] is None:
        node.resize_inputs(len(node.inputs) - 1)
    node.resize_outputs(1)
    if past_key is not None and causal == 1:
        node.attributes["causal"] = ir.AttrInt64("causal", 2)
    return None


def _same_length(query: ir.Value, key: ir.Value, axis: int) -> bool:
    q_len, k_len = (dims(query) or [None] * 4)[axis], (dims(key) or [None] * 4)[axis]
    return q_len is not None and canonical_dim(q_len) == canonical_dim(k_len)


def _concatenated(node: ir.Node, new_nodes: list[ir.Node], what: str, past: ir.Value | None, new: ir.Value,
                  four_dims: bool, heads: int) -> tuple[ir.Value, ir.Value]:
    """(present [B, Hkv, T, d], the node's new K or V input in its own layout)."""
    prefix = f"{node.name}/cache_{what}"

    def add(op_type: str, inputs: list[ir.Value], rank: int | None, **attrs: Any) -> ir.Value:
        made = ir.node(op_type, inputs, attributes=attrs, name=f"{prefix}_{op_type}_{len(new_nodes)}")
        out = made.outputs[0]
        out.name = f"{prefix}_{len(new_nodes)}"
        if rank is not None:
            out.dtype, out.shape = new.dtype, ir.Shape([None] * rank)
        new_nodes.append(made)
        return out

    def shape(*values: int) -> ir.Value:
        return add("Constant", [], None, value=ir.tensor(np.array(values, np.int64)))

    if four_dims:  # (without a cache the present output is the new keys: an Identity, so it keeps its own name)
        present = add("Concat", [past, new], 4, axis=2) if past is not None else add("Identity", [new], 4)
        return present, (present if past is not None else new)
    split = add("Transpose", [add("Reshape", [new, shape(0, 0, heads, -1)], 4)], 4, perm=[0, 2, 1, 3])
    if past is None:
        return split, new
    present = add("Concat", [past, split], 4, axis=2)
    return present, add("Reshape", [add("Transpose", [present], 4, perm=[0, 2, 1, 3]), shape(0, 0, -1)], 3)


def _take_over(old: ir.Value, new: ir.Value) -> None:
    """`new` replaces `old` for every reader and as a graph output (keeping the output's name)."""
    was_output = old.is_graph_output()
    ir.convenience.replace_all_uses_with(old, new, replace_graph_outputs=True)
    if was_output and old.name:
        name = old.name
        old.name = None
        new.name = name
    if old.shape is not None:
        new.shape = old.shape
