"""Reading and writing ONNX files: external data stays external, writes are atomic.

`save` writes the model (and its external data) into a temporary folder beside the destination, then
moves each file into place with os.replace, so a reader never sees a half-written model and a failed
write leaves the old file as it was.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import onnx
import onnx_ir as ir

from edgeattn.errors import EdgeAttnError, GraphError
from edgeattn.paths import confined

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
    if path.stat().st_size == 0:
        raise GraphError(f"cannot read {path}: the file is empty; pass the path of an .onnx file")
    try:
        model = ir.load(path)
    except RecursionError:
        raise GraphError(f"cannot read {path} as ONNX: it nests deeper than any real model") from None
    except Exception as err:  # onnx raises DecodeError, google.protobuf errors, OSError...
        raise GraphError(f"cannot read {path} as ONNX ({type(err).__name__}: {err}); is it an .onnx file?") from err
    if not model.opset_imports:
        raise GraphError(f"{path} declares no opset, so it is not an ONNX model (or it is truncated); "
                         "pass the path of an .onnx file")
    check_external_data(model, path)
    return model


def external_tensors(model: ir.Model) -> Iterator[ir.ExternalTensor]:
    """Every tensor of `model` whose bytes live in another file: initializers and tensor attributes, in
    the main graph, its subgraphs and its functions."""
    graphs = list(model.graphs()) + [f for f in model.functions.values()]
    for graph in graphs:
        if isinstance(graph, ir.Graph):
            for value in graph.initializers.values():
                if isinstance(value.const_value, ir.ExternalTensor):
                    yield value.const_value
        for node in graph:
            for attr in node.attributes.values():
                tensors = attr.value if attr.type == ir.AttributeType.TENSORS else [attr.value]
                if attr.type in (ir.AttributeType.TENSOR, ir.AttributeType.TENSORS):
                    yield from (t for t in tensors if isinstance(t, ir.ExternalTensor))


def check_external_data(model: ir.Model, path: str | os.PathLike) -> None:
    """Refuse external data that leaves the model's folder (absolute paths, `..`, symlinks out), that is
    missing, or that is shorter than the tensor it declares. Points every tensor at the folder's real path,
    so reading no longer depends on the working directory."""
    folder = Path(path).resolve().parent
    sizes: dict[Path, int] = {}
    for tensor in external_tensors(model):
        try:
            target = confined(folder, tensor.location, source=str(path), what="external-data file")
        except EdgeAttnError as err:
            raise GraphError(str(err)) from None
        if target not in sizes:
            if not target.is_file():
                raise GraphError(f"{path} keeps tensor {tensor.name!r} in {tensor.location!r}, which is missing from "
                                 f"{folder}; copy the model together with its data file")
            stat = target.stat()
            if stat.st_nlink > 1:  # a hard link can point anywhere; onnx-ir refuses to read one too
                raise GraphError(f"{path} keeps its weights in {tensor.location!r}, which is a hard link; copy the "
                                 "data file so it has a single name")
            sizes[target] = stat.st_size
        offset = tensor.offset or 0
        end = offset + max(tensor.length or 0, tensor.nbytes)
        if offset < 0 or end > sizes[target]:
            raise GraphError(f"{path} keeps tensor {tensor.name!r} at bytes {offset}-{end} of {tensor.location!r}, "
                             f"which has {sizes[target]} bytes; the data file is truncated or does not belong to "
                             "this model")
        tensor.base_dir = str(folder)


def check_output_file(source: str | os.PathLike, destination: str | os.PathLike, force: bool) -> None:
    """Refuse to write `destination` over the input or its external data, or over an existing file
    without `force` (OUT and OUT.data are what `--force` replaces)."""
    source, destination = Path(source), Path(destination)
    data = destination.with_name(destination.name + ".data")
    inputs = {source.resolve()}
    if source.is_file():
        with contextlib.suppress(Exception):
            model = ir.load(source)
            inputs.update(Path(source.resolve().parent, t.location).resolve() for t in external_tensors(model))
    for target in (destination, data):
        if target.resolve() in inputs:
            raise GraphError(f"{destination} would overwrite the input {source} (or its data file {target.name}); "
                             "write the result to another file")
    if destination.is_dir():
        raise GraphError(f"{destination} is a folder; give the path of the .onnx file to write (a folder OUT "
                         "is written from an exported folder IN)")
    if destination.exists() and not force:
        raise GraphError(f"{destination} already exists; pass --force to replace it")


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
        staged_data = staging / data_name
        if external_data and staged_data.is_file() and staged_data.stat().st_size > 0:
            os.replace(staged_data, path.parent / data_name)
        os.replace(staged, path)
    except OSError as err:
        full = err.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
        advice = "free some disk space or write elsewhere" if full else "check the folder exists and is writable"
        raise GraphError(f"cannot write {path} ({err.strerror or err}); {advice}") from err
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
