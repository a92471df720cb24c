"""The exporter's side of ``manifest.json``: how a component's graph is described in it. The manifest
itself (its type, reading, checking and writing) is `edgeattn.manifest`."""

from __future__ import annotations

from typing import Any

import onnx_ir as ir

__all__ = ["describe_component", "describe_values"]


def describe_values(values: Any) -> list[dict[str, Any]]:
    """Name, dtype and shape (ints, or names for dynamic axes) of graph inputs or outputs."""
    out = []
    for value in values:
        shape = None
        if value.shape is not None:
            shape = [d if isinstance(d, int) else str(d) for d in value.shape]
        dtype = value.dtype.name.lower() if value.dtype is not None else None
        out.append({"name": value.name, "dtype": dtype, "shape": shape})
    return out


def describe_component(model: ir.Model, file: str) -> dict[str, Any]:
    return {
        "file": file,
        "inputs": describe_values(model.graph.inputs),
        "outputs": describe_values(model.graph.outputs),
    }
