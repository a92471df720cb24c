"""Inputs to measure with: generated from a graph's declared inputs, or real (a prompt, an image).

Generated inputs follow the names edgeattn exports give their inputs and dimensions:

- dimensions: `batch` -> --batch; `sequence` (and any other symbolic one) -> the length; `past_sequence`
  (a name with "past") -> --past; `total_sequence` (a name with "total", or "sequence + past...") and the
  second axis of a mask -> past + length; an unnamed first axis is the batch;
- values: `input_ids` are token ids drawn from [0, vocab) (vocab from the manifest, else 32, which any
  vocabulary holds); masks are all ones (bool masks all true: `patch_valid`); `position_ids` count from
  --past; `token_type_ids` and other integer inputs are zeros (a safe index), an integer scalar is 1
  (a budget such as `num_tokens`); floats (`inputs_embeds`, `pixel_values`, `text_embeds`, the KV cache)
  are standard normal, drawn from a generator seeded by --seed and the input's name, so every target
  and every run sees the same numbers.

The element count of every input is checked before anything is allocated.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edgeattn.profile.settings import ProfileError
from edgeattn.runtime.tokenizer import load_tokenizer as runtime_tokenizer

# One generated input holds at most this many elements (1 GiB of float32), all of them together 2 GiB.
MAX_INPUT_ELEMENTS = 1 << 28
MAX_TOTAL_ELEMENTS = 1 << 29
SAFE_VOCAB = 32
_NUMPY_TYPES = {
    "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int16)": np.int16, "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8, "tensor(uint16)": np.uint16, "tensor(uint32)": np.uint32,
    "tensor(uint64)": np.uint64, "tensor(bool)": np.bool_,
}


@dataclass(frozen=True)
class Dims:
    """The sizes symbolic dimensions take in one configuration."""

    batch: int
    length: int
    past: int = 0


def dim_size(dim: Any, input_name: str, axis: int, dims: Dims) -> tuple[int, str]:
    """The size of one axis of a declared input, and which setting gave it ("static", "batch", ...)."""
    if isinstance(dim, int) and not isinstance(dim, bool) and dim >= 0:
        return dim, "static"
    text = dim.lower() if isinstance(dim, str) else ""
    name = input_name.lower()
    if "batch" in text or (not text and axis == 0):
        return dims.batch, "batch"
    if "total" in text or "+" in text:  # total_sequence, "sequence + past_sequence"
        return dims.past + dims.length, "past+length"
    if "past" in text or (not text and name.startswith("past_key_values") and axis == 2):
        return dims.past, "past"
    if "mask" in name and axis == 1:  # an attention mask covers the past and the new tokens
        return dims.past + dims.length, "past+length"
    return dims.length, "length"


def declared_shape(node_arg: Any, dims: Dims) -> tuple[list[int], set[str]]:
    """The concrete shape of a session input (an onnxruntime NodeArg) and the settings it used."""
    shape = node_arg.shape if isinstance(node_arg.shape, (list, tuple)) else []
    sizes, used = [], set()
    for axis, dim in enumerate(shape):
        size, source = dim_size(dim, node_arg.name, axis, dims)
        sizes.append(size)
        used.add(source)
    return sizes, used


def session_feeds(session: Any, dims: Dims, seed: int, vocab: int | None = None,
                  given: dict[str, np.ndarray] | None = None, where: str = "the model") -> dict[str, np.ndarray]:
    """A value for every declared input of `session` (inputs in `given` are taken as they are)."""
    given = dict(given or {})
    plans = []
    total = sum(int(a.size) for a in given.values())
    for node_arg in session.get_inputs():
        if node_arg.name in given:
            continue
        dtype = _NUMPY_TYPES.get(node_arg.type)
        if dtype is None:
            raise ProfileError(f"{where} takes input {node_arg.name!r} as {node_arg.type}; profile generates float, "
                               "integer and bool tensors only (float32/16/64), give a model with such inputs")
        shape, _ = declared_shape(node_arg, dims)
        count = int(np.prod(shape, dtype=np.float64)) if shape else 1
        if count > MAX_INPUT_ELEMENTS:
            raise ProfileError(f"input {node_arg.name!r} of {where} would be {shape} ({count} elements, more than "
                               f"{MAX_INPUT_ELEMENTS}); use shorter --lengths, a smaller --batch or --past")
        total += count
        plans.append((node_arg.name, dtype, shape))
    if total > MAX_TOTAL_ELEMENTS:
        raise ProfileError(f"the inputs of {where} would hold {total} elements, more than {MAX_TOTAL_ELEMENTS}; "
                           "use shorter --lengths, a smaller --batch or --past")
    feeds = dict(given)
    for name, dtype, shape in plans:
        feeds[name] = input_value(name, dtype, shape, dims, seed, vocab)
    return feeds


def input_value(name: str, dtype: Any, shape: Sequence[int], dims: Dims, seed: int, vocab: int | None) -> np.ndarray:
    """One generated input (see the module docstring for the rules)."""
    rng = np.random.default_rng([seed, zlib.crc32(name.encode("utf-8"))])
    lower = name.lower()
    kind = np.dtype(dtype).kind
    if kind == "b":
        return np.ones(shape, dtype=bool)
    if kind == "f":
        if "mask" in lower:  # an additive float mask: zeros attend everywhere
            return np.zeros(shape, dtype=dtype)
        return rng.standard_normal(shape, dtype=np.float32).astype(dtype, copy=False)
    if "input_ids" in lower:
        return rng.integers(0, max(1, vocab or SAFE_VOCAB), size=shape).astype(dtype)
    if "mask" in lower:
        return np.ones(shape, dtype=dtype)
    if "position_ids" in lower and len(shape) >= 1:
        count = shape[-1]
        start = dims.past if count == dims.length else 0
        return np.broadcast_to(np.arange(start, start + count, dtype=dtype), shape).copy()
    if len(shape) == 0:
        return np.ones(shape, dtype=dtype)
    return np.zeros(shape, dtype=dtype)


def generated_ids(count: int, vocab: int | None, seed: int, avoid: Sequence[int] = ()) -> list[int]:
    """`count` token ids drawn from [0, vocab), none of them in `avoid` (an image token, say)."""
    size = max(2, vocab or SAFE_VOCAB)
    ids = np.random.default_rng([seed, 7]).integers(0, size, size=count)
    for token in avoid:
        ids[ids == token] = (token + 1) % size
    return [int(i) for i in ids]


def generated_pixels(batch: int, image_size: int, seed: int) -> np.ndarray:
    """Standard-normal `pixel_values` [batch, 3, S, S]: what a normalised image looks like to the model."""
    count = batch * 3 * image_size * image_size
    if count > MAX_INPUT_ELEMENTS:
        raise ProfileError(f"a batch of {batch} images of {image_size} x {image_size} is too large to generate; "
                           "use a smaller --batch")
    rng = np.random.default_rng([seed, 11])
    return rng.standard_normal((batch, 3, image_size, image_size), dtype=np.float32)


def load_tokenizer(folder: Path, manifest: Any) -> Any:
    """The tokenizer an exported folder ships (for --prompt); one line when there is none or it is broken."""
    return runtime_tokenizer(folder, manifest, ProfileError,
                             "leave --prompt out to generate token ids at --lengths")


def prompt_ids(folder: Path, manifest: Any, prompt: str) -> list[int]:
    """The token ids of `prompt` under the folder's tokenizer."""
    tokenizer = load_tokenizer(folder, manifest)
    ids = [int(i) for i in tokenizer(prompt, verbose=False)["input_ids"]]
    if not ids:
        raise ProfileError("--prompt gives no tokens; give some text")
    return ids


__all__ = ["Dims", "MAX_INPUT_ELEMENTS", "declared_shape", "dim_size", "generated_ids", "generated_pixels",
           "input_value", "load_tokenizer", "prompt_ids", "session_feeds"]
