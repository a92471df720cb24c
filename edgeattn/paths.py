"""Paths named inside files (a manifest's component files, an ONNX tensor's external-data location).

A file someone hands you is hostile until checked: a name it holds must stay inside the folder the file
lives in. `confined` resolves such a name against the folder's real path and refuses absolute paths,
`..` escapes and symlinks that lead out of the folder, with one line naming the file that said it.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath, PureWindowsPath

from edgeattn.errors import EdgeAttnError

# Names longer than this are not file names anyone wrote by hand; refuse them before touching the disk.
MAX_NAME_CHARS = 1024


class UnsafePathError(EdgeAttnError):
    """A file names a path outside its own folder (absolute, `..`, or a symlink that leads out)."""


def confined(folder: str | os.PathLike, name: object, *, source: str, what: str = "file") -> Path:
    """The path `name` (read from `source`) inside `folder`, resolved; raises UnsafePathError when it
    is not a plain relative name that stays inside the folder's real path."""
    if not isinstance(name, str) or not name or len(name) > MAX_NAME_CHARS or "\x00" in name:
        raise UnsafePathError(f"{source} names the {what} {_shown(name)}, which is not a file name; "
                              "re-create the file with edgeattn")
    if PurePosixPath(name).is_absolute() or PureWindowsPath(name).is_absolute() or PureWindowsPath(name).drive:
        raise UnsafePathError(f"{source} names the {what} {_shown(name)} by an absolute path; files it names "
                              "must sit in its own folder")
    base = Path(folder).resolve()
    target = (base / name).resolve()
    if target != base and base not in target.parents:
        via = " through a symlink" if ".." not in PurePosixPath(name).parts else ""
        raise UnsafePathError(f"{source} names the {what} {_shown(name)}, which leads outside {base}{via}; "
                              "files it names must sit in its own folder")
    return target


def read_text(path: str | os.PathLike, limit: int, what: str, error: type[EdgeAttnError] = EdgeAttnError) -> str:
    """The text of a small file a user hands us: a regular file, at most `limit` bytes, UTF-8. The
    message never shows the content. `error` is the EdgeAttnError subclass the caller raises."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path} does not exist or is not a regular file; pass the path of a {what}")
    size = path.stat().st_size
    if size > limit:
        raise error(f"{path} is {size} bytes, more than the {limit} a {what} may have; is it the right file?")
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise error(f"{path} is not UTF-8 text; save the {what} as UTF-8") from None


def _shown(name: object) -> str:
    text = repr(name)
    return text if len(text) <= 80 else text[:77] + "..."


__all__ = ["MAX_NAME_CHARS", "UnsafePathError", "confined", "read_text"]
