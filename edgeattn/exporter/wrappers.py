"""Family wrappers: small torch modules that call a model's parts directly, with flat tensor I/O.

Exporting these instead of a model's own ``forward`` keeps every axis dynamic (see DESIGN.md: the
Hugging Face VLM forward fixes the batch) and gives each component the names the runtime expects.
"""

from __future__ import annotations

import torch
from torch import nn


def past_names(num_layers: int) -> list[str]:
    return [f"past_key_values.{i}.{kind}" for i in range(num_layers) for kind in ("key", "value")]


def present_names(num_layers: int) -> list[str]:
    return [f"present.{i}.{kind}" for i in range(num_layers) for kind in ("key", "value")]


class EmbedWrapper(nn.Module):
    """input_ids [B, S] -> inputs_embeds [B, S, D]."""

    def __init__(self, embed_tokens: nn.Module) -> None:
        super().__init__()
        self.embed_tokens = embed_tokens

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.embed_tokens(input_ids)


class DecoderWrapper(nn.Module):
    """A decoder LM step with a KV cache: embeddings, mask, positions and past K/V in; logits, present K/V out.

    ``attention_mask`` [B, past + S] is 1 for real tokens and 0 for padding; past and present K/V are
    [B, kv_heads, length, head_size], one pair per layer.
    """

    def __init__(self, language_model: nn.Module, lm_head: nn.Module, config: object) -> None:
        super().__init__()
        self.language_model = language_model
        self.lm_head = lm_head
        self.config = config

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        *past: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        from transformers import DynamicCache

        cache = DynamicCache(config=self.config)
        for layer in range(len(past) // 2):
            cache.update(past[2 * layer], past[2 * layer + 1], layer)
        out = self.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=True,
        )
        logits = self.lm_head(out.last_hidden_state)
        present = [t for layer in cache.layers for t in (layer.keys, layer.values)]
        return (logits, *present)


class EncoderWrapper(nn.Module):
    """A BERT-family text encoder: token ids and mask -> per-token states and a pooled sentence embedding.

    The embedding is the mask-weighted mean of the last hidden states (sentence-transformers' "mean"
    pooling), L2-normalised when ``normalize`` is set.
    """

    def __init__(self, encoder: nn.Module, normalize: bool) -> None:
        super().__init__()
        self.encoder = encoder
        self.normalize = normalize

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        states = self.encoder(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        ).last_hidden_state
        weights = attention_mask.unsqueeze(-1).to(states.dtype)
        embedding = (states * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
        if self.normalize:
            embedding = torch.nn.functional.normalize(embedding, p=2.0, dim=-1)
        return states, embedding


class VisionWrapper(nn.Module):
    """A vision encoder alone: pixel_values [B, 3, H, W] -> image_features [B, tokens, D] (last hidden state)."""

    def __init__(self, vision_model: nn.Module) -> None:
        super().__init__()
        self.vision_model = vision_model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.vision_model(pixel_values=pixel_values).last_hidden_state


class LlavaVisionWrapper(nn.Module):
    """A LLaVA vision tower and projector: pixel_values -> projected image_features [B, N, D_text].

    Takes the hidden state of ``feature_layer`` and drops [CLS] for the "default" strategy, as LLaVA does.
    """

    def __init__(self, vision_tower: nn.Module, projector: nn.Module, feature_layer: int, strategy: str) -> None:
        super().__init__()
        self.vision_tower = vision_tower
        self.projector = projector
        self.feature_layer = feature_layer
        self.drop_cls = strategy == "default"

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        states = self.vision_tower(pixel_values, output_hidden_states=True).hidden_states[self.feature_layer]
        if self.drop_cls:
            states = states[:, 1:]
        return self.projector(states)
