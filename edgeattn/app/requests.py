"""What a request to a loaded model may hold, checked before any work: prompts, counts, images, budgets.

Every refusal is one line (`EdgeAttnError`). Messages name each setting as the caller knows it: the Python
API's argument names (`API`) or the CLI's options (`CLI`), so `edgeattn run` keeps its wording and an app
sees its own.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeattn.errors import EdgeAttnError
from edgeattn.manifest import Manifest
from edgeattn.runtime.tokenizer import load_tokenizer as runtime_tokenizer

# onnxruntime makes one thread per count: more than this many is a typo, not a machine.
MAX_THREADS = 1024
# One `image_features` call encodes a batch of images; each is resized to the model's input size, so the
# batch costs images x 3 x size^2 floats. A larger batch is split by the app.
MAX_IMAGES = 64


@dataclass(frozen=True)
class Names:
    """How a front end spells each request setting in error messages."""

    prompt: str
    image: str
    max_new_tokens: str
    image_tokens: str
    threads: str


API = Names(prompt="prompt", image="image", max_new_tokens="max_new_tokens", image_tokens="image_tokens",
            threads="threads")
CLI = Names(prompt="--prompt", image="--image", max_new_tokens="--max-new-tokens", image_tokens="--image-tokens",
            threads="--threads")


def check_text(text: Any, name: str) -> str:
    """A prompt as text. Text decoded from bytes that were not UTF-8 carries lone surrogates (U+DC80..U+DCFF
    on Linux, from the command line or `os.fsdecode`): refused, since no tokenizer can encode them."""
    if not isinstance(text, str):
        raise EdgeAttnError(f"{name} must be a str (got {type(text).__name__})")
    for index, char in enumerate(text):
        if "\ud800" <= char <= "\udfff":
            raise EdgeAttnError(f"{name} is not valid UTF-8 text (an undecodable byte at character {index}); "
                                "pass the prompt as UTF-8")
    return text


def as_count(value: Any, name: str) -> int:
    """An integer setting (Python or numpy int, never a bool or a float)."""
    if isinstance(value, bool):
        raise EdgeAttnError(f"{name} must be an integer (got {value!r})")
    try:
        return operator.index(value)
    except TypeError:
        raise EdgeAttnError(f"{name} must be an integer (got {type(value).__name__})") from None


def check_threads(threads: Any, names: Names) -> int | None:
    """onnxruntime's intra-op thread count: None (its default) or 1..MAX_THREADS."""
    if threads is None:
        return None
    threads = as_count(threads, names.threads)
    if not 1 <= threads <= MAX_THREADS:
        raise EdgeAttnError(f"{names.threads} must be from 1 to {MAX_THREADS} (got {threads})")
    return threads


def check_providers(providers: Any) -> list[str] | None:
    """onnxruntime execution provider names, in order of preference (one name is a list of one)."""
    if providers is None:
        return None
    if isinstance(providers, str):
        providers = [providers]
    if not isinstance(providers, (list, tuple)) or not providers or not all(isinstance(p, str) for p in providers):
        raise EdgeAttnError("providers must be a list of onnxruntime provider names, e.g. ['CPUExecutionProvider']")
    return list(providers)


def check_generate_request(manifest: Manifest, has_image: bool, max_new_tokens: int, image_tokens: int | None,
                           names: Names) -> None:
    """The settings of one generation that can be checked before the prompt is tokenized."""
    from edgeattn.runtime.generate import check_max_new_tokens

    check_max_new_tokens(max_new_tokens, names.max_new_tokens)
    if has_image and manifest.family != "vlm":
        raise EdgeAttnError(f"{names.image} needs a VLM export; this folder holds a text-only decoder")
    if image_tokens is not None:
        if not has_image:
            raise EdgeAttnError(f"{names.image_tokens} needs {names.image}")
        check_image_tokens(manifest, image_tokens, names)


def check_image_tokens(manifest: Manifest, image_tokens: int, names: Names) -> None:
    """A run-time visual-token budget: only for an export pruned with dynamic=1, from 1 to the tokens the
    image gives before pruning."""
    pruning = manifest.pruning or {}
    if not pruning.get("dynamic_k"):
        raise EdgeAttnError(f"this export has a fixed image-token budget; {names.image_tokens} needs one exported "
                            "with --prune METHOD:K,dynamic=1")
    limit = pruning.get("tokens_before")
    if image_tokens < 1 or (isinstance(limit, int) and image_tokens > limit):
        raise EdgeAttnError(f"the image-token budget must be from 1 to {limit} (got {image_tokens})")


def load_tokenizer(folder: Path, manifest: Manifest) -> Any:
    """The folder's Hugging Face tokenizer (local files only), or a one-line refusal."""
    return runtime_tokenizer(folder, manifest)


def pixels_of(image: Any, manifest: Manifest, name: str) -> np.ndarray:
    """``pixel_values`` [1, 3, S, S] of one image: a file path, an H x W x 3 uint8 array or a Pillow image."""
    from edgeattn.runtime.images import load_image, pixel_values

    if manifest.vision is None:
        raise EdgeAttnError(f"{name} needs a VLM or a vision encoder; this folder holds a {manifest.family} model")
    return pixel_values(_rgb(image, name, load_image), manifest.vision.preprocess())


def pixel_batch(images: Any, manifest: Manifest, name: str) -> np.ndarray:
    """``pixel_values`` [N, 3, S, S] of one image or a list of up to MAX_IMAGES images."""
    batch = list(images) if isinstance(images, (list, tuple)) else [images]
    if not 1 <= len(batch) <= MAX_IMAGES:
        raise EdgeAttnError(f"give from 1 to {MAX_IMAGES} images per call (got {len(batch)}); split them")
    return np.concatenate([pixels_of(image, manifest, name) for image in batch])


def _rgb(image: Any, name: str, load_image: Any) -> Any:
    """A Pillow RGB image from a path, an array or a Pillow image; anything else is refused in one line."""
    from PIL import Image

    if isinstance(image, (str, Path)):
        return load_image(image)
    if isinstance(image, Image.Image):
        return image if image.mode == "RGB" else image.convert("RGB")
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or 0 in image.shape:
            raise EdgeAttnError(f"an {name} array must be H x W x 3 uint8 (got {image.dtype} of shape {image.shape})")
        if image.shape[0] * image.shape[1] > (Image.MAX_IMAGE_PIXELS or np.inf):
            raise EdgeAttnError(f"the {name} array has more pixels than the {Image.MAX_IMAGE_PIXELS} edgeattn decodes; "
                                "resize it")
        return Image.fromarray(np.ascontiguousarray(image))  # uint8 H x W x 3 reads as RGB
    raise EdgeAttnError(f"{name} must be a file path, an H x W x 3 uint8 array or a PIL image "
                        f"(got {type(image).__name__})")
