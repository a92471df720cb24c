"""Writing ONNX files and output folders so that a failure never leaves half a result."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import onnx_ir as ir

from edgeattn.errors import EdgeAttnError

# Protobuf cannot hold a file over 2 GiB: larger models keep their weights in a side file.
EXTERNAL_DATA_THRESHOLD = 2 * 1024**3 - 64 * 1024**2


def save_onnx(model: ir.Model, path: Path) -> None:
    """Save, with weights as external data (``<name>.onnx.data``) when the model passes 2 GB."""
    size = sum(t.const_value.nbytes for t in model.graph.initializers.values() if t.const_value is not None)
    if size > EXTERNAL_DATA_THRESHOLD:
        ir.save(model, path, external_data=path.name + ".data")
    else:
        ir.save(model, path)


@contextlib.contextmanager
def staged_folder(out: Path, force: bool) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``out``; on success it replaces ``out`` in one rename.

    An existing ``out`` is refused unless ``force``; on any error the temporary folder is removed and
    ``out`` is left as it was.
    """
    out = Path(out)
    if out.exists() and not force:
        raise EdgeAttnError(f"output folder {str(out)!r} already exists; pass --force to replace it")
    if out.exists() and not out.is_dir():
        raise EdgeAttnError(f"output path {str(out)!r} is a file, not a folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(stage, 0o777 & ~umask)  # mkdtemp makes it private; the result is an ordinary folder
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    os.replace(stage, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
