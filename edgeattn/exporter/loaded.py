"""What every model source produces: a loaded torch model with what its export folder needs (types only,
so the sources, the demo configs and the zoo import it without importing each other)."""

from __future__ import annotations

from dataclasses import dataclass, field
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
    raise ModelSourceError(f"unsupported architecture {_shown(model_type)}; supported families are {supported}")


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


def record_position_limit(tokenizer: Any, config: Any) -> None:
    """Lower the tokenizer's ``model_max_length`` to the model's position count, so the exported tokenizer
    folder records it and `run` can refuse a prompt the model has no positions for. (transformers writes
    1e30 when a tokenizer declares no limit.)"""
    text_cfg = getattr(config, "text_config", None) or config
    positions = getattr(text_cfg, "max_position_embeddings", None)
    if tokenizer is None or not isinstance(positions, int) or isinstance(positions, bool) or positions < 1:
        return
    if getattr(text_cfg, "model_type", None) == "roberta":  # its positions start after the padding index
        positions -= int(getattr(text_cfg, "pad_token_id", None) or 1) + 1
        if positions < 1:
            return
    current = getattr(tokenizer, "model_max_length", None)
    if not isinstance(current, int) or current > positions:
        tokenizer.model_max_length = positions




def _shown(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
