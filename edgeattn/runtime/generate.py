"""Greedy generation with a KV cache over exported components (embed, decoder, optional vision)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generator

import numpy as np

from edgeattn.errors import EdgeAttnError
from edgeattn.graphs.session import session_from_onnx
from edgeattn.manifest import Manifest
from edgeattn.runtime.precision import check_runnable_dtype, check_session_type, float_array_type


# --max-new-tokens is bounded even where the model's position count is unknown: a million tokens is
# beyond any edge model's context, and a larger value can only be a typo.
MAX_NEW_TOKENS = 1 << 20
# transformers writes 1e30 as model_max_length when a tokenizer declares no limit; anything this large
# is no limit either.
NO_LIMIT = 10**9


def position_limit(manifest: Manifest, section: str, tokenizer: Any = None) -> int | None:
    """How many positions the model in an exported folder has, where known: the manifest's record for the
    component (``section``: "decoder" or "encoder"), else the tokenizer's ``model_max_length``."""
    if section == "decoder" and manifest.decoder is not None:
        info: Any = {"max_positions": manifest.decoder.max_positions, **manifest.decoder.extra}
    else:
        info = manifest.encoder or {}
    for key in ("max_position_embeddings", "max_positions"):
        value = info.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and 0 < value < NO_LIMIT:
            return value
    value = getattr(tokenizer, "model_max_length", None)
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value < NO_LIMIT:
        return value
    return None


def check_max_new_tokens(max_new_tokens: int, name: str = "--max-new-tokens") -> None:
    """Refuse a count of tokens to generate outside 1..MAX_NEW_TOKENS. ``name`` is how the caller spells the
    setting in the message (the CLI's option, or the Python API's argument)."""
    if max_new_tokens < 1 or max_new_tokens > MAX_NEW_TOKENS:
        raise EdgeAttnError(f"{name} must be from 1 to {MAX_NEW_TOKENS} (got {max_new_tokens})")


def check_generation_length(prompt_tokens: int, max_new_tokens: int, limit: int | None, prompt_name: str = "--prompt",
                            max_name: str = "--max-new-tokens") -> None:
    """Refuse a prompt that is empty or, with the tokens to generate, longer than the model's positions.
    ``prompt_name`` and ``max_name`` spell the two settings as the caller knows them."""
    if prompt_tokens < 1:
        raise EdgeAttnError(f"the prompt is empty (0 tokens); give a {prompt_name} with some text")
    if limit is not None and prompt_tokens + max_new_tokens > limit:
        raise EdgeAttnError(
            f"the prompt ({prompt_tokens} tokens) plus {max_name} ({max_new_tokens}) exceeds the model's "
            f"{limit} positions; shorten the prompt or lower {max_name}"
        )


@dataclass
class Generation:
    prompt_tokens: list[int]
    tokens: list[int]  # generated ids, prompt excluded
    ttft_ms: float  # vision + embed + prefill + first token
    tpot_ms: float  # mean time per generated token after the first (0 when only one was generated)
    stages_ms: dict[str, float] = field(default_factory=dict)
    kept_indices: list[int] | None = None  # the visual tokens a pruned vision component kept (patch positions)


class DecoderRunner:
    """onnxruntime sessions for an exported decoder LM or VLM folder, created once and reused.

    A runner keeps no per-request state (the KV cache lives in each call), and onnxruntime's
    ``InferenceSession.run`` may be called from several threads at once: one runner serves concurrent
    requests."""

    def __init__(self, folder: str | Path, manifest: Manifest, threads: int | None = None, *,
                 providers: list[str] | None = None) -> None:
        folder = Path(folder)
        comps = manifest.components
        if "decoder" not in comps or "embed" not in comps or manifest.decoder is None:
            raise EdgeAttnError(f"{folder} holds no decoder (family {manifest.family!r}); cannot generate")
        check_runnable_dtype(manifest, folder)
        self.float_type = float_array_type(manifest)  # of pixels and the empty KV cache (the file's float type)
        self.manifest = manifest
        self.geometry = manifest.decoder
        self.embed = session_from_onnx(folder / comps["embed"].file, providers, threads)
        self.decoder = session_from_onnx(folder / comps["decoder"].file, providers, threads)
        vision = comps.get("vision")
        self.vision = session_from_onnx(folder / vision.file, providers, threads) if vision is not None else None
        check_session_type(self.decoder, "inputs_embeds", manifest, comps["decoder"].file)
        self.past_names = [i.name for i in self.decoder.get_inputs() if i.name.startswith("past_key_values.")]
        self.extra_inputs = {i.name for i in self.decoder.get_inputs()} - {
            "inputs_embeds", "attention_mask", "position_ids", *self.past_names
        }

    def image_features(
        self, pixel_values: np.ndarray, text_embeds: np.ndarray | None = None, num_tokens: int | None = None
    ) -> dict[str, np.ndarray]:
        """The vision outputs. A pruned vision graph may also take the prompt's token embeddings
        (`text_embeds`, text-guided pruning) and a run-time budget (`num_tokens`)."""
        if self.vision is None:
            raise EdgeAttnError("this model has no vision component; --image needs a VLM export")
        inputs = {i.name: i for i in (*self.vision.get_inputs(), *self.vision.get_overridable_initializers())}
        feeds = {"pixel_values": pixel_values.astype(self.float_type, copy=False)}
        if "text_embeds" in inputs:
            if text_embeds is None:
                raise EdgeAttnError("this vision component prunes by the prompt; it needs the prompt's embeddings")
            feeds["text_embeds"] = text_embeds
        if num_tokens is not None:
            if "num_tokens" not in inputs:
                raise EdgeAttnError("this vision component has a fixed token budget; re-export with --prune METHOD:K,dynamic=1")
            limit = (self.manifest.pruning or {}).get("tokens_before")
            if num_tokens < 1 or (limit is not None and num_tokens > limit):
                raise EdgeAttnError(f"the image-token budget must be from 1 to {limit} (got {num_tokens})")
            feeds["num_tokens"] = np.array(num_tokens, np.int64)
        if "patch_valid" in inputs:  # images are resized to the square input, never letterboxed: no padding patches
            feeds["patch_valid"] = np.ones((pixel_values.shape[0], inputs["patch_valid"].shape[1]), bool)
        names = [o.name for o in self.vision.get_outputs()]
        return dict(zip(names, self.vision.run(None, feeds)))

    @property
    def needs_prompt(self) -> bool:
        """Whether the vision component reads the prompt's token embeddings (text-guided pruning)."""
        return self.vision is not None and any(i.name == "text_embeds" for i in self.vision.get_inputs())

    def prompt_embeddings(self, input_ids: list[int], features: np.ndarray | None, embeds: np.ndarray | None = None) -> np.ndarray:
        if embeds is None:
            embeds = self.embed.run(None, {"input_ids": np.asarray([input_ids], dtype=np.int64)})[0]
        if features is None:
            return embeds
        slots = np.flatnonzero(np.asarray(input_ids) == self.manifest.image_token_id)
        if len(slots) != features.shape[1]:
            raise EdgeAttnError(f"prompt has {len(slots)} image tokens but the image gives {features.shape[1]} features")
        embeds[0, slots] = features[0]
        return embeds

    def prefill(self, embeds: np.ndarray) -> np.ndarray:
        """The logits [1, S, V] of one prefill step from an empty cache (the first step of `stream`)."""
        return self._step(embeds, self._empty_past(), 0)[0]

    def generate(
        self, input_ids: list[int], max_new_tokens: int, pixel_values: np.ndarray | None = None,
        num_tokens: int | None = None,
    ) -> Generation:
        """Greedy decoding to ``max_new_tokens`` tokens or an end-of-sequence token, all at once."""
        steps = self.stream(input_ids, max_new_tokens, pixel_values, num_tokens)
        while True:
            try:
                next(steps)
            except StopIteration as done:
                return done.value

    def stream(
        self, input_ids: list[int], max_new_tokens: int, pixel_values: np.ndarray | None = None,
        num_tokens: int | None = None,
    ) -> Generator[int, None, Generation]:
        """Greedy decoding that yields each token id as soon as it is chosen and returns the `Generation`
        (``StopIteration.value``). The checks run at the first ``next()``. Times count only the work done
        here, never the time the caller spends between two tokens, so they equal `generate`'s."""
        check_max_new_tokens(max_new_tokens)
        check_generation_length(len(input_ids), max_new_tokens, None)
        stages: dict[str, float] = {}
        start = time.perf_counter()
        features = embeds = text = kept = None
        if pixel_values is not None and self.needs_prompt:  # text-guided pruning reads the prompt's embeddings
            embeds = self.embed.run(None, {"input_ids": np.asarray([input_ids], dtype=np.int64)})[0]
            text = embeds[:, np.asarray(input_ids) != self.manifest.image_token_id]
        if pixel_values is not None:
            vision_start = time.perf_counter()
            outputs = self.image_features(pixel_values, text, num_tokens)
            features = outputs["image_features"]
            stages["vision_ms"] = _ms(vision_start)
            if "kept_indices" in outputs:
                kept = [int(i) for i in outputs["kept_indices"][0]]
        embeds = self.prompt_embeddings(input_ids, features, embeds)
        past = self._empty_past()
        logits, past = self._step(embeds, past, 0)
        token = int(np.argmax(logits[0, -1]))
        ttft = _ms(start)
        stages["prefill_ms"] = ttft - stages.get("vision_ms", 0.0)
        tokens = [token]
        yield token
        decode_ms = 0.0  # the further tokens' steps, summed
        eos = set(self.geometry.eos_token_ids)
        while len(tokens) < max_new_tokens and token not in eos:
            step_start = time.perf_counter()
            embeds = self.embed.run(None, {"input_ids": np.asarray([[token]], dtype=np.int64)})[0]
            logits, past = self._step(embeds, past, len(input_ids) + len(tokens) - 1)
            token = int(np.argmax(logits[0, -1]))
            tokens.append(token)
            decode_ms += _ms(step_start)
            yield token
        tpot = decode_ms / (len(tokens) - 1) if len(tokens) > 1 else 0.0
        return Generation(list(input_ids), tokens, ttft, tpot, stages, kept)

    def _empty_past(self) -> list[np.ndarray]:
        g = self.geometry
        return [np.zeros((1, g.num_kv_heads, 0, g.head_size), dtype=self.float_type) for _ in self.past_names]

    def _step(self, embeds: np.ndarray, past: list[np.ndarray], offset: int) -> tuple[np.ndarray, list[np.ndarray]]:
        seq = embeds.shape[1]
        feeds = {
            "inputs_embeds": embeds,
            "attention_mask": np.ones((1, offset + seq), dtype=np.int64),
            "position_ids": np.arange(offset, offset + seq, dtype=np.int64)[None],
            **dict(zip(self.past_names, past)),
        }
        names = [o.name for o in self.decoder.get_outputs()]
        outputs = dict(zip(names, self.decoder.run(None, feeds)))
        present = [outputs["present" + name[len("past_key_values") :]] for name in self.past_names]
        return outputs["logits"], present


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000.0
