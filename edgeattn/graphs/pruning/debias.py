"""Attention debiasing: positional weights (loaded or fitted) and the padding mask of a letterboxed image.

(1) Recency: the score at position p is multiplied by w[p] = f(0)/f(p), with f(p) = A·exp(b·p) a
least-squares fit (in log space) of the mean attention at each position over calibration images.
(2) Padding sinks: a patch more than half padding gets score 0 (`padding_valid_mask`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from edgeattn.errors import PruningError


# A vision encoder has at most a few thousand candidate tokens: a weights file is a few kB. 64 MiB is
# far above any real one and bounds what is read into memory.
MAX_WEIGHTS_BYTES = 64 * 1024**2
FORMATS = "write N numbers as .npy, a .json list, or whitespace/comma-separated text"


def load_weights(path: str | Path, count: int) -> np.ndarray:
    """N positional weights from .npy, .json (a list) or text (whitespace/comma separated).

    A malformed file is refused in one line that names the file and the problem, never its content.
    """
    path = Path(path)
    if path.is_dir():
        raise PruningError(f"debias weights file {str(path)!r} is a folder; {FORMATS}")
    if not path.exists():
        raise PruningError(f"debias weights file {str(path)!r} does not exist")
    if not path.is_file():
        raise PruningError(f"debias weights file {str(path)!r} is not a regular file; {FORMATS}")
    size = path.stat().st_size
    if size > MAX_WEIGHTS_BYTES:
        raise PruningError(f"debias weights file {path} is {size} bytes, more than the {MAX_WEIGHTS_BYTES} allowed "
                           f"for {count} weights; is it the right file?")
    try:
        if path.suffix == ".npy":
            weights = _read_npy(path, size)
        elif path.suffix == ".json":
            weights = _numbers(json.loads(path.read_bytes().decode("utf-8")), path)
        else:
            weights = _numbers(path.read_bytes().decode("utf-8").replace(",", " ").split(), path)
    except UnicodeDecodeError:
        raise PruningError(f"debias weights file {path} is not UTF-8 text; {FORMATS}") from None
    except (json.JSONDecodeError, RecursionError):
        raise PruningError(f"debias weights file {path} is not valid JSON; {FORMATS}") from None
    except PermissionError:
        raise PruningError(f"debias weights file {path} cannot be read (permission denied)") from None
    except (ValueError, OSError, EOFError, TypeError):
        what = "is not a valid .npy array of numbers" if path.suffix == ".npy" else "cannot be read"
        raise PruningError(f"debias weights file {path} {what}; {FORMATS}") from None
    weights = np.asarray(weights, dtype=np.float32).reshape(-1)
    if weights.size != count or not np.isfinite(weights).all():
        raise PruningError(f"{path} holds {weights.size} weights; the encoder has {count} candidate tokens "
                           "and every weight must be finite")
    return weights


def _numbers(values: object, path: Path) -> np.ndarray:
    """A flat list of numbers (JSON numbers, or number strings from a text file) as float64."""
    if not isinstance(values, list) or not all(
        (isinstance(v, (int, float)) and not isinstance(v, bool)) or isinstance(v, str) for v in values
    ):
        raise PruningError(f"debias weights file {path} is not a flat list of numbers; {FORMATS}")
    out = np.empty(len(values), dtype=np.float64)
    for i, value in enumerate(values):
        try:
            out[i] = float(value)
        except (ValueError, OverflowError):
            raise PruningError(f"debias weights file {path}: entry {i + 1} is not a number; {FORMATS}") from None
    return out


def _read_npy(path: Path, size: int) -> np.ndarray:
    """A numeric .npy array, its header checked against the file size before anything is allocated."""
    with path.open("rb") as handle:
        version = np.lib.format.read_magic(handle)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(handle)
        elif version in ((2, 0), (3, 0)):
            shape, _, dtype = np.lib.format.read_array_header_2_0(handle)
        else:
            raise ValueError("unsupported .npy version")
        body = size - handle.tell()
    if dtype.kind not in "biuf" or dtype.hasobject:
        raise PruningError(f"debias weights file {path} holds {dtype.kind!r}-kind data, not numbers; {FORMATS}")
    if math.prod(shape) * dtype.itemsize > body:
        raise PruningError(f"debias weights file {path} is truncated (its header promises more data than it holds); "
                           f"{FORMATS}")
    return np.load(path, allow_pickle=False)


def fit_recency(scores: np.ndarray) -> tuple[float, float]:
    """(A, b) of f(p) = A·exp(b·p), least squares on the log of the mean score at each position of
    scores [images, N]."""
    mean = np.asarray(scores, dtype=np.float64).mean(axis=0)
    positions = np.arange(mean.size, dtype=np.float64)
    slope, intercept = np.polyfit(positions, np.log(np.maximum(mean, 1e-12)), 1)
    return float(np.exp(intercept)), float(slope)


def fit_recency_weights(scores: np.ndarray) -> np.ndarray:
    """w[p] = f(0)/f(p) from scores [images, N] (f fitted to the mean score at each position)."""
    _, slope = fit_recency(scores)
    return np.exp(-slope * np.arange(np.shape(scores)[-1], dtype=np.float64)).astype(np.float32)


def padding_valid_mask(width: int, height: int, image_size: int, patch_size: int) -> np.ndarray:
    """[N] bool for an image of width x height letterboxed (centred, padded) into image_size²: True for a
    patch at least half covered by the image."""
    scale = image_size / max(width, height)
    w, h = width * scale, height * scale
    left, top = (image_size - w) / 2, (image_size - h) / 2
    grid = image_size // patch_size
    edges = np.arange(grid + 1) * patch_size
    cover_x = np.clip(np.minimum(edges[1:], left + w) - np.maximum(edges[:-1], left), 0, None) / patch_size
    cover_y = np.clip(np.minimum(edges[1:], top + h) - np.maximum(edges[:-1], top), 0, None) / patch_size
    return (np.outer(cover_y, cover_x) >= 0.5).reshape(-1)
