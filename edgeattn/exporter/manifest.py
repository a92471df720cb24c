"""``manifest.json``: what an exported folder holds and how to run it."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import onnx_ir as ir

from edgeattn.errors import EdgeAttnError
from edgeattn.paths import confined

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
    """Write ``folder/manifest.json`` atomically (a temporary file renamed into place)."""
    staged = folder / f".{MANIFEST}.{os.getpid()}.tmp"
    try:
        staged.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        os.replace(staged, folder / MANIFEST)
    finally:
        staged.unlink(missing_ok=True)


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """The manifest of an exported folder, checked: every field the runtime reads has the right type and a
    sane range, and every file it names sits inside the folder (no absolute paths, `..` or symlinks out)."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not folder.is_dir():
        raise EdgeAttnError(f"{str(folder)!r} is not a folder; give the folder that `edgeattn export` wrote")
    if not path.is_file():
        raise EdgeAttnError(f"{str(folder)!r} has no {MANIFEST}; run `edgeattn export MODEL --out {folder}` first")
    if path.stat().st_size > MAX_MANIFEST_BYTES:
        raise EdgeAttnError(f"{path} is {path.stat().st_size} bytes, far more than a manifest; re-export the folder")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise EdgeAttnError(f"{path} is not UTF-8 text; re-export the folder") from None
    except json.JSONDecodeError as err:
        raise EdgeAttnError(f"{path} is not valid JSON ({err.msg} at line {err.lineno})") from None
    except RecursionError:
        raise EdgeAttnError(f"{path} nests too deeply to be a manifest; re-export the folder") from None
    check_manifest(manifest, folder)
    return manifest


MAX_MANIFEST_BYTES = 64 * 1024**2
FAMILIES = ("decoder", "encoder", "vision", "vlm")
_NEEDS = {"decoder": ("embed", "decoder"), "vlm": ("vision", "embed", "decoder"), "encoder": ("encoder",),
          "vision": ("vision",)}
_MAX_DIM = 1 << 24


def check_manifest(manifest: Any, folder: Path) -> None:
    """Raise one EdgeAttnError line for the first field that is missing, mistyped or out of range."""
    path = folder / MANIFEST
    where = str(path)

    def bad(field: str, wanted: str) -> EdgeAttnError:
        return EdgeAttnError(f"{where}: field {field!r} must be {wanted}; re-export the folder")

    if not isinstance(manifest, dict):
        raise EdgeAttnError(f"{where} holds {type(manifest).__name__}, not a JSON object; re-export the folder")
    if manifest.get("format") != FORMAT:
        raise EdgeAttnError(f"{where} has format {_short(manifest.get('format'))}; this edgeattn reads {FORMAT!r}")
    family = manifest.get("family")
    if family not in FAMILIES:
        raise bad("family", f"one of {', '.join(FAMILIES)}")
    components = manifest.get("components")
    if not isinstance(components, dict):
        raise bad("components", "an object of component name -> {file: ...}")
    for name in _NEEDS[family]:
        if name not in components:
            raise EdgeAttnError(f"{where} is a {family} export without the {name!r} component; re-export the folder")
    for name, comp in components.items():
        if not isinstance(comp, dict) or not isinstance(comp.get("file"), str):
            raise bad(f"components.{name}", "an object with a 'file' name")
        file = confined(folder, comp["file"], source=where, what=f"file of component {name!r}")
        if not file.is_file():
            raise EdgeAttnError(f"{where} lists component {name!r} but {comp['file']} is missing from {folder}")
    tokenizer = manifest.get("tokenizer")
    if tokenizer is not None:
        if not isinstance(tokenizer, str) or not confined(folder, tokenizer, source=where, what="tokenizer folder").is_dir():
            raise bad("tokenizer", "the name of the tokenizer folder inside the export (or null)")
    if family in ("decoder", "vlm"):
        geometry = manifest.get("decoder")
        if not isinstance(geometry, dict):
            raise bad("decoder", "an object with the decoder's geometry")
        for key in ("num_layers", "num_kv_heads", "head_size"):
            _int_field(geometry.get(key), f"decoder.{key}", 1, _MAX_DIM, bad)
        if geometry.get("max_positions") is not None:
            _int_field(geometry["max_positions"], "decoder.max_positions", 1, 1 << 40, bad)
        eos = geometry.get("eos_token_ids", [])
        if not isinstance(eos, list) or not all(isinstance(e, int) and not isinstance(e, bool) for e in eos):
            raise bad("decoder.eos_token_ids", "a list of token ids")
    if family in ("vision", "vlm"):
        _check_vision(manifest.get("vision"), bad)
    if family == "vlm":
        _int_field(manifest.get("image_token_id"), "image_token_id", 0, 1 << 40, bad)
        _int_field(manifest.get("image_token_count"), "image_token_count", 1, _MAX_DIM, bad)


def _check_vision(vision: Any, bad: Any) -> None:
    if not isinstance(vision, dict):
        raise bad("vision", "an object with the image size, mean and std")
    _int_field(vision.get("image_size"), "vision.image_size", 1, 8192, bad)
    for key in ("mean", "std"):
        values = vision.get(key)
        if (not isinstance(values, list) or len(values) != 3
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values)):
            raise bad(f"vision.{key}", "a list of 3 finite numbers")
    if not all(v != 0 for v in vision["std"]):
        raise bad("vision.std", "non-zero")


def _int_field(value: Any, field: str, low: int, high: int, bad: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise bad(field, f"an integer in [{low}, {high}]")
    return value


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
