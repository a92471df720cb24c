"""Reading and writing ONNX files: external data stays external, writes are atomic.

`save` writes the model (and its external data) into a temporary folder beside the destination, then
moves each file into place with os.replace, so a reader never sees a half-written model and a failed
write leaves the old file as it was.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import onnx
import onnx_ir as ir

from edgeattn.errors import GraphError

# onnxruntime 1.31 reads IR version <= 13; node overloads and node metadata need IR version >= 10.
MIN_IR_VERSION = 10
MAX_IR_VERSION = 13
# Above this total initializer size a single protobuf file is impossible (2 GiB limit); go external.
_EXTERNAL_THRESHOLD = 1 << 30


ModelLike = ir.Model | onnx.ModelProto | str | os.PathLike


def load(path: str | os.PathLike) -> ir.Model:
    """An onnx-ir model from `path`; external tensors are memory-mapped, not read."""
    path = Path(path)
    if not path.is_file():
        raise GraphError(f"cannot read {path}: no such file; pass the path of an .onnx file")
    try:
        return ir.load(path)
    except Exception as err:  # onnx raises DecodeError, google.protobuf errors, OSError...
        raise GraphError(f"cannot read {path} as ONNX ({type(err).__name__}: {err}); is it an .onnx file?") from err


def as_model(model: ModelLike) -> ir.Model:
    """An onnx-ir model from a model, a ModelProto or a path (the first is returned as it is)."""
    if isinstance(model, ir.Model):
        return model
    if isinstance(model, onnx.ModelProto):
        return ir.serde.deserialize_model(model)
    return load(model)


def has_external_data(model: ir.Model) -> bool:
    return any(isinstance(v.const_value, ir.ExternalTensor) for g in model.graphs() for v in g.initializers.values())


def _initializer_bytes(model: ir.Model) -> int:
    return sum(v.const_value.nbytes for g in model.graphs() for v in g.initializers.values() if v.const_value is not None)


def save(model: ir.Model, path: str | os.PathLike, *, external_data: bool | None = None) -> Path:
    """Write `model` to `path` atomically. External data (`<name>.data` beside it) when asked, when the
    model was loaded with external data, or when it is too large for one file. Returns the path.

    Overwriting the data file a loaded model reads from leaves that in-memory model pointing at the new
    file: load the written file again before using it."""
    path = Path(path)
    if external_data is None:
        external_data = has_external_data(model) or _initializer_bytes(model) > _EXTERNAL_THRESHOLD
    path.parent.mkdir(parents=True, exist_ok=True)
    data_name = f"{path.name}.data"
    original_ir_version = model.ir_version
    model.ir_version = min(max(model.ir_version, MIN_IR_VERSION), MAX_IR_VERSION)
    if not external_data:
        _inline_external_tensors(model)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        staged = staging / path.name
        ir.save(model, staged, external_data=data_name if external_data else None)
        if external_data:
            os.replace(staging / data_name, path.parent / data_name)
        os.replace(staged, path)
    except OSError as err:
        raise GraphError(f"cannot write {path} ({err}); check the folder exists and is writable") from err
    finally:
        model.ir_version = original_ir_version
        shutil.rmtree(staging, ignore_errors=True)
    return path


def _inline_external_tensors(model: ir.Model) -> None:
    """Read external tensors into memory, so a single-file save does not point at another file."""
    for graph in model.graphs():
        for value in graph.initializers.values():
            if isinstance(value.const_value, ir.ExternalTensor):
                value.const_value = ir.tensor(value.const_value.numpy(), name=value.name)
