"""Text and image encoders: one onnxruntime call from an exported folder."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from edgeattn.errors import EdgeAttnError
from edgeattn.graphs.session import session_from_onnx
from edgeattn.manifest import Manifest
from edgeattn.runtime.precision import check_runnable_dtype, check_session_type, float_array_type


# One run embeds a padded batch: attention memory grows with rows x length^2, so both are bounded.
MAX_TEXTS = 256
MAX_BATCH_TOKENS = 1 << 16


def encode_texts(folder: Path, manifest: Manifest, tokenizer: Any, texts: list[str]) -> dict[str, Any]:
    """Sentence embeddings [len(texts), D] of a text encoder, with the wall time of the call."""
    from edgeattn.runtime.generate import position_limit

    check_runnable_dtype(manifest, folder)
    if not texts:
        raise EdgeAttnError("give at least one --prompt to embed")
    if len(texts) > MAX_TEXTS:
        raise EdgeAttnError(f"give at most {MAX_TEXTS} --prompt texts per run (got {len(texts)}); split them")
    batch = tokenizer(texts, padding=True, return_tensors="np", verbose=False)
    rows, longest = batch["input_ids"].shape
    if longest < 1:
        raise EdgeAttnError("the prompts are empty (0 tokens); give a --prompt with some text")
    limit = position_limit(manifest, "encoder", tokenizer)
    if limit is not None and longest > limit:
        raise EdgeAttnError(f"a prompt is {longest} tokens, more than the encoder's {limit} positions; shorten it")
    if rows * longest > MAX_BATCH_TOKENS:
        raise EdgeAttnError(f"the prompts make a batch of {rows} x {longest} tokens, more than {MAX_BATCH_TOKENS} "
                            "in one run; embed fewer or shorter texts at a time")
    session = session_from_onnx(folder / manifest.file_of("encoder"))
    feeds = {
        "input_ids": batch["input_ids"].astype(np.int64),
        "attention_mask": batch["attention_mask"].astype(np.int64),
        "token_type_ids": batch.get("token_type_ids", np.zeros_like(batch["input_ids"])).astype(np.int64),
    }
    start = time.perf_counter()
    states, embedding = session.run(["last_hidden_state", "embedding"], feeds)
    return {"embedding": embedding, "tokens": int(feeds["input_ids"].size), "latency_ms": (time.perf_counter() - start) * 1e3}


def encode_image(folder: Path, manifest: Manifest, pixel_values: np.ndarray) -> dict[str, Any]:
    check_runnable_dtype(manifest, folder)
    session = session_from_onnx(folder / manifest.file_of("vision"))
    check_session_type(session, "pixel_values", manifest, manifest.file_of("vision"))
    names = [o.name for o in session.get_outputs()]
    inputs = {i.name: i for i in session.get_inputs()}
    feeds = {"pixel_values": pixel_values.astype(float_array_type(manifest), copy=False)}
    if "text_embeds" in inputs:
        raise EdgeAttnError("this vision encoder prunes by text guidance (text_embeds); run it from an app that gives "
                            "the guidance embeddings")
    if "patch_valid" in inputs:  # images are resized, never letterboxed: every patch is an image patch
        feeds["patch_valid"] = np.ones((pixel_values.shape[0], inputs["patch_valid"].shape[1]), bool)
    start = time.perf_counter()
    outputs = dict(zip(names, session.run(None, feeds)))
    return {"outputs": outputs, "latency_ms": (time.perf_counter() - start) * 1e3}
