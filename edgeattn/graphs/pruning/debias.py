"""Attention debiasing: positional weights (loaded or fitted) and the padding mask of a letterboxed image.

(1) Recency: the score at position p is multiplied by w[p] = f(0)/f(p), with f(p) = A·exp(b·p) a
least-squares fit (in log space) of the mean attention at each position over calibration images.
(2) Padding sinks: a patch more than half padding gets score 0 (`padding_valid_mask`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from edgeattn.errors import PruningError


def load_weights(path: str | Path, count: int) -> np.ndarray:
    """N positional weights from .npy, .json (a list) or text (whitespace/comma separated)."""
    path = Path(path)
    if not path.is_file():
        raise PruningError(f"debias weights file {str(path)!r} does not exist")
    try:
        if path.suffix == ".npy":
            weights = np.load(path, allow_pickle=False)
        elif path.suffix == ".json":
            weights = np.asarray(json.loads(path.read_text()), dtype=np.float64)
        else:
            weights = np.asarray(path.read_text().replace(",", " ").split(), dtype=np.float64)
    except (ValueError, OSError) as err:
        raise PruningError(f"cannot read debias weights from {path}: {err}") from None
    weights = np.asarray(weights, dtype=np.float32).reshape(-1)
    if weights.size != count or not np.isfinite(weights).all():
        raise PruningError(f"{path} holds {weights.size} weights; the encoder has {count} candidate tokens "
                           "and every weight must be finite")
    return weights


def fit_recency_weights(scores: np.ndarray) -> np.ndarray:
    """w[p] = f(0)/f(p) from scores [images, N] (f fitted to the mean score at each position)."""
    mean = np.asarray(scores, dtype=np.float64).mean(axis=0)
    positions = np.arange(mean.size, dtype=np.float64)
    slope, _ = np.polyfit(positions, np.log(np.maximum(mean, 1e-12)), 1)
    return np.exp(-slope * positions).astype(np.float32)


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
