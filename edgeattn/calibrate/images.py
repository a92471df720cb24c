"""Calibration images and prompts for `prune:NAME` calibration.

    images:DIR       every image file of DIR (by suffix, sorted by name, hidden files skipped), at most
                     `--samples` of them, each decoded with `runtime.images.load_image`
    builtin:images   scikit-learn's two sample photographs (sklearn/datasets/images/china.jpg and
                     flower.jpg), each as BUILTIN_VIEWS: the whole photo, mirrored left-right, its
                     centred square crop and its top-left quarter; 8 images in that order

Prompts: `--prompts FILE` (one prompt per line, blank lines skipped) or DEFAULT_PROMPTS. The record
holds the SHA-256 of every image's file bytes (for builtin:images, of the two JPEG files, with the view
names) and of the prompts.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from edgeattn.calibrate.goals import CalibrationError
from edgeattn.errors import EdgeAttnError
from edgeattn.paths import read_text

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
IMAGE_SOURCES = ("images:DIR", "builtin:images")
BUILTIN_PHOTOS = ("china.jpg", "flower.jpg")
DEFAULT_PROMPTS = ("Describe the image.", "What is in this picture?")
MAX_PROMPT_BYTES = 1024**2
MAX_PROMPTS = 256


def _whole(image: Any) -> Any:
    return image


def _mirrored(image: Any) -> Any:
    from PIL import ImageOps

    return ImageOps.mirror(image)


def _centre_square(image: Any) -> Any:
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    return image.crop((left, top, left + side, top + side))


def _top_left_quarter(image: Any) -> Any:
    return image.crop((0, 0, image.width // 2, image.height // 2))


BUILTIN_VIEWS: dict[str, Callable[[Any], Any]] = {
    "whole": _whole, "mirrored": _mirrored, "centre-square": _centre_square, "top-left-quarter": _top_left_quarter,
}


@dataclass(frozen=True)
class Picture:
    name: str  # the file name, or photo/view for builtin:images
    image: Any  # RGB Pillow image
    sha256: str  # of the file bytes the image was decoded from


@dataclass(frozen=True)
class ImageSet:
    source: str
    pictures: list[Picture]

    @property
    def sha256(self) -> str:
        """One digest of the set: each picture's name and file digest, in order."""
        text = "\n".join(f"{p.name} {p.sha256}" for p in self.pictures)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source, "sha256": self.sha256, "images": [
            {"name": p.name, "sha256": p.sha256, "size": list(p.image.size)} for p in self.pictures]}


def is_image_source(source: str) -> bool:
    return source == "builtin:images" or source.startswith("images:")


def check_image_options(options: Any, method: str) -> None:
    """The options every image calibration (prune:NAME, debias) checks alike: no text windows, a bounded
    --samples, image sources for --data and --eval."""
    if options.max_tokens is not None:
        raise CalibrationError(f"--max-tokens sets text windows; {method} calibrates on images (--samples bounds them)")
    if options.samples is not None and not 1 <= options.samples <= 1024:
        raise CalibrationError(f"--samples must be from 1 to 1024 (got {options.samples})")
    for name, source in (("--data", options.data), ("--eval", options.eval)):
        if source is not None and not is_image_source(source):
            raise CalibrationError(f"{name} {source!r}: {method} calibrates on images; use images:DIR or "
                                   "builtin:images")


def read_image_data(options: Any, default_samples: int) -> tuple[ImageSet, ImageSet | None]:
    """The calibration images (--data, default builtin:images) and the evaluation ones (--eval, or None), each
    at most --samples (default `default_samples`)."""
    limit = options.samples or default_samples
    images = read_images(options.data or "builtin:images", limit)
    return images, (read_images(options.eval, limit) if options.eval is not None else None)


def read_images(source: str, limit: int) -> ImageSet:
    """The images a SOURCE names (see the module docstring), at most `limit` of them."""
    kind, sep, rest = source.partition(":")
    if source == "builtin:images":
        pictures = builtin_images()
    elif kind == "images" and sep and rest:
        pictures = _folder_images(Path(rest), limit)
    else:
        raise CalibrationError(f"data source {source!r}: prune:NAME calibrates on images; use "
                               f"{' or '.join(IMAGE_SOURCES)}")
    return ImageSet(source, pictures[:limit])


def _folder_images(folder: Path, limit: int) -> list[Picture]:
    from edgeattn.runtime.images import load_image

    if not folder.is_dir():
        raise CalibrationError(f"images:{folder}: {folder} is not a folder; give a folder of image files")
    files = sorted(p for p in folder.iterdir()
                   if not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise CalibrationError(f"images:{folder} holds no image file ({', '.join(IMAGE_SUFFIXES)}); "
                               "give a folder with some images")
    pictures = []
    for path in files[:limit]:
        try:
            image = load_image(path)
        except EdgeAttnError as err:
            raise CalibrationError(f"calibration {err}") from None
        pictures.append(Picture(path.name, image, hashlib.sha256(path.read_bytes()).hexdigest()))
    return pictures


def builtin_images() -> list[Picture]:
    """The builtin:images set: each photo of BUILTIN_PHOTOS in each view of BUILTIN_VIEWS."""
    from edgeattn.runtime.images import load_image

    try:
        import sklearn.datasets
    except ImportError:
        raise CalibrationError("builtin:images reads scikit-learn's sample photographs; install scikit-learn "
                               "or use --data images:DIR") from None
    folder = Path(sklearn.datasets.__file__).parent / "images"
    pictures = []
    for photo in BUILTIN_PHOTOS:
        path = folder / photo
        if not path.is_file():
            raise CalibrationError(f"builtin:images: scikit-learn's {path} is missing; use --data images:DIR")
        image, digest = load_image(path), hashlib.sha256(path.read_bytes()).hexdigest()
        pictures += [Picture(f"{photo}/{view}", make(image), digest) for view, make in BUILTIN_VIEWS.items()]
    return pictures


def read_prompts(path: str | Path | None) -> tuple[list[str], str]:
    """(prompts, SHA-256 of the prompts joined by newlines): one per line of `path`, or DEFAULT_PROMPTS."""
    if path is None:
        prompts = list(DEFAULT_PROMPTS)
    else:
        text = read_text(Path(path), MAX_PROMPT_BYTES, "prompts file", CalibrationError)
        prompts = [line.strip() for line in text.splitlines() if line.strip()]
        if not prompts:
            raise CalibrationError(f"--prompts {path} holds no prompt; write one prompt per line")
        if len(prompts) > MAX_PROMPTS:
            raise CalibrationError(f"--prompts {path} holds {len(prompts)} prompts; give at most {MAX_PROMPTS}")
    return prompts, hashlib.sha256("\n".join(prompts).encode("utf-8")).hexdigest()


__all__ = ["BUILTIN_PHOTOS", "BUILTIN_VIEWS", "DEFAULT_PROMPTS", "IMAGE_SOURCES", "ImageSet", "Picture",
           "builtin_images", "check_image_options", "is_image_source", "read_image_data", "read_images", "read_prompts"]
