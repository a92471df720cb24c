"""The prompt of `show`: text -> token ids -> token embeddings, from an exported folder's own tokenizer
and embed component (as `edgeattn run` reads them)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgeattn.errors import EdgeAttnError
from edgeattn.graphs.session import session_from_onnx
from edgeattn.manifest import Manifest
from edgeattn.runtime.generate import position_limit
from edgeattn.runtime.tokenizer import load_tokenizer as runtime_tokenizer

# A prompt is read whole into one prefill: longer than this is not a prompt to draw (and the heat map of
# its blocks would not fit a picture).
MAX_PROMPT_CHARS = 1 << 20


def check_prompt_text(prompt: str) -> None:
    """Refuse an empty prompt, an enormous one, and one click decoded from bytes that were not UTF-8 (lone
    surrogates)."""
    if not prompt.strip():
        raise EdgeAttnError("--prompt is empty; give some text")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise EdgeAttnError(f"--prompt has {len(prompt)} characters, more than the {MAX_PROMPT_CHARS} show reads; "
                            "shorten it")
    for index, char in enumerate(prompt):
        if "\ud800" <= char <= "\udfff":
            raise EdgeAttnError(f"--prompt is not valid UTF-8 text (an undecodable byte at character {index}); "
                                "pass the prompt as UTF-8")


def load_tokenizer(folder: Path, manifest: Manifest) -> Any:
    """The tokenizer saved in the export (local files only)."""
    return runtime_tokenizer(folder, manifest, missing="--prompt cannot be read without one; re-export a model that ships one")


def prompt_ids(folder: Path, manifest: Manifest, prompt: str) -> list[int]:
    """The prompt's token ids, checked against the decoder's positions where the folder has a decoder."""
    check_prompt_text(prompt)
    tokenizer = load_tokenizer(folder, manifest)
    ids = [int(i) for i in tokenizer(prompt, verbose=False)["input_ids"]]
    if not ids:
        raise EdgeAttnError("the prompt is empty (0 tokens); give a --prompt with some text")
    limit = position_limit(manifest, "decoder", tokenizer) if manifest.decoder is not None else None
    if limit is not None and len(ids) > limit:
        raise EdgeAttnError(f"the prompt is {len(ids)} tokens, more than the model's {limit} positions; shorten it")
    return ids


def token_embeddings(folder: Path, manifest: Manifest, ids: list[int], threads: int | None = None) -> np.ndarray:
    """[1, T, D] embeddings of `ids` from the folder's embed component."""
    if "embed" not in manifest.components:
        raise EdgeAttnError(f"{folder} has no embed component to turn --prompt into embeddings; give a VLM or "
                            "decoder export")
    session = session_from_onnx(folder / manifest.file_of("embed"), threads=threads)
    return session.run(None, {"input_ids": np.asarray([ids], dtype=np.int64)})[0]
