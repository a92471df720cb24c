"""Text and image encoders: one onnxruntime call from an exported folder.

Each encoder comes in three pieces so that an app can make its session once and reuse it from any thread:
the session (`text_encoder_session`, `vision_encoder_session`), the checked inputs (`text_feeds`), and the
run (`run_text_encoder`, `run_vision_encoder`). `encode_texts` and `encode_image` put them together for a
single call.
"""

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
    check_runnable_dtype(manifest, folder)
    feeds = text_feeds(manifest, tokenizer, texts)
    return run_text_encoder(text_encoder_session(folder, manifest), feeds)


def text_encoder_session(folder: Path, manifest: Manifest, threads: int | None = None,
                         providers: list[str] | None = None) -> Any:
    """The onnxruntime session of a text encoder folder (a bf16 export is refused first)."""
    check_runnable_dtype(manifest, folder)
    return session_from_onnx(folder / manifest.file_of("encoder"), providers, threads)


def text_feeds(manifest: Manifest, tokenizer: Any, texts: list[str], name: str = "--prompt") -> dict[str, np.ndarray]:
    """The padded batch a text encoder takes, after bounding the count of texts, their length and the batch
    size. ``name`` is how the caller spells the texts in messages (the CLI's option or the API's word)."""
    from edgeattn.runtime.generate import position_limit

    if not texts:
        raise EdgeAttnError(f"give at least one {name} to embed")
    if len(texts) > MAX_TEXTS:
        raise EdgeAttnError(f"give at most {MAX_TEXTS} {name} texts per run (got {len(texts)}); split them")
    batch = tokenizer(texts, padding=True, return_tensors="np", verbose=False)
    rows, longest = batch["input_ids"].shape
    if longest < 1:
        raise EdgeAttnError(f"the prompts are empty (0 tokens); give a {name} with some text")
    limit = position_limit(manifest, "encoder", tokenizer)
    if limit is not None and longest > limit:
        raise EdgeAttnError(f"a prompt is {longest} tokens, more than the encoder's {limit} positions; shorten it")
    if rows * longest > MAX_BATCH_TOKENS:
        raise EdgeAttnError(f"the prompts make a batch of {rows} x {longest} tokens, more than {MAX_BATCH_TOKENS} "
                            "in one run; embed fewer or shorter texts at a time")
    return {
        "input_ids": batch["input_ids"].astype(np.int64),
        "attention_mask": batch["attention_mask"].astype(np.int64),
        "token_type_ids": batch.get("token_type_ids", np.zeros_like(batch["input_ids"])).astype(np.int64),
    }


def run_text_encoder(session: Any, feeds: dict[str, np.ndarray]) -> dict[str, Any]:
    """The embeddings of a batch from `text_feeds`, its token count and the wall time of the run."""
    start = time.perf_counter()
    states, embedding = session.run(["last_hidden_state", "embedding"], feeds)
    latency_ms = (time.perf_counter() - start) * 1e3
    return {"embedding": embedding, "tokens": int(feeds["input_ids"].size), "latency_ms": latency_ms}


def encode_image(folder: Path, manifest: Manifest, pixel_values: np.ndarray) -> dict[str, Any]:
    """The outputs of a vision encoder on ``pixel_values`` [N, 3, S, S], with the wall time of the run."""
    return run_vision_encoder(vision_encoder_session(folder, manifest), manifest, pixel_values)


def vision_encoder_session(folder: Path, manifest: Manifest, threads: int | None = None,
                           providers: list[str] | None = None) -> Any:
    """The onnxruntime session of a vision encoder folder, its pixel type checked against the manifest."""
    check_runnable_dtype(manifest, folder)
    session = session_from_onnx(folder / manifest.file_of("vision"), providers, threads)
    check_session_type(session, "pixel_values", manifest, manifest.file_of("vision"))
    return session


def run_vision_encoder(session: Any, manifest: Manifest, pixel_values: np.ndarray) -> dict[str, Any]:
    """{"outputs": {name: array}, "latency_ms": ...} of one run of a vision encoder's session."""
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
