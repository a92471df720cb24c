"""Writing ONNX files and output folders so that a failure never leaves half a result."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

import onnx_ir as ir

from edgeattn.errors import EdgeAttnError

MANIFEST_NAME = "manifest.json"

# Protobuf cannot hold a file over 2 GiB: larger models keep their weights in a side file.
EXTERNAL_DATA_THRESHOLD = 2 * 1024**3 - 64 * 1024**2


def save_onnx(model: ir.Model, path: Path) -> None:
    """Save, with weights as external data (``<name>.onnx.data``) when the model passes 2 GB."""
    size = sum(t.const_value.nbytes for t in model.graph.initializers.values() if t.const_value is not None)
    if size > EXTERNAL_DATA_THRESHOLD:
        ir.save(model, path, external_data=path.name + ".data")
    else:
        ir.save(model, path)


def check_output_folder(out: Path, force: bool, inputs: Iterable[Path] = ()) -> None:
    """Refuse an output folder that would lose data: one that is, holds or sits inside an input; one that
    exists without ``force``; one that exists and is not a folder edgeattn wrote (``--force`` replaces only
    an export folder: one with an edgeattn manifest, or an empty one)."""
    resolved = out.resolve()
    for source in inputs:
        source = Path(source).resolve()
        if resolved == source or source in resolved.parents or resolved in source.parents:
            raise EdgeAttnError(f"output folder {str(out)!r} is, holds or sits inside the input {str(source)!r}; "
                                "write the export somewhere else")
    if not out.exists() and not out.is_symlink():
        return
    if out.is_symlink() or not out.is_dir():
        raise EdgeAttnError(f"output path {str(out)!r} exists and is not a folder; pick another --out")
    if not force:
        raise EdgeAttnError(f"output folder {str(out)!r} already exists; pass --force to replace it")
    if any(out.iterdir()) and not _is_export_folder(out):
        raise EdgeAttnError(f"output folder {str(out)!r} is not an edgeattn export (no {MANIFEST_NAME}); --force "
                            "replaces only folders edgeattn wrote: pick another --out or remove it yourself")


# The records edgeattn writes into its output folders: a folder holding one of them is edgeattn's.
RECORDS = {MANIFEST_NAME: "edgeattn.manifest/", "compile.json": "edgeattn.compile/"}


def _is_export_folder(folder: Path) -> bool:
    return any(_is_record(folder / name, prefix) for name, prefix in RECORDS.items())


def _is_record(path: Path, prefix: str) -> bool:
    if not path.is_file() or path.is_symlink() or path.stat().st_size > 16 * 1024**2:
        return False
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and str(data.get("format", "")).startswith(prefix)


def remove_stale_stages(out: Path) -> None:
    """Remove the partial folders of ``out`` left by edgeattn processes that no longer run (killed)."""
    pattern = re.compile(rf"^\.{re.escape(out.name)}\.(\d+)\.[^/]*\.(?:partial|old)$")
    if not out.parent.is_dir():
        return
    for entry in out.parent.iterdir():
        found = pattern.match(entry.name)
        if found is None or not entry.is_dir() or entry.is_symlink() or entry.owner() != _me():
            continue
        if not _alive(int(found.group(1))):
            shutil.rmtree(entry, ignore_errors=True)


def _me() -> str:
    import getpass

    return getpass.getuser()


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def staged_folder(out: Path, force: bool, inputs: Iterable[Path] = ()) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``out``; on success it replaces ``out`` in one rename.

    ``out`` is checked before anything runs and again just before the rename (`check_output_folder`):
    a folder that appeared meanwhile is refused unless ``force``. On any error or interruption the
    temporary folder is removed and ``out`` is left as it was. Partial folders of killed runs are removed.
    """
    out = Path(out)
    check_output_folder(out, force, inputs)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_stages(out)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.{os.getpid()}.", suffix=".partial", dir=out.parent))
    try:
        yield stage
        check_output_folder(out, force, inputs)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(stage, 0o777 & ~umask)  # mkdtemp makes it private; the result is an ordinary folder
        _replace(stage, out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


def _replace(stage: Path, out: Path) -> None:
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.{os.getpid()}.", suffix=".old", dir=out.parent))
        os.replace(out, old / out.name)
    try:
        os.rename(stage, out)  # fails when a non-empty folder took the name meanwhile
    except OSError:
        if old is not None:
            os.replace(old / out.name, out)
            shutil.rmtree(old, ignore_errors=True)
        raise EdgeAttnError(f"output folder {str(out)!r} appeared while exporting; nothing was replaced, "
                            "run again (with --force to replace it)") from None
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
