"""Image files -> ``pixel_values`` as the exported vision component expects them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgeattn.errors import EdgeAttnError


def load_image(path: str | Path) -> Any:
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise EdgeAttnError(f"image {str(path)!r} does not exist")
    try:
        return Image.open(path).convert("RGB")
    except UnidentifiedImageError:
        raise EdgeAttnError(f"{str(path)!r} is not an image file Pillow can read (PNG, JPEG, ...)") from None


def pixel_values(image: Any, vision: dict[str, Any]) -> np.ndarray:
    """Resize to the square input size (bicubic), scale to [0, 1], normalise per channel: [1, 3, S, S]."""
    from PIL import Image

    size = int(vision["image_size"])
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image.astype(np.uint8)).convert("RGB")
    resized = image.resize((size, size), Image.Resampling.BICUBIC)
    array = np.asarray(resized, dtype=np.float32) / 255.0
    mean = np.asarray(vision["mean"], dtype=np.float32)
    std = np.asarray(vision["std"], dtype=np.float32)
    return ((array - mean) / std).transpose(2, 0, 1)[None].copy()
