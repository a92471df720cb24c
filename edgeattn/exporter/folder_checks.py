"""Checks of a local model folder before transformers reads it: config files bounded in size and type,
sizes bounded before anything is allocated, safetensors headers and offsets within their files."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from edgeattn.errors import ModelSourceError
from edgeattn.paths import read_text
from edgeattn.exporter.loaded import FAMILIES

# Hostile-input bounds. A config.json or preprocessor_config.json is a few kB (a vision model's label map
# can reach ~1 MB); 16 MiB is far above any real one. A sharded index lists one line per tensor (~100 kB
# for a 70B model); 64 MiB is far above that. A safetensors header is capped at 100 MB, as the
# safetensors library itself caps it.
MAX_CONFIG_BYTES = 16 * 1024**2
MAX_INDEX_BYTES = 64 * 1024**2
MAX_SAFETENSORS_HEADER = 100 * 1000**2
MAX_TOKENIZER_BYTES = 256 * 1024**2  # the largest real tokenizer.json files (Gemma's, 256k vocab) are ~35 MB

# Upper bounds on config sizes, checked before transformers builds anything. Every real model an edge device
# runs fits them with room to spare (Llama-3.1-405B: 126 layers, hidden 16384, MLP 53248, 128 heads,
# vocab 128256; the largest vocabularies are ~256k; long-context RoPE models list ~1M positions; vision
# towers take images up to a few thousand pixels).
CONFIG_INT_LIMITS: dict[str, int] = {
    "num_hidden_layers": 1024,
    "hidden_size": 65536,
    "intermediate_size": 262144,
    "num_attention_heads": 1024,
    "num_key_value_heads": 1024,
    "head_dim": 4096,
    "vocab_size": 10**7,
    "max_position_embeddings": 1 << 24,
    "type_vocab_size": 1024,
    "image_size": 8192,
    "patch_size": 8192,
    "num_channels": 16,
    "projection_dim": 65536,
}
CONFIG_FLOAT_FIELDS = ("rms_norm_eps", "layer_norm_eps", "initializer_range", "rope_theta")
CONFIG_TOKEN_FIELDS = ("bos_token_id", "eos_token_id", "pad_token_id", "image_token_id", "image_token_index")
SUB_CONFIGS = ("text_config", "vision_config")

# safetensors dtype -> bits per element (the dtypes transformers can load into a float32 model).
SAFETENSORS_DTYPES: dict[str, int] = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8, "I16": 16, "U16": 16, "F16": 16,
    "BF16": 16, "I32": 32, "U32": 32, "F32": 32, "F64": 64, "I64": 64, "U64": 64,
}
FIX_WEIGHTS = "re-download or re-convert the weights"


def _short(value: Any, limit: int = 40) -> str:
    """A value from a user's file, cut short, for a message (never a whole file's content)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _first_line(err: BaseException, limit: int = 160) -> str:
    """The first line of an exception from a library, cut short, for a one-line message."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    text = lines[0] if lines else type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def read_json_file(path: Path, what: str, limit: int = MAX_CONFIG_BYTES) -> Any:
    """JSON from a small user file: bounded size, UTF-8, valid JSON (the message never shows the content)."""
    text = read_text(path, limit, what, ModelSourceError)
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ModelSourceError(f"{path} is not valid JSON ({err.msg} at line {err.lineno}); fix or replace the {what}") from None
    except RecursionError:
        raise ModelSourceError(f"{path} nests too deeply to be a {what}; fix or replace it") from None


def read_config(folder: Path) -> dict[str, Any]:
    if not folder.exists():
        raise ModelSourceError(
            f"model path {str(folder)!r} does not exist; give a Hugging Face folder, demo:NAME or zoo:NAME"
        )
    if not folder.is_dir():
        raise ModelSourceError(f"model path {str(folder)!r} is a file; give the folder that holds config.json")
    cfg = folder / "config.json"
    if not cfg.is_file():
        raise ModelSourceError(f"{str(folder)!r} has no config.json; is it a Hugging Face model folder?")
    raw = read_json_file(cfg, "model config (config.json)")
    check_raw_config(raw, cfg)
    return raw


def check_raw_config(raw: Any, path: Path) -> None:
    """Refuse a config.json whose structure or size fields transformers would choke on (or allocate from)."""
    if not isinstance(raw, dict):
        raise ModelSourceError(f"{path} holds a JSON {_json_kind(raw)}, not an object; a model config is an object "
                               "like {\"model_type\": \"llama\", ...}")
    if "model_type" not in raw:
        raise ModelSourceError(f"{path} has no \"model_type\"; add the architecture (e.g. \"llama\")")
    if not isinstance(raw["model_type"], str):
        raise ModelSourceError(f"{path}: \"model_type\" must be a string naming the architecture, got a "
                               f"{_json_kind(raw['model_type'])}")
    if raw.get("quantization_config") is not None:
        raise ModelSourceError(f"{path} describes a quantized checkpoint (quantization_config); edgeattn loads "
                               "float weights only: give the unquantized model")
    _check_config_fields(raw, path, "")
    for sub in SUB_CONFIGS:
        if sub in raw and raw[sub] is not None:
            if not isinstance(raw[sub], dict):
                raise ModelSourceError(f"{path}: \"{sub}\" must be an object, got a {_json_kind(raw[sub])}")
            if "model_type" in raw[sub] and not isinstance(raw[sub]["model_type"], str):
                raise ModelSourceError(f"{path}: \"{sub}.model_type\" must be a string")
            _check_config_fields(raw[sub], path, sub + ".")


def _json_kind(value: Any) -> str:
    names = {dict: "object", list: "list", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _check_config_fields(cfg: dict[str, Any], path: Path, prefix: str) -> None:
    for key, limit in CONFIG_INT_LIMITS.items():
        if key in cfg and cfg[key] is not None:
            _check_int(cfg[key], f"{prefix}{key}", limit, path)
    for key in CONFIG_FLOAT_FIELDS:
        value = cfg.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not math.isfinite(value) or value < 0):
            raise ModelSourceError(f"{path}: \"{prefix}{key}\" must be a finite non-negative number, got {_short(value)}")
    for key in CONFIG_TOKEN_FIELDS:
        value = cfg.get(key)
        ids = value if isinstance(value, list) else [value]
        # (-1 is allowed: some converted checkpoints write pad_token_id -1 for "none".)
        if value is not None and not all(isinstance(i, int) and not isinstance(i, bool) and -1 <= i < 2**31 for i in ids):
            raise ModelSourceError(f"{path}: \"{prefix}{key}\" must be a token id (an integer) or a list of them, "
                                   f"got {_short(value)}")
    for key in ("hidden_act", "hidden_activation"):
        if cfg.get(key) is not None and not isinstance(cfg[key], str):
            raise ModelSourceError(f"{path}: \"{prefix}{key}\" must be the name of an activation, got {_short(cfg[key])}")
    for key in ("rope_scaling", "rope_parameters"):
        if cfg.get(key) is not None and not isinstance(cfg[key], dict):
            raise ModelSourceError(f"{path}: \"{prefix}{key}\" must be an object, got a {_json_kind(cfg[key])}")


def _check_int(value: Any, name: str, limit: int, path: Path | str) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ModelSourceError(f"{path}: \"{name}\" must be a whole number, got {_short(value)}")
    if not 1 <= value <= limit:
        raise ModelSourceError(f"{path}: \"{name}\" is {value}; it must be from 1 to {limit} (edgeattn's bound for "
                               "any real model); fix config.json")


def check_config_sizes(config: Any, path: Path) -> int:
    """Bounds on the built config (defaults included); returns a lower bound on the parameters it describes."""
    params = 0
    for sub in (getattr(config, name, None) for name in SUB_CONFIGS):
        if sub is not None and sub is not config:
            params += check_config_sizes(sub, path)
    if any(getattr(config, name, None) is not None for name in SUB_CONFIGS):
        return params  # a composite (LLaVA) config: its parts were checked
    for key, limit in CONFIG_INT_LIMITS.items():
        value = getattr(config, key, None)
        if value is not None:
            _check_int(value, key, limit, path)
    hidden = getattr(config, "hidden_size", None) or 0
    heads = getattr(config, "num_attention_heads", None)
    kv_heads = getattr(config, "num_key_value_heads", None)
    if heads and kv_heads and (kv_heads > heads or heads % kv_heads):
        raise ModelSourceError(f"{path}: num_attention_heads ({heads}) must be a multiple of num_key_value_heads "
                               f"({kv_heads}); fix config.json")
    image, patch = getattr(config, "image_size", None), getattr(config, "patch_size", None)
    if isinstance(image, int) and isinstance(patch, int) and patch > image:
        raise ModelSourceError(f"{path}: patch_size ({patch}) is larger than image_size ({image}); fix config.json")
    layers = getattr(config, "num_hidden_layers", None) or 0
    ratio = getattr(config, "mlp_ratio", None)
    ratio = ratio if isinstance(ratio, (int, float)) and not isinstance(ratio, bool) and 0 < ratio <= 64 else 0
    inner = getattr(config, "intermediate_size", None) or int(hidden * ratio)
    vocab = getattr(config, "vocab_size", None) or 0
    # Learned position tables: BERT-style text positions, and one per patch of a vision tower.
    positions = (getattr(config, "max_position_embeddings", None) or 0) if config.model_type in FAMILIES["encoder"] else 0
    if isinstance(image, int) and isinstance(patch, int):
        positions += (image // patch) ** 2
    # At least two hidden x inner MLP matrices per layer, the token embedding table and the position tables.
    return params + layers * 2 * hidden * inner + (vocab + positions) * hidden


def check_safetensors(path: Path) -> int:
    """Validate one safetensors file's header (before transformers reads it); returns its element count."""
    if not path.is_file():
        raise ModelSourceError(f"weights {path} is not a regular file; {FIX_WEIGHTS}")
    size = path.stat().st_size
    if size < 8:
        raise ModelSourceError(f"weights {path} is {'empty' if size == 0 else 'truncated'} ({size} bytes); {FIX_WEIGHTS}")
    with path.open("rb") as handle:
        length = int.from_bytes(handle.read(8), "little")
        if length < 2 or length > min(size - 8, MAX_SAFETENSORS_HEADER):
            raise ModelSourceError(f"weights {path} is not a safetensors file or is truncated (header length {length} "
                                   f"does not fit a {size}-byte file); {FIX_WEIGHTS}")
        blob = handle.read(length)
    try:
        header = json.loads(blob.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise ModelSourceError(f"weights {path} has a corrupt safetensors header (not a JSON object); {FIX_WEIGHTS}") from None
    if not isinstance(header, dict):
        raise ModelSourceError(f"weights {path} has a corrupt safetensors header (not a JSON object); {FIX_WEIGHTS}")
    data_len = size - 8 - length
    spans, elements = [], 0
    for name, entry in header.items():
        if name == "__metadata__":
            if not isinstance(entry, dict):
                raise ModelSourceError(f"weights {path}: __metadata__ is not an object; {FIX_WEIGHTS}")
            continue
        what = f"weights {path}: tensor {_short(name, 60)}"
        if not isinstance(entry, dict):
            raise ModelSourceError(f"{what} has no dtype/shape/data_offsets; {FIX_WEIGHTS}")
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if dtype not in SAFETENSORS_DTYPES:
            raise ModelSourceError(f"{what} has unknown dtype {_short(dtype, 20)}; {FIX_WEIGHTS}")
        if not (isinstance(shape, list) and len(shape) <= 16
                and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
            raise ModelSourceError(f"{what} has a malformed shape; {FIX_WEIGHTS}")
        if not (isinstance(offsets, list) and len(offsets) == 2
                and all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)):
            raise ModelSourceError(f"{what} has malformed data_offsets; {FIX_WEIGHTS}")
        begin, end = offsets
        count = math.prod(shape)
        if not 0 <= begin <= end <= data_len:
            raise ModelSourceError(f"{what} lies outside the file (bytes {begin}..{end} of {data_len}): the file is "
                                   f"truncated or corrupt; {FIX_WEIGHTS}")
        if end - begin != count * SAFETENSORS_DTYPES[dtype] // 8:
            raise ModelSourceError(f"{what}: its shape and dtype need {count * SAFETENSORS_DTYPES[dtype] // 8} bytes "
                                   f"but its data_offsets give {end - begin}; {FIX_WEIGHTS}")
        spans.append((begin, end))
        elements += count
    if not spans:
        raise ModelSourceError(f"weights {path} holds no tensors; {FIX_WEIGHTS}")
    position = 0
    for begin, end in sorted(spans):
        if begin != position:
            raise ModelSourceError(f"weights {path} has overlapping or missing tensor data (the data offsets do not "
                                   f"tile the file); {FIX_WEIGHTS}")
        position = end
    if position != data_len:
        raise ModelSourceError(f"weights {path} has {data_len - position} bytes after its last tensor; {FIX_WEIGHTS}")
    try:  # the library's own check, the one transformers will make
        from safetensors import safe_open

        with safe_open(str(path), framework="np"):
            pass
    except Exception as err:  # noqa: BLE001 - SafetensorError and friends: a file it cannot read
        raise ModelSourceError(f"weights {path} cannot be read by safetensors ({_first_line(err, 80)}); "
                               f"{FIX_WEIGHTS}") from None
    return elements


def check_weights(folder: Path) -> int:
    """Every *.safetensors file in ``folder`` validated; returns the total tensor element count."""
    files = sorted(folder.glob("*.safetensors"))
    index = folder / "model.safetensors.index.json"
    if not (folder / "model.safetensors").exists() and not index.exists():
        raise ModelSourceError(f"{str(folder)!r} has {', '.join(p.name for p in files[:3])} but neither "
                               "model.safetensors nor model.safetensors.index.json, which transformers looks for; "
                               "rename a single file to model.safetensors")
    if index.exists():
        data = read_json_file(index, "sharded weight index (model.safetensors.index.json)", MAX_INDEX_BYTES)
        weight_map = data.get("weight_map") if isinstance(data, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise ModelSourceError(f"{index} has no \"weight_map\" object; {FIX_WEIGHTS}")
        for shard in set(weight_map.values()):
            if not isinstance(shard, str) or Path(shard).name != shard or shard in (".", "..") \
                    or not shard.endswith(".safetensors"):
                raise ModelSourceError(f"{index} names shard {_short(shard)}, which is not a *.safetensors file name "
                                       "in the model folder; fix the index")
            if not (folder / shard).is_file():
                raise ModelSourceError(f"{index} names shard {shard!r}, which is missing from {folder}; {FIX_WEIGHTS}")
    return sum(check_safetensors(path) for path in files)


