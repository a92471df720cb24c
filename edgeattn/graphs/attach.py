"""Lowering edgeattn nodes for a target: attach the function bodies (and, for TensorRT, the plugin form).

- `ort`: each node names (by overload) the body specialised for it; onnxruntime inlines the bodies.
- `trt`: each node takes its plugin's fixed signature, attributes of plugin-field kinds only, and
  resolves to the op's single generic body (TensorRT looks local functions up by name only), which a
  TensorRT without the plugin falls back to.
"""

from __future__ import annotations

from typing import Iterator, Literal

import onnx_ir as ir

from edgeattn.errors import GraphError
from edgeattn.ops.registry import Registry
from edgeattn.ops.spec import DOMAIN, CallFacts, InputFacts, OpSpec

Target = Literal["ort", "trt"]
TARGETS: tuple[str, ...] = ("ort", "trt")
EDGEATTN = DOMAIN
_TRT_ATTRIBUTE_TYPES = {ir.AttributeType.INT, ir.AttributeType.FLOAT, ir.AttributeType.STRING,
                        ir.AttributeType.INTS, ir.AttributeType.FLOATS}


def edgeattn_nodes(model: ir.Model) -> Iterator[ir.Node]:
    for graph in model.graphs():
        yield from (node for node in graph if node.domain == EDGEATTN)
    for function in list(model.functions.values()):
        if function.domain != EDGEATTN:
            yield from (node for node in function if node.domain == EDGEATTN)


def attach_bodies(model: ir.Model, target: Target, registry: Registry) -> int:
    """Attach the bodies every edgeattn node needs and drop edgeattn bodies no node uses.
    Returns the number of edgeattn nodes."""
    if target not in TARGETS:
        raise GraphError(f"unknown target {target!r}; choose one of: {', '.join(TARGETS)}")
    opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx"))
    if opset is None:
        raise GraphError("the model imports no default ONNX opset; it cannot hold function bodies")
    bodies: dict[tuple[str, str, str], ir.Function] = {}
    trt_types: set[int | None] = set()
    count = 0
    for node in list(edgeattn_nodes(model)):
        spec = _spec(node, registry)
        _write_defaults(node, spec)
        if target == "trt":
            _to_trt(node, spec)
            trt_types.add(node.inputs[0].dtype if node.inputs[0] is not None else None)
        call = call_facts(node, spec, opset)
        try:
            key = spec.function_key(call, target)
            node.overload = key
            identifier = (spec.domain, spec.name, key)
            if identifier not in bodies:
                bodies[identifier] = spec.build_function(call, target, key)
        except ValueError as err:
            raise GraphError(f"cannot build the {spec.name} body for node {node.name}: {err}") from err
        count += 1
    if target == "trt" and opset < 15 and len(trt_types) > 1:
        raise GraphError(f"the TensorRT form at opset {opset} needs one element type for every attention node, "
                         f"found {sorted(str(t) for t in trt_types)}; export at opset >= 15")
    for identifier in [i for i in model.functions if i[0] == EDGEATTN and i not in bodies]:
        del model.functions[identifier]
    for identifier, body in bodies.items():
        model.functions[identifier] = body
    if count:
        model.opset_imports[EDGEATTN] = 1
    return count


def _spec(node: ir.Node, registry: Registry) -> OpSpec:
    spec = registry.find(node.domain, node.op_type)
    if spec is None:
        raise GraphError(f"node {node.name} is {node.domain}.{node.op_type}, which this edgeattn does not know; "
                         f"known ops: {', '.join(registry.names())}")
    return spec


def _write_defaults(node: ir.Node, spec: OpSpec) -> None:
    """Every attribute written out, except tunables that come from an input: plugins read them all."""
    for attr in spec.attributes:
        if attr.name in node.attributes:
            continue
        if attr.tunable and _carried_by_input(node, spec, attr.name):
            continue
        value = list(attr.default) if isinstance(attr.default, tuple) else attr.default
        node.attributes[attr.name] = ir.convenience.convert_attribute(attr.name, value)


def _carried_by_input(node: ir.Node, spec: OpSpec, attr_name: str) -> bool:
    index = spec.tunable_input_index(attr_name)
    return index < len(node.inputs) and node.inputs[index] is not None


def _to_trt(node: ir.Node, spec: OpSpec) -> None:
    for attr in spec.attributes:
        if attr.tunable and _carried_by_input(node, spec, attr.name):
            raise GraphError(f"node {node.name} reads '{attr.name}' from a graph input, but TensorRT plugins need "
                             "it as an attribute; fold the chosen value into the node first")
    for name, attr in node.attributes.items():
        if attr.type not in _TRT_ATTRIBUTE_TYPES:
            raise GraphError(f"attribute {name} of {node.name} is {attr.type.name}, not a TensorRT plugin field kind")
    try:
        spec.to_trt_form(node)
    except ValueError as err:
        raise GraphError(f"cannot write node {node.name} in its TensorRT form: {err}") from err


def call_facts(node: ir.Node, spec: OpSpec, opset: int) -> CallFacts:
    declared = {a.name for a in spec.attributes}
    given = {name: attr.value for name, attr in node.attributes.items() if name in declared and not attr.is_ref()}
    try:
        attributes = spec.resolve(given)
    except ValueError as err:
        raise GraphError(f"node {node.name}: {err}") from err
    inputs = []
    for index in range(len(spec.inputs)):
        value = node.inputs[index] if index < len(node.inputs) else None
        if value is None:
            inputs.append(InputFacts(False))
        else:
            shape = value.shape
            inputs.append(InputFacts(True, len(shape) if shape is not None else None,
                                     int(value.dtype) if value.dtype is not None else None))
    return CallFacts(attributes, tuple(inputs), opset, outputs=len(node.outputs))
