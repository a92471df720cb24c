"""The float type of an exported folder (`export --dtype`) as onnxruntime on the CPU sees it."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from edgeattn.errors import EdgeAttnError
from edgeattn.manifest import Manifest

# The element type onnxruntime's Python API names for each dtype the manifest records.
_ORT_TYPES = {"fp32": "tensor(float)", "fp16": "tensor(float16)", "bf16": "tensor(bfloat16)"}


def float_array_type(manifest: Manifest) -> type[np.floating]:
    """The numpy type of the folder's float inputs (pixels, empty KV cache). A bf16 folder has none:
    `check_runnable` refuses it first."""
    check_runnable_dtype(manifest)
    return np.float16 if manifest.dtype == "fp16" else np.float32


def check_runnable_dtype(manifest: Manifest, folder: str | Path | None = None) -> None:
    """Refuse, in one line, a bf16 export: onnxruntime's CPU provider lacks bfloat16 kernels for most ops
    (the first one this folder needs is named) and its Python API has no numpy type for bfloat16 tensors."""
    if manifest.dtype != "bf16":
        return
    where = f"{folder} is a bf16 export" if folder is not None else "this is a bf16 export"
    missing = _first_missing_kernel(Path(folder), manifest) if folder is not None else None
    reason = (f"onnxruntime's CPU provider has no bfloat16 kernel for {missing}" if missing
              else "onnxruntime's Python API has no numpy type for bfloat16 inputs and outputs")
    raise EdgeAttnError(f"{where} and {reason}; build a TensorRT engine from it (`edgeattn compile`), or re-export "
                        "with --dtype fp16 or fp32 to run it here")


def check_session_type(session: Any, name: str, manifest: Manifest, file: str) -> None:
    """The graph input ``name`` has the float type the manifest records (a hand-edited folder may not)."""
    for item in session.get_inputs():
        if item.name == name and item.type != _ORT_TYPES[manifest.dtype]:
            raise EdgeAttnError(f"{file} takes {name} as {item.type}, but the manifest says the export is "
                                f"{manifest.dtype}; re-export the folder")


def _first_missing_kernel(folder: Path, manifest: Manifest) -> str | None:
    """The first op onnxruntime's CPU provider names as lacking a kernel for the folder's graphs."""
    from edgeattn.errors import GraphError
    from edgeattn.graphs.session import session_from_onnx

    for entry in manifest.components.values():
        try:
            session_from_onnx(folder / entry.file)
        except GraphError as err:  # onnxruntime's NOT_IMPLEMENTED, in its one line
            found = re.search(r"implementation for (\w+)\((\d+)\)", str(err))
            if found:
                return f"{found.group(1)} (opset {found.group(2)}, in {entry.file})"
    return None
