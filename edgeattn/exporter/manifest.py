"""``manifest.json``: what an exported folder holds and how to run it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import onnx_ir as ir

from edgeattn.errors import EdgeAttnError

MANIFEST = "manifest.json"
FORMAT = "edgeattn.manifest/1"


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


def write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def read_manifest(folder: str | Path) -> dict[str, Any]:
    folder = Path(folder)
    path = folder / MANIFEST
    if not folder.is_dir():
        raise EdgeAttnError(f"{str(folder)!r} is not a folder; give the folder that `edgeattn export` wrote")
    if not path.is_file():
        raise EdgeAttnError(f"{str(folder)!r} has no {MANIFEST}; run `edgeattn export MODEL --out {folder}` first")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise EdgeAttnError(f"{path} is not valid JSON ({err.msg} at line {err.lineno})") from None
    if manifest.get("format") != FORMAT:
        raise EdgeAttnError(f"{path} has format {manifest.get('format')!r}; this edgeattn reads {FORMAT!r}")
    for name, comp in manifest.get("components", {}).items():
        if not (folder / comp["file"]).is_file():
            raise EdgeAttnError(f"{path} lists component {name!r} but {comp['file']} is missing from {folder}")
    return manifest
