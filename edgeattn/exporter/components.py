"""Which ONNX components each family exports, with their I/O names, dynamic axes and test inputs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from edgeattn.exporter import wrappers
from edgeattn.exporter.loaded import LoadedModel

Case = dict[str, int]


@dataclass
class Component:
    """One ONNX file to export: a wrapper module, its named I/O and how to make inputs for a shape case."""

    name: str
    module: torch.nn.Module
    input_names: list[str]
    output_names: list[str]
    dynamic: dict[str, dict[int, str]]  # input name -> {axis: dimension name}
    make_inputs: Callable[[Case, torch.Generator], dict[str, torch.Tensor]]
    example: Case  # the export example (batch >= 2 so no axis is specialised to 1)
    cases: tuple[Case, ...]  # validation shapes, each different from the example
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def file(self) -> str:
        return f"{self.name}.onnx"


def float_dtype(module: torch.nn.Module) -> torch.dtype:
    """The float type of a module's weights (what its float inputs must be): the dtype most of its floating
    parameters have (a model may keep a few modules in float32), float32 when it has none."""
    counts: dict[torch.dtype, int] = {}
    for param in module.parameters():
        if param.is_floating_point():
            counts[param.dtype] = counts.get(param.dtype, 0) + param.numel()
    return max(counts, key=counts.__getitem__) if counts else torch.float32


def components_for(loaded: LoadedModel) -> list[Component]:
    builders = {"decoder": _decoder_family, "encoder": _encoder_family, "vision": _vision_family, "vlm": _vlm_family}
    return builders[loaded.family](loaded)


def _decoder_family(loaded: LoadedModel) -> list[Component]:
    model = loaded.model
    embed = model.get_input_embeddings()
    return [embed_component(embed, model.config), decoder_component(model.model, model.lm_head, embed, model.config)]


def _encoder_family(loaded: LoadedModel) -> list[Component]:
    return [encoder_component(loaded.model, bool(loaded.extra.get("normalize", False)))]


def _vision_family(loaded: LoadedModel) -> list[Component]:
    size = int(loaded.image_preprocess["image_size"]) if loaded.image_preprocess else int(loaded.config.image_size)
    return [vision_component(wrappers.VisionWrapper(loaded.model), size)]


def _vlm_family(loaded: LoadedModel) -> list[Component]:
    model, cfg = loaded.model, loaded.config
    vision = wrappers.LlavaVisionWrapper(
        model.model.vision_tower,
        model.model.multi_modal_projector,
        cfg.vision_feature_layer,
        cfg.vision_feature_select_strategy,
    )
    text_cfg = cfg.text_config
    size = int(loaded.image_preprocess["image_size"]) if loaded.image_preprocess else int(cfg.vision_config.image_size)
    return [
        vision_component(vision, size),
        embed_component(model.get_input_embeddings(), text_cfg),
        decoder_component(model.model.language_model, model.lm_head, model.get_input_embeddings(), text_cfg),
    ]


def embed_component(embed_tokens: torch.nn.Module, config: Any) -> Component:
    vocab = int(config.vocab_size)

    def make(case: Case, gen: torch.Generator) -> dict[str, torch.Tensor]:
        return {"input_ids": torch.randint(0, vocab, (case["batch"], case["seq"]), generator=gen)}

    return Component(
        name="embed",
        module=wrappers.EmbedWrapper(embed_tokens),
        input_names=["input_ids"],
        output_names=["inputs_embeds"],
        dynamic={"input_ids": {0: "batch", 1: "sequence"}},
        make_inputs=make,
        example={"batch": 2, "seq": 5},
        cases=({"batch": 1, "seq": 7}, {"batch": 3, "seq": 4}),
    )


def decoder_geometry(config: Any) -> dict[str, int | None]:
    heads = int(config.num_attention_heads)
    head_size = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    return {
        "num_layers": int(config.num_hidden_layers),
        "num_heads": heads,
        "num_kv_heads": int(getattr(config, "num_key_value_heads", None) or heads),
        "head_size": head_size,
        "hidden_size": int(config.hidden_size),
        "vocab_size": int(config.vocab_size),
        # The longest sequence (prompt + generated) the model's positions cover; `run` refuses longer ones.
        "max_positions": int(getattr(config, "max_position_embeddings", 0) or 0) or None,
    }


def decoder_component(
    language_model: torch.nn.Module, lm_head: torch.nn.Module, embed_tokens: torch.nn.Module, config: Any
) -> Component:
    """The decoder step. Test inputs are what a model really sees: embeddings of random token ids, and
    a past K/V made by running the model itself on a random prefix (random normals in their place put
    activations far outside the trained range)."""
    geo = decoder_geometry(config)
    layers, kv_heads, head_size = geo["num_layers"], geo["num_kv_heads"], geo["head_size"]
    past = wrappers.past_names(layers)
    module = wrappers.DecoderWrapper(language_model, lm_head, config)

    def make(case: Case, gen: torch.Generator) -> dict[str, torch.Tensor]:
        b, s, p = case["batch"], case["seq"], case["past"]
        ids = torch.randint(0, geo["vocab_size"], (b, p + s), generator=gen)
        with torch.no_grad():
            embeds = embed_tokens(ids)
            prefix = tuple(torch.zeros(b, kv_heads, 0, head_size, dtype=embeds.dtype) for _ in past)
            if p > 0:
                mask, positions = torch.ones(b, p, dtype=torch.int64), torch.arange(p).expand(b, p)
                prefix = module(embeds[:, :p], mask, positions, *prefix)[1:]
        feeds = {
            "inputs_embeds": embeds[:, p:].contiguous(),
            "attention_mask": torch.ones(b, p + s, dtype=torch.int64),
            "position_ids": torch.arange(p, p + s, dtype=torch.int64).expand(b, s).contiguous(),
        }
        feeds.update({name: tensor.contiguous() for name, tensor in zip(past, prefix)})
        return feeds

    dynamic = {
        "inputs_embeds": {0: "batch", 1: "sequence"},
        "attention_mask": {0: "batch", 1: "total_sequence"},
        "position_ids": {0: "batch", 1: "sequence"},
        **{name: {0: "batch", 2: "past_sequence"} for name in past},
    }
    return Component(
        name="decoder",
        module=module,
        input_names=["inputs_embeds", "attention_mask", "position_ids", *past],
        output_names=["logits", *wrappers.present_names(layers)],
        dynamic=dynamic,
        make_inputs=make,
        example={"batch": 2, "seq": 5, "past": 3},
        # Prefill without past at batch 1, a chunk with past at batch 3, and a one-token decode step.
        cases=({"batch": 1, "seq": 7, "past": 0}, {"batch": 3, "seq": 4, "past": 6}, {"batch": 1, "seq": 1, "past": 9}),
        info=geo,
    )


def encoder_component(encoder: torch.nn.Module, normalize: bool) -> Component:
    vocab = int(encoder.config.vocab_size)

    def make(case: Case, gen: torch.Generator) -> dict[str, torch.Tensor]:
        b, s = case["batch"], case["seq"]
        mask = torch.ones(b, s, dtype=torch.int64)
        if b > 1:  # right padding on the last row, as a tokenizer pads a batch
            mask[-1, s // 2 :] = 0
        return {
            "input_ids": torch.randint(0, vocab, (b, s), generator=gen),
            "attention_mask": mask,
            "token_type_ids": torch.zeros(b, s, dtype=torch.int64),
        }

    axes = {0: "batch", 1: "sequence"}
    return Component(
        name="encoder",
        module=wrappers.EncoderWrapper(encoder, normalize),
        input_names=["input_ids", "attention_mask", "token_type_ids"],
        output_names=["last_hidden_state", "embedding"],
        dynamic={"input_ids": axes, "attention_mask": axes, "token_type_ids": axes},
        make_inputs=make,
        example={"batch": 2, "seq": 8},
        cases=({"batch": 1, "seq": 5}, {"batch": 3, "seq": 11}),
        info={"pooling": "mean", "normalize": normalize},
    )


def vision_component(module: torch.nn.Module, image_size: int) -> Component:
    def make(case: Case, gen: torch.Generator) -> dict[str, torch.Tensor]:
        # Drawn in float32 and then cast, so every export dtype sees the same images.
        pixels = torch.randn(case["batch"], 3, image_size, image_size, generator=gen)
        return {"pixel_values": pixels.to(float_dtype(module))}

    return Component(
        name="vision",
        module=module,
        input_names=["pixel_values"],
        output_names=["image_features"],
        dynamic={"pixel_values": {0: "batch"}},
        make_inputs=make,
        example={"batch": 2},
        cases=({"batch": 1}, {"batch": 3}),
        info={"image_size": image_size},
    )
