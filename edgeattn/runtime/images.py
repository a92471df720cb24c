"""Image files -> ``pixel_values`` as the exported vision component expects them."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from edgeattn.errors import EdgeAttnError

# The largest real photos and scans are a few tens of MB; a file past this is not an input image.
MAX_IMAGE_BYTES = 256 * 1024**2


def load_image(path: str | Path) -> Any:
    """An RGB Pillow image, fully decoded. Refuses (one line) a missing path, a folder, a file that is not
    an image, a truncated or corrupt one, and a decompression bomb (more pixels than Pillow's
    ``Image.MAX_IMAGE_PIXELS``, about 89 million)."""
    import warnings

    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if path.is_dir():
        raise EdgeAttnError(f"image {str(path)!r} is a folder; give an image file (PNG, JPEG, ...)")
    if not path.exists():
        raise EdgeAttnError(f"image {str(path)!r} does not exist")
    if not path.is_file():
        raise EdgeAttnError(f"image {str(path)!r} is not a regular file; give an image file (PNG, JPEG, ...)")
    size = path.stat().st_size
    if size > MAX_IMAGE_BYTES:
        raise EdgeAttnError(f"image {str(path)!r} is {size} bytes, more than the {MAX_IMAGE_BYTES} an input image "
                            "may have; resize it")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                return image.convert("RGB")  # decodes every pixel: a truncated file fails here, not later
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise EdgeAttnError(f"image {str(path)!r} has more pixels than the {Image.MAX_IMAGE_PIXELS} edgeattn decodes "
                            "(a decompression bomb?); resize it") from None
    except UnidentifiedImageError:
        raise EdgeAttnError(f"{str(path)!r} is not an image file Pillow can read (PNG, JPEG, ...)") from None
    except MemoryError:
        raise EdgeAttnError(f"not enough memory to decode image {str(path)!r}; resize it") from None
    except PermissionError:
        raise EdgeAttnError(f"image {str(path)!r} cannot be read (permission denied)") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error, zlib.error):
        # Pillow's ways of saying "truncated" or "corrupt": OSError("image file is truncated"), SyntaxError
        # ("broken PNG file"), ValueError, EOFError, struct.error and zlib.error from its decoders.
        raise EdgeAttnError(f"image {str(path)!r} is truncated or corrupt; re-save or replace it") from None


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
