"""Which edgeattn nodes of a TensorRT-form model become plugin layers, and the kernels their engine carries.

For every edgeattn node, the op's `PluginDef` (`edgeattn/ops/<op>/trt.py`) reads what the graph knows of the
node (element types, static shapes, a constant mask) and names the kernel build it needs, or why there is
none (float32, a mask the kernels do not apply, a statistics output...). Builds are compiled ahead of time
for every target architecture (`edgeattn.kernels.aot_bundle`, in a child process) and handed to the plugin
creators by node name; a node without a kernel gets a `plugin_version` no plugin has, so TensorRT's parser
inlines its function body even with the plugin-override flag set.

`register(trt, plan)` registers one creator per op for one build and `unregister` removes them: the creators
hold the bundles of one compile only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from edgeattn.errors import EdgeAttnError

__all__ = ["NodePlan", "PluginPlan", "plan_plugins", "register", "unregister", "kernel_reason"]


@dataclass
class NodePlan:
    node: str
    op: str
    plugin: bool
    reason: str | None = None  # why the node keeps its function body
    kernel: str | None = None  # family/variant of the kernel build, for plugins
    tactics: list[str] | None = None  # the variant of every build the plugin offers TensorRT as a tactic


@dataclass
class PluginPlan:
    nodes: list[NodePlan] = field(default_factory=list)
    bundles: dict[str, bytes] = field(default_factory=dict)  # node name -> kernel bundle
    definitions: dict[str, Any] = field(default_factory=dict)  # node op_type -> PluginDef, for plugin nodes

    def for_node(self, name: str) -> NodePlan | None:
        return next((n for n in self.nodes if n.node == name), None)


def _view(node: Any, model: Any, longest: int | None = None) -> Any:
    """The NodeView of an onnx-ir node in the TensorRT form."""
    from edgeattn.ops.trt_plugin import ONNX_TYPES, InputView, NodeView

    attrs = {name: attr.value for name, attr in node.attributes.items()}
    attrs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in attrs.items()}
    present = attrs.pop("present_inputs", None)
    inputs = []
    for value in node.inputs:
        if value is None:
            inputs.append(InputView(None, None))
            continue
        shape = None
        if value.shape is not None:
            shape = tuple(d if isinstance(d, int) else None for d in value.shape)
        constant = None
        tensor = value.const_value
        producer = value.producer()
        if tensor is None and producer is not None and producer.op_type == "Constant" and producer.domain in ("", "ai.onnx"):
            attr = producer.attributes.get("value")
            tensor = attr.value if attr is not None else None
        if tensor is not None:
            try:
                constant = np.asarray(tensor.numpy())
            except Exception:  # noqa: BLE001 - external data not at hand: not a known constant
                constant = None
        dtype = ONNX_TYPES.get(int(value.dtype)) if value.dtype is not None else None
        inputs.append(InputView(dtype, shape, constant))
    positions = tuple(int(p) for p in present) if present is not None else tuple(range(len(inputs)))
    return NodeView(attrs, tuple(inputs), positions, len(node.outputs), longest)


def kernel_reason(node: Any, model: Any, spec: Any, longest: int | None = None) -> tuple[Any, Any]:
    """(PluginDef, KernelChoice) for a node its op's plugin can compute, else (PluginDef or None, reason)."""
    definition = spec.plugin_def()
    if definition is None:
        return None, f"{spec.name} has no GPU kernel yet (its function body runs in TensorRT)"
    return definition, definition.choose(_view(node, model, longest))


def plan_plugins(model_proto: Any, archs: Sequence[int], use_plugins: bool = True,
                 longest: int | None = None) -> tuple[bytes, PluginPlan]:
    """The serialized model for the parser (body nodes re-versioned) and its plan. `archs`: the AOT targets;
    `longest`: the largest symbolic dim of the engine's profile (kernels size their selection tiles by it)."""
    import onnx_ir as ir

    from edgeattn.graphs.attach import spec_of
    from edgeattn.kernels.aot_bundle import compile_records
    from edgeattn.kernels.triton_aot import AotBuildError
    from edgeattn.ops.registry import default_registry
    from edgeattn.ops.trt_plugin import BODY_VERSION_SUFFIX, Bundle

    model = ir.serde.deserialize_model(model_proto)
    fill_edgeattn_shapes(model)
    plan = PluginPlan()
    requests: list[tuple[Any, Any, Any]] = []  # (node, definition, choice)
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        spec = spec_of(node, default_registry())
        if spec is None:
            continue
        if not use_plugins:
            definition, choice = None, "plugins turned off (--no-plugins)"
        else:
            definition, choice = kernel_reason(node, model, spec, longest)
        if isinstance(choice, str):
            plan.nodes.append(NodePlan(node.name, spec.name, False, reason=choice))
            version = node.attributes.get("plugin_version")
            text = version.value if version is not None else str(spec.version)
            node.attributes["plugin_version"] = ir.AttrString("plugin_version", f"{text}{BODY_VERSION_SUFFIX}")
            continue
        requests.append((node, definition, choice))
    flat = [{"family": c.family, "build_class": c.build_class, "build": dict(b), "arch": a}
            for _, _, c in requests for b in c.builds for a in archs]  # fmt: skip
    try:
        records = compile_records(flat)
    except AotBuildError as err:
        raise EdgeAttnError(f"no kernel for this target: {err}") from None
    at = 0
    for node, definition, choice in requests:
        by_arch: dict[int, list[Any]] = {a: [] for a in archs}
        for _build in choice.builds:
            for arch in archs:
                by_arch[arch].append(records[at])
                at += 1
        view = _view(node, model, longest)
        plan.bundles[node.name] = Bundle(view.present, len(node.outputs), by_arch).to_bytes()
        plan.definitions[node.op_type] = definition
        variants = [record.get("variant", "") for record in next(iter(by_arch.values()))]
        plan.nodes.append(NodePlan(node.name, definition.op.name, True, kernel=f"{choice.family}/{variants[0]}",
                                   tactics=variants))
    return ir.serde.serialize_model(model).SerializeToString(), plan


def fill_edgeattn_shapes(model: Any) -> None:
    """Output shapes of edgeattn nodes that the file leaves unknown, from each op's shape rule (graph order is
    topological, so a node reads what the nodes before it were given): ONNX shape inference stops at them."""
    import onnx_ir as ir

    from edgeattn.graphs.attach import spec_of
    from edgeattn.ops.registry import default_registry

    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        spec = spec_of(node, default_registry())
        if spec is None:
            continue
        names = {a.name for a in spec.attributes}
        try:
            attrs = spec.resolve({k: a.value for k, a in node.attributes.items() if k in names})
        except ValueError:
            continue
        present_attr = node.attributes.get("present_inputs")
        present = list(present_attr.value) if present_attr is not None else list(range(len(node.inputs)))
        shapes: list[Any] = [None] * len(spec.inputs)
        for position, value in zip(present, node.inputs):
            if value is not None and value.shape is not None and 0 <= position < len(shapes):
                shapes[position] = [d if isinstance(d, int) else (d.value if d.value else None) for d in value.shape]
        for value, shape in zip(node.outputs, spec.infer_shapes(shapes, attrs)):
            if value.shape is None and shape is not None:
                value.shape = ir.Shape(shape)


def register(trt: Any, plan: PluginPlan) -> list[Any]:
    """Register a creator for every op the plan gives to plugins; returns them (keep them alive)."""
    from edgeattn.ops.trt_plugin import NAMESPACE, creator_for

    registry = trt.get_plugin_registry()
    creators = []
    for op_type, definition in plan.definitions.items():
        existing = registry.get_creator(op_type, str(definition.op.version), NAMESPACE)
        if existing is not None:
            registry.deregister_creator(existing)
        creator = creator_for(trt, definition, plan.bundles, op_type)
        if not registry.register_creator(creator, NAMESPACE):
            raise EdgeAttnError(f"TensorRT refused the plugin creator of {op_type}")
        creators.append(creator)
    return creators


def unregister(trt: Any, creators: Sequence[Any]) -> None:
    registry = trt.get_plugin_registry()
    for creator in creators:
        registry.deregister_creator(creator)


def fields_read_back(creator: Any) -> Mapping[str, dict[str, Any]]:
    """What the parser handed each plugin node (node name -> attributes), for compile.json and tests."""
    return {name: attrs for name, attrs in creator.created}


def tensorrt_nodes(model: Any) -> list[dict[str, Any]]:
    """For each edgeattn node of an onnx-ir model in the TensorRT form: whether `edgeattn compile` would make it
    a plugin layer (and with which kernel family) or inline its function body, and why (what `inspect` shows).
    Nodes written for onnxruntime are judged in the TensorRT form compile brings them to (on a copy)."""
    import onnx_ir as ir

    from edgeattn.errors import GraphError
    from edgeattn.graphs.attach import attach_bodies, is_trt_form, spec_of
    from edgeattn.graphs.pipeline import finish_for_runtime
    from edgeattn.ops.registry import default_registry

    registry = default_registry()
    nodes = [n for n in ir.traversal.RecursiveGraphIterator(model.graph) if spec_of(n, registry) is not None]
    if any(not is_trt_form(n) for n in nodes):
        copy = ir.serde.deserialize_model(ir.serde.serialize_model(model))
        try:
            attach_bodies(copy, "trt", registry)
            finish_for_runtime(copy)
            model = copy
        except GraphError as err:
            return [{"node": n.name, "op": spec_of(n, registry).name, "as": "onnxruntime form",  # type: ignore[union-attr]
                     "reason": f"cannot take the TensorRT form: {err}"} for n in nodes]
    fill_edgeattn_shapes(model)
    rows = []
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        spec = spec_of(node, default_registry())
        if spec is None:
            continue
        row: dict[str, Any] = {"node": node.name, "op": spec.name}
        if not is_trt_form(node):
            row.update({"as": "onnxruntime form", "reason": "written for onnxruntime; compile decides after bringing "
                                                             "it to the TensorRT form"})
        else:
            definition, choice = kernel_reason(node, model, spec)
            if isinstance(choice, str):
                row.update({"as": "function body", "reason": choice})
            else:
                row.update({"as": "plugin", "kernel": choice.family})
        rows.append(row)
    return rows
