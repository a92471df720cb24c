"""Giving each rewritten site the op its recipe entry asks for (all sites start as edgeattn.Attention).

Every op of kind "attention" takes the attention inputs first (Q, K, V, mask) and the site's own
attributes (scale, causal, heads); the recipe adds its parameters. A site that uses more of the
standard Attention contract than the chosen op declares (softcap, windows, a KV cache, ...) is refused
for that op (`features.SiteRefused`) and keeps the op it has. A tunable parameter read from a
graph input becomes that input of the node (the graph input is created once, shared by name).
"""

from __future__ import annotations

from typing import Any

import onnx_ir as ir

from edgeattn.errors import RecipeError
from edgeattn.graphs.features import check_op_fits
from edgeattn.graphs.recipe import KEEP, Assignment
from edgeattn.ops.registry import Registry
from edgeattn.ops.spec import AttrSpec, OpSpec

_ATTENTION_INPUTS = 4
_INPUT_TYPES = {"float": ir.DataType.FLOAT, "int": ir.DataType.INT64}


def assign_op(graph: ir.Graph, node: ir.Node, assignment: Assignment, registry: Registry) -> bool:
    """Make `node` the op `assignment` asks for; returns whether the node changed. Raises SiteRefused
    (and changes nothing) when that op cannot honour what the site uses (`features.check_op_fits`)."""
    if assignment.op == KEEP:
        return False
    spec = registry.get(assignment.op)
    source = registry.find(node.domain, node.op_type)
    if source is not None and source.name != spec.name:
        check_op_fits(graph, node, source, spec)
    before = (node.op_type, _attribute_values(node), tuple(node.inputs))
    site_values = {a.name: node.attributes[a.name].value for a in spec.attributes
                   if a.from_site and a.name in node.attributes and not node.attributes[a.name].is_ref()}
    values = spec.resolve({**site_values, **assignment.params})
    for name in assignment.inputs:
        values.pop(name, None)
    node.op_type = spec.name
    node.attributes.clear()
    for name, value in values.items():
        attr = spec.attribute(name)
        if not (attr.optional and value == attr.default):  # an unused part of the contract stays unwritten
            node.attributes[name] = _attr(attr, value)
    _set_tunable_inputs(graph, node, source or spec, spec, assignment)
    return before != (node.op_type, _attribute_values(node), tuple(node.inputs))


def _attribute_values(node: ir.Node) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted((name, attr.value) for name, attr in node.attributes.items()))


def _attr(spec: AttrSpec, value: Any) -> ir.Attr:
    kinds = {"int": ir.AttributeType.INT, "float": ir.AttributeType.FLOAT, "string": ir.AttributeType.STRING,
             "ints": ir.AttributeType.INTS, "floats": ir.AttributeType.FLOATS}
    return ir.Attr(spec.name, kinds[spec.kind], list(value) if isinstance(value, tuple) else value)


def _set_tunable_inputs(graph: ir.Graph, node: ir.Node, source: OpSpec, spec: OpSpec, assignment: Assignment) -> None:
    """The inputs after the attention ones: a tunable one from its graph input when the recipe asks, an
    input both ops declare at that position (a KV cache of Attention) kept, anything else dropped."""
    wanted = {spec.tunable_input_index(attr): name for attr, name in assignment.inputs.items()}
    size = max([len(node.inputs), *(index + 1 for index in wanted)])
    node.resize_inputs(size)
    for index in range(_ATTENTION_INPUTS, size):
        if index in wanted:
            attr = spec.inputs[index].tunable_for
            node.replace_input_with(index, _graph_input(graph, wanted[index], spec.attribute(attr or "")))
        elif not _same_input(source, spec, index):
            node.replace_input_with(index, None)
    while node.inputs and node.inputs[-1] is None:
        node.resize_inputs(len(node.inputs) - 1)


def _same_input(source: OpSpec, spec: OpSpec, index: int) -> bool:
    """Whether input `index` means the same for both ops (a non-tunable input of one name)."""
    if index >= len(source.inputs) or index >= len(spec.inputs):
        return False
    mine, theirs = source.inputs[index], spec.inputs[index]
    return mine.name == theirs.name and theirs.tunable_for is None


def _graph_input(graph: ir.Graph, name: str, attr: AttrSpec) -> ir.Value:
    """The scalar graph input `name` (created if missing) that carries a tunable parameter."""
    dtype = _INPUT_TYPES.get(attr.kind)
    if dtype is None:
        raise RecipeError(f"parameter '{attr.name}' of kind {attr.kind} cannot come from a graph input")
    for value in graph.inputs:
        if value.name == name:
            if value.dtype not in (None, dtype):
                raise RecipeError(f"graph input '{name}' is {value.dtype}, but '{attr.name}' needs {dtype.name}")
            return value
    value = ir.val(name, dtype, ir.Shape([]))
    graph.inputs.append(value)
    return value
