"""ONNX OpSchemas for the registered ops (for exporters that emit edgeattn nodes from torch custom ops)."""

from __future__ import annotations

import onnx
import onnx.defs

from edgeattn.ops.registry import Registry, default_registry
from edgeattn.ops.spec import AttrSpec, IOSpec, OpSpec

def onnx_schema(op: OpSpec) -> onnx.defs.OpSchema:
    single, optional = onnx.defs.OpSchema.FormalParameterOption.Single, onnx.defs.OpSchema.FormalParameterOption.Optional
    type_params: dict[tuple[str, ...], str] = {}

    def formal(io: IOSpec) -> onnx.defs.OpSchema.FormalParameter:
        type_str = type_params.setdefault(io.types, f"T{len(type_params)}")
        return onnx.defs.OpSchema.FormalParameter(
            io.name, type_str, io.doc, param_option=optional if io.optional else single
        )

    inputs = [formal(io) for io in op.inputs]
    outputs = [formal(io) for io in op.outputs]
    return onnx.defs.OpSchema(
        op.name,
        op.domain,
        op.version,
        doc=op.doc,
        inputs=inputs,
        outputs=outputs,
        type_constraints=[(name, list(types), "") for types, name in type_params.items()],
        attributes=[_attribute(a) for a in op.attributes],
    )


_PROTO_TYPES = {
    "int": onnx.AttributeProto.INT,
    "float": onnx.AttributeProto.FLOAT,
    "string": onnx.AttributeProto.STRING,
    "ints": onnx.AttributeProto.INTS,
    "floats": onnx.AttributeProto.FLOATS,
}


def _attribute(attr: AttrSpec) -> onnx.defs.OpSchema.Attribute:
    value = attr.coerce(attr.default)
    value = list(value) if isinstance(value, tuple) else value
    proto = onnx.helper.make_attribute(attr.name, value, attr_type=_PROTO_TYPES[attr.kind])
    return onnx.defs.OpSchema.Attribute(attr.name, proto, attr.doc)


def register_onnx_schemas(registry: Registry | None = None) -> list[str]:
    """Register every op's schema with onnx once; returns the names newly registered.

    onnx.reference (imported by onnxscript) builds its op table at import time and refuses two ops of
    one name in different domains (edgeattn.Attention next to ONNX Attention); it is imported first so
    that table is built before these schemas exist."""
    import onnx.reference.op_run  # noqa: F401  (see the docstring)

    added = []
    for op in registry or default_registry():
        if onnx.defs.has(op.name, op.version, op.domain):
            continue
        onnx.defs.register_schema(onnx_schema(op))
        added.append(op.name)
    return added
