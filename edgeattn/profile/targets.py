"""What a TARGET of `edgeattn profile` is: an exported folder or an ONNX file, with a short label.

A TensorRT engine is refused in one line: running it needs a GPU with TensorRT, and onnxruntime
profiles the ONNX file it was built from. Folders and files are only read here; nothing is written.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from edgeattn.manifest import MANIFEST, Manifest, read_manifest
from edgeattn.profile.settings import MAX_TARGETS, ProfileError

ENGINE_SUFFIXES = (".engine", ".plan", ".trt")
# What each kind measures per run: one session call, or one generation request.
SESSION_KINDS = ("onnx", "encoder", "vision")
REQUEST_KINDS = ("decoder", "vlm")


@dataclass(frozen=True)
class Target:
    """One thing to measure: `kind` is "onnx" for a file, else the folder's family."""

    path: Path
    label: str
    kind: str
    manifest: Manifest | None = None

    @property
    def primary(self) -> str:
        """The metric targets are compared by: a whole request for decoders, one run otherwise."""
        return "request" if self.kind in REQUEST_KINDS else "run"


def open_target(text: str, label: str | None = None) -> Target:
    """The target `text` names; ProfileError (one line) when it is no folder, ONNX file or is an engine."""
    path = Path(text)
    if path.suffix.lower() in ENGINE_SUFFIXES:
        raise ProfileError(f"{text} is a TensorRT engine; running engines needs a GPU with TensorRT, which this "
                           "machine lacks; profile the ONNX file it was built from instead")
    if path.is_dir():
        if not (path / MANIFEST).is_file():
            raise ProfileError(f"{text} is a folder without {MANIFEST}; give a folder `edgeattn export` wrote, "
                               "or an .onnx file")
        manifest = read_manifest(path)
        return Target(path, label or path.name, manifest.family, manifest)
    if not path.exists():
        raise ProfileError(f"{text} does not exist; give an exported folder or an .onnx file")
    if not path.is_file() or path.suffix.lower() != ".onnx":
        raise ProfileError(f"{text} is neither an exported folder nor an .onnx file; give one of those")
    return Target(path, label or path.name, "onnx")


def open_targets(texts: Sequence[str]) -> list[Target]:
    """The targets, labelled by their names (made unique), all compared by the same metric."""
    if not texts:
        raise ProfileError("give at least one TARGET (an exported folder or an .onnx file)")
    if len(texts) > MAX_TARGETS:
        raise ProfileError(f"give at most {MAX_TARGETS} targets to compare (got {len(texts)})")
    targets = [open_target(text, label) for text, label in zip(texts, unique_labels(texts))]
    kinds = {target.primary for target in targets}
    if len(kinds) > 1:
        described = ", ".join(f"{t.label} ({t.kind})" for t in targets)
        raise ProfileError(f"these targets measure different things and cannot be compared: {described}; "
                           "compare decoder folders with decoder folders, files with files")
    return targets


def unique_labels(texts: Sequence[str]) -> list[str]:
    """Short names for the targets: the last path part, with the folder above it (and then a number)
    where two would read the same."""
    names = [Path(text).name or str(text) for text in texts]
    if len(set(names)) < len(names):
        names = [str(Path(Path(text).parent.name) / Path(text).name) for text in texts]
    seen: dict[str, int] = {}
    labels = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        labels.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
    return labels


__all__ = ["ENGINE_SUFFIXES", "REQUEST_KINDS", "SESSION_KINDS", "Target", "open_target", "open_targets",
           "unique_labels"]
