"""Lowering edgeattn nodes for a target: attach the function bodies (and, for TensorRT, the plugin form).

- `ort`: each node names (by overload) the body specialised for it; onnxruntime inlines the bodies.
- `trt`: each node takes its plugin's fixed signature and attributes of plugin-field kinds only, and
  becomes what TensorRT's ONNX parser looks a plugin up by: op_type `Edge<Op>` (`EdgeAttention`, ...),
  attributes `plugin_namespace` ("edgeattn") and `plugin_version` (the op's version). The parser ignores
  the node's domain, so the op_type itself must be one no built-in importer takes (`Attention` is the
  standard ONNX op's). The node's function body (the fallback a TensorRT without the plugin inlines) is
  named like the node, because the parser finds local functions by name alone (no domain, no overload):
  when the nodes of one op need different bodies in one model, each body gets its own name
  `Edge<Op>_<digest of the body>`. The parser maps a function's formal inputs one to one onto the
  node's inputs and cannot map an absent (empty-named) one, so in this form a node passes only its
  present inputs and its body declares exactly those; a node that skips an optional input before a
  present one says which positions it passes in the attribute `present_inputs`.
  docs/tensorrt.md has the whole form.
"""

from __future__ import annotations

import hashlib
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
# The TensorRT form (see the module docstring).
TRT_PREFIX = "Edge"
PLUGIN_NAMESPACE = DOMAIN
PLUGIN_NAMESPACE_ATTR, PLUGIN_VERSION_ATTR, PRESENT_INPUTS_ATTR = "plugin_namespace", "plugin_version", "present_inputs"
_TRT_ONLY_ATTRS = (PLUGIN_NAMESPACE_ATTR, PLUGIN_VERSION_ATTR, PRESENT_INPUTS_ATTR)


def trt_op_type(spec: OpSpec) -> str:
    """The op_type of `spec`'s nodes in the TensorRT form (the plugin's name): `Edge<Op>`."""
    return TRT_PREFIX + spec.name


def is_trt_form(node: ir.Node) -> bool:
    return node.domain == EDGEATTN and PLUGIN_NAMESPACE_ATTR in node.attributes


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
    trt_calls: list[tuple[ir.Node, OpSpec, CallFacts, str]] = []
    trt_types: set[int | None] = set()
    count = 0
    for node in list(edgeattn_nodes(model)):
        spec = _spec(node, registry)
        if is_trt_form(node):
            _from_trt(node, spec)
        _write_defaults(node, spec, target)
        if target == "trt":
            _to_trt(node, spec)
            if spec.kind == "attention":
                trt_types.add(node.inputs[0].dtype if node.inputs[0] is not None else None)
        call = call_facts(node, spec, opset)
        try:
            key = spec.function_key(call, target)
            if target == "trt":
                trt_calls.append((node, spec, call, key))
            else:
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
    if trt_calls:
        bodies.update(_trt_bodies(trt_calls))
    for identifier in [i for i in model.functions if i[0] == EDGEATTN and i not in bodies]:
        del model.functions[identifier]
    for identifier, body in bodies.items():
        model.functions[identifier] = body
    if count:
        model.opset_imports[EDGEATTN] = 1
    return count


def _trt_bodies(calls: list[tuple[ir.Node, OpSpec, CallFacts, str]]) -> dict[tuple[str, str, str], ir.Function]:
    """Name the nodes and build the bodies of the TensorRT form: one body per (op, body key, inputs passed);
    an op's only body is `Edge<Op>`, several are `Edge<Op>_<digest>`."""
    variants: dict[str, dict[tuple[str, tuple[int, ...]], list[tuple[ir.Node, CallFacts]]]] = {}
    specs: dict[str, OpSpec] = {}
    for node, spec, call, key in calls:
        present = tuple(i for i, value in enumerate(node.inputs) if value is not None)
        variants.setdefault(spec.name, {}).setdefault((key, present), []).append((node, call))
        specs[spec.name] = spec
    bodies: dict[tuple[str, str, str], ir.Function] = {}
    for op_name, by_variant in variants.items():
        spec = specs[op_name]
        for (key, present), nodes in by_variant.items():
            name = trt_op_type(spec)
            if len(by_variant) > 1:
                name += "_" + hashlib.sha1(f"{key}|{present}".encode()).hexdigest()[:8]
            node, call = nodes[0]
            try:
                body = spec.build_function(call, "trt", key)
                _keep_formal_inputs(body, present)
            except ValueError as err:
                raise GraphError(f"cannot build the {spec.name} body for node {node.name}: {err}") from err
            _name_trt_body(body, name, spec, present)
            bodies[(EDGEATTN, name, "")] = body
            for node, _ in nodes:
                _name_trt_node(node, name, spec, present)
    return bodies


def _keep_formal_inputs(body: ir.Function, present: tuple[int, ...]) -> None:
    """Drop the formal inputs at positions the nodes do not pass (the bodies built for them never read
    those): TensorRT maps formal inputs one to one onto the node's inputs."""
    inputs = body.graph.inputs
    for position in reversed(range(len(inputs))):
        if position in present:
            continue
        if any(True for _ in inputs[position].uses()):
            raise ValueError(f"the body reads its input {position} ({inputs[position].name}), which the node omits")
        inputs.pop(position)
    if len(inputs) != len(present):
        raise ValueError(f"the body declares {len(inputs)} inputs for a node that passes {len(present)}")


def _name_trt_body(body: ir.Function, name: str, spec: OpSpec, present: tuple[int, ...]) -> None:
    body.name, body.overload = name, ""
    body.attributes.add(ir.AttrString(PLUGIN_NAMESPACE_ATTR, PLUGIN_NAMESPACE))
    body.attributes.add(ir.AttrString(PLUGIN_VERSION_ATTR, str(spec.version)))
    if not _is_prefix(present):
        body.attributes.add(ir.AttrInt64s(PRESENT_INPUTS_ATTR, list(present)))
    for node in body.graph.all_nodes():
        # one name per layer in a TensorRT network: body node names are prefixed with the body's name
        node.name = f"{name}/{node.name}"


def _name_trt_node(node: ir.Node, name: str, spec: OpSpec, present: tuple[int, ...]) -> None:
    node.op_type, node.overload = name, ""
    node.attributes[PLUGIN_NAMESPACE_ATTR] = ir.AttrString(PLUGIN_NAMESPACE_ATTR, PLUGIN_NAMESPACE)
    node.attributes[PLUGIN_VERSION_ATTR] = ir.AttrString(PLUGIN_VERSION_ATTR, str(spec.version))
    if not _is_prefix(present):
        node.attributes[PRESENT_INPUTS_ATTR] = ir.AttrInt64s(PRESENT_INPUTS_ATTR, list(present))
    passed = [node.inputs[i] for i in present]
    node.resize_inputs(len(passed))
    for index, value in enumerate(passed):
        node.replace_input_with(index, value)


def _is_prefix(present: tuple[int, ...]) -> bool:
    return present == tuple(range(len(present)))


def _from_trt(node: ir.Node, spec: OpSpec) -> None:
    """Back from the TensorRT form (a file written with --target trt, rewritten again): the op's own
    name, every input at its position, no plugin attributes."""
    positions_attr = node.attributes.get(PRESENT_INPUTS_ATTR)
    if positions_attr is not None and (positions_attr.is_ref() or positions_attr.type != ir.AttributeType.INTS):
        raise GraphError(f"node {node.name} has a {PRESENT_INPUTS_ATTR} attribute that is not a list of ints")
    positions = list(positions_attr.value) if positions_attr is not None else list(range(len(node.inputs)))
    if len(positions) != len(node.inputs) or sorted(set(positions)) != positions or \
            (positions and not 0 <= positions[-1] < len(spec.inputs)):
        raise GraphError(f"node {node.name} has {PRESENT_INPUTS_ATTR}={positions}, which does not fit its "
                         f"{len(node.inputs)} inputs and the {len(spec.inputs)} inputs of {spec.name}")
    values = list(node.inputs)
    node.resize_inputs(0)
    node.resize_inputs((positions[-1] + 1) if positions else 0)
    for position, value in zip(positions, values):
        node.replace_input_with(position, value)
    for name in _TRT_ONLY_ATTRS:
        node.attributes.pop(name, None)
    node.op_type, node.overload = spec.name, ""


def spec_of(node: ir.Node, registry: Registry) -> OpSpec | None:
    """The op of an edgeattn node, in its own form or in the TensorRT form (`Edge<Op>[_<digest>]`)."""
    spec = registry.find(node.domain, node.op_type)
    if spec is not None or not is_trt_form(node) or not node.op_type.startswith(TRT_PREFIX):
        return spec
    name = node.op_type[len(TRT_PREFIX):]
    spec = registry.find(node.domain, name)
    if spec is None and "_" in name:
        spec = registry.find(node.domain, name.rsplit("_", 1)[0])
    return spec


def _spec(node: ir.Node, registry: Registry) -> OpSpec:
    spec = spec_of(node, registry)
    if spec is None:
        raise GraphError(f"node {node.name} is {node.domain}.{node.op_type}, which this edgeattn does not know; "
                         f"known ops: {', '.join(registry.names())}")
    return spec


def _write_defaults(node: ir.Node, spec: OpSpec, target: Target) -> None:
    """Every attribute written out, except tunables that come from an input: plugins read them all. For
    onnxruntime an optional attribute at its default stays unwritten (the function body declares it)."""
    for attr in spec.attributes:
        if attr.name in node.attributes or (attr.optional and target == "ort"):
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
