"""``manifest.json``: what an exported folder holds and how to run it, as one typed value.

`Manifest.from_json` is the one place a manifest is validated: every field the runtime reads has its type
and a sane range, every file it names sits inside the folder (no absolute paths, `..` or symlinks out),
and a missing or malformed field is one line naming it. The JSON layout is the schema `FORMAT` names;
`to_json` writes it back unchanged (records the steps add, such as `pruning`, `rewrite` or `validation`,
travel as they are). The exporter assembles the JSON document step by step; `write_manifest` checks it
before anything is written, so no folder holds a manifest this module would refuse.

    manifest = read_manifest("smollm2")
    manifest.family, manifest.decoder.num_kv_heads, manifest.file_of("decoder")
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Mapping, NoReturn

from edgeattn.errors import EdgeAttnError
from edgeattn.paths import UnsafePathError, confined, read_text

MANIFEST = "manifest.json"
SCHEMA_VERSION = 1
FORMAT = f"edgeattn.manifest/{SCHEMA_VERSION}"
FAMILIES = ("decoder", "encoder", "vision", "vlm")
MAX_MANIFEST_BYTES = 64 * 1024**2
_NEEDS = {"decoder": ("embed", "decoder"), "vlm": ("vision", "embed", "decoder"), "encoder": ("encoder",),
          "vision": ("vision",)}
_MAX_DIM = 1 << 24
# `export --dtype` names -> the ONNX / numpy name of the float type of weights, activations and KV cache.
DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
# Manifests written before `--dtype` existed say "float32"; they read as "fp32".
_LEGACY_DTYPES = {"float32": "fp32"}


class ManifestError(EdgeAttnError):
    """A manifest that is missing, unreadable or has a field of the wrong type or range."""


@dataclass(frozen=True)
class ComponentEntry:
    """One ONNX file of the folder: its name, graph inputs and outputs, and what the exporter recorded."""

    file: str
    inputs: tuple[Mapping[str, Any], ...] = ()
    outputs: tuple[Mapping[str, Any], ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)  # export_seconds, info, validate_seconds ...

    def input_names(self) -> list[str]:
        return [str(item.get("name")) for item in self.inputs]


@dataclass(frozen=True)
class DecoderGeometry:
    num_layers: int
    num_kv_heads: int
    head_size: int
    num_heads: int | None = None
    hidden_size: int | None = None
    vocab_size: int | None = None
    max_positions: int | None = None  # the longest sequence (prompt + generated) the positions cover
    eos_token_ids: tuple[int, ...] = ()
    bos_token_id: int | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class VisionInfo:
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    num_image_tokens: int | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)  # num_image_tokens_unpruned, patch size ...

    def preprocess(self) -> dict[str, Any]:
        """What `runtime.images.pixel_values` takes."""
        return {"image_size": self.image_size, "mean": list(self.mean), "std": list(self.std)}


@dataclass(frozen=True)
class Manifest:
    family: str
    components: Mapping[str, ComponentEntry]
    model: str = ""
    tokenizer: str | None = None
    decoder: DecoderGeometry | None = None
    vision: VisionInfo | None = None
    encoder: Mapping[str, Any] | None = None
    image_token_id: int | None = None
    image_token_count: int | None = None
    pruning: Mapping[str, Any] | None = None  # the pruning record (export --prune)
    sparse: Mapping[str, Any] | None = None  # the sparse record (export --sparse)
    rewrite: Mapping[str, Any] | None = None  # the rewrite record (export --rewrite)
    validation: Mapping[str, Any] | None = None  # errors measured against PyTorch, per component
    note: str | None = None
    document: Mapping[str, Any] = field(default_factory=dict)  # the JSON as read (for to_json)
    dtype: str = "fp32"  # a key of DTYPES: the float type of the weights, float inputs/outputs and KV cache
    calibration: Mapping[str, Any] | None = None  # the calibration record (edgeattn calibrate)

    def file_of(self, component: str) -> str:
        return self.components[component].file

    @property
    def float_type(self) -> str:
        """The numpy / ONNX name of `dtype` ("float32", "float16", "bfloat16")."""
        return DTYPES[self.dtype]

    def to_json(self) -> dict[str, Any]:
        return json.loads(json.dumps(self.document))

    @staticmethod
    def from_json(data: Any, folder: str | os.PathLike, source: str | None = None) -> Manifest:
        """Validate `data` (the parsed JSON of `folder`'s manifest); ManifestError names the first bad field."""
        try:
            return _parse(data, Path(folder), source or str(Path(folder) / MANIFEST))
        except UnsafePathError as err:
            raise ManifestError(str(err)) from None


def read_manifest(folder: str | os.PathLike) -> Manifest:
    """The manifest of an exported folder, read and checked (see `Manifest.from_json`)."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not folder.is_dir():
        raise ManifestError(f"{str(folder)!r} is not a folder; give the folder that `edgeattn export` wrote")
    if not path.is_file():
        raise ManifestError(f"{str(folder)!r} has no {MANIFEST}; run `edgeattn export MODEL --out {folder}` first")
    text = read_text(path, MAX_MANIFEST_BYTES, "manifest (re-export the folder)", ManifestError)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ManifestError(f"{path} is not valid JSON ({err.msg} at line {err.lineno})") from None
    except RecursionError:
        raise ManifestError(f"{path} nests too deeply to be a manifest; re-export the folder") from None
    return Manifest.from_json(data, folder, str(path))


def write_manifest(folder: str | os.PathLike, manifest: Manifest | Mapping[str, Any]) -> Manifest:
    """Check and write ``folder/manifest.json`` atomically (a temporary file renamed into place)."""
    folder = Path(folder)
    document = manifest.to_json() if isinstance(manifest, Manifest) else dict(manifest)
    checked = Manifest.from_json(document, folder)
    staged = folder / f".{MANIFEST}.{os.getpid()}.tmp"
    try:
        staged.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
        os.replace(staged, folder / MANIFEST)
    finally:
        staged.unlink(missing_ok=True)
    return checked


# -- validation -----------------------------------------------------------------------------------------


def _parse(data: Any, folder: Path, where: str) -> Manifest:
    def bad(name: str, wanted: str) -> NoReturn:
        raise ManifestError(f"{where}: field {name!r} must be {wanted}; re-export the folder")

    if not isinstance(data, dict):
        raise ManifestError(f"{where} holds {type(data).__name__}, not a JSON object; re-export the folder")
    if data.get("format") != FORMAT:
        raise ManifestError(f"{where} has format {_short(data.get('format'))}; this edgeattn reads {FORMAT!r}")
    family = data.get("family")
    if family not in FAMILIES:
        bad("family", f"one of {', '.join(FAMILIES)}")
    components = _components(data.get("components"), folder, where, bad)
    for name in _NEEDS[family]:
        if name not in components:
            raise ManifestError(f"{where} is a {family} export without the {name!r} component; re-export the folder")
    tokenizer = data.get("tokenizer")
    if tokenizer is not None and (not isinstance(tokenizer, str)
                                  or not confined(folder, tokenizer, source=where, what="tokenizer folder").is_dir()):
        bad("tokenizer", "the name of the tokenizer folder inside the export (or null)")
    decoder = _decoder(data.get("decoder"), bad) if family in ("decoder", "vlm") else None
    vision = _vision(data.get("vision"), bad) if family in ("vision", "vlm") else None
    image_token_id = image_token_count = None
    if family == "vlm":
        image_token_id = _int(data.get("image_token_id"), "image_token_id", 0, 1 << 40, bad)
        image_token_count = _int(data.get("image_token_count"), "image_token_count", 1, _MAX_DIM, bad)
    records = {}
    for name in ("encoder", "pruning", "sparse", "rewrite", "validation", "calibration"):
        value = data.get(name)
        if value is not None and not isinstance(value, dict):
            bad(name, "an object (or null)")
        records[name] = value
    note = data.get("note")
    dtype = data.get("dtype", "fp32")  # absent in manifests older than `export --dtype`
    dtype = _LEGACY_DTYPES.get(dtype, dtype) if isinstance(dtype, str) else None
    if dtype not in DTYPES:
        bad("dtype", f"one of {', '.join(DTYPES)}")
    return Manifest(family, components, str(data.get("model", "")), tokenizer, decoder, vision,
                    records["encoder"], image_token_id, image_token_count, records["pruning"], records["sparse"],
                    records["rewrite"], records["validation"], note if isinstance(note, str) else None, data,
                    dtype=dtype, calibration=records["calibration"])


def _components(value: Any, folder: Path, where: str, bad: Callable[..., NoReturn]) -> dict[str, ComponentEntry]:
    if not isinstance(value, dict):
        bad("components", "an object of component name -> {file: ...}")
    out = {}
    for name, entry in value.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("file"), str):
            bad(f"components.{name}", "an object with a 'file' name")
        path = confined(folder, entry["file"], source=where, what=f"file of component {name!r}")
        if not path.is_file():
            raise ManifestError(f"{where} lists component {name!r} but {entry['file']} is missing from {folder}")
        ios = []
        for key in ("inputs", "outputs"):
            items = entry.get(key, [])
            if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
                bad(f"components.{name}.{key}", "a list of {name, dtype, shape}")
            ios.append(tuple(items))
        extra = {k: v for k, v in entry.items() if k not in ("file", "inputs", "outputs")}
        out[name] = ComponentEntry(entry["file"], ios[0], ios[1], extra)
    return out


def _decoder(value: Any, bad: Callable[..., NoReturn]) -> DecoderGeometry:
    if not isinstance(value, dict):
        bad("decoder", "an object with the decoder's geometry")
    given = {key: _int(value.get(key), f"decoder.{key}", 1, _MAX_DIM, bad)
             for key in ("num_layers", "num_kv_heads", "head_size")}
    for key in ("num_heads", "hidden_size", "vocab_size"):
        if value.get(key) is not None:
            given[key] = _int(value[key], f"decoder.{key}", 1, 1 << 40, bad)
    if value.get("max_positions") is not None:
        given["max_positions"] = _int(value["max_positions"], "decoder.max_positions", 1, 1 << 40, bad)
    eos = value.get("eos_token_ids", [])
    if not isinstance(eos, list) or not all(isinstance(e, int) and not isinstance(e, bool) for e in eos):
        bad("decoder.eos_token_ids", "a list of token ids")
    bos = value.get("bos_token_id")
    if bos is not None and (not isinstance(bos, int) or isinstance(bos, bool)):
        bad("decoder.bos_token_id", "a token id (or null)")
    known = {f.name for f in fields(DecoderGeometry)}
    extra = {k: v for k, v in value.items() if k not in known}
    return DecoderGeometry(**given, eos_token_ids=tuple(eos), bos_token_id=bos, extra=extra)


def _vision(value: Any, bad: Callable[..., NoReturn]) -> VisionInfo:
    if not isinstance(value, dict):
        bad("vision", "an object with the image size, mean and std")
    size = _int(value.get("image_size"), "vision.image_size", 1, 8192, bad)
    channels = []
    for key in ("mean", "std"):
        items = value.get(key)
        if (not isinstance(items, list) or len(items) != 3
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in items)):
            bad(f"vision.{key}", "a list of 3 finite numbers")
        channels.append(tuple(float(v) for v in items))
    if not all(v != 0 for v in channels[1]):
        bad("vision.std", "non-zero")
    tokens = value.get("num_image_tokens")
    if tokens is not None:
        tokens = _int(tokens, "vision.num_image_tokens", 1, _MAX_DIM, bad)
    extra = {k: v for k, v in value.items() if k not in ("image_size", "mean", "std", "num_image_tokens")}
    return VisionInfo(size, channels[0], channels[1], tokens, extra)  # type: ignore[arg-type]


def _int(value: Any, name: str, low: int, high: int, bad: Callable[..., NoReturn]) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        bad(name, f"an integer in [{low}, {high}]")
    return value


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


__all__ = ["DTYPES", "FORMAT", "MANIFEST", "SCHEMA_VERSION", "ComponentEntry", "DecoderGeometry", "Manifest", "ManifestError",
           "VisionInfo", "read_manifest", "write_manifest"]
