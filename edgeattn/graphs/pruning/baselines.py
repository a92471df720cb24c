"""Constant scores for the baselines: a seeded random subset and a spatial grid. Top-k of these
constant vectors is the selection, so they need no attention and run with any k."""

from __future__ import annotations

import math

import numpy as np


def random_scores(count: int, seed: int) -> np.ndarray:
    """Seeded uniform scores [count]: the same random subset of positions for every image."""
    return np.random.default_rng(seed).random(count).astype(np.float32)


def grid_side(count: int) -> int | None:
    side = math.isqrt(count)
    return side if side * side == count else None


def uniform_scores(count: int, k: int) -> np.ndarray:
    """Scores whose top-k is a regular r x c lattice of patch centres (r·c = k, as square as the grid
    allows); positions beyond it follow in farthest-point order, so any other k is still spread out.
    On a non-square token count the lattice is 1-D (evenly spaced positions)."""
    side = grid_side(count)
    coords = (np.stack(np.divmod(np.arange(count), side), axis=1).astype(np.float64) if side
              else np.arange(count, dtype=np.float64)[:, None])
    first = _lattice(side, k) if side else sorted({int((i + 0.5) * count / k) for i in range(k)})
    order = _farthest_point_order(coords, first)
    scores = np.empty(count, np.float32)
    scores[order] = np.arange(count, 0, -1, dtype=np.float32)
    return scores


def _lattice(side: int, k: int) -> list[int]:
    pairs = [(r, k // r) for r in range(1, side + 1) if k % r == 0 and k // r <= side]
    if not pairs:
        return []
    rows, cols = min(pairs, key=lambda rc: abs(rc[0] - rc[1]))
    picked = [int((i + 0.5) * side / rows) * side + int((j + 0.5) * side / cols) for i in range(rows) for j in range(cols)]
    return sorted(picked)


def _farthest_point_order(coords: np.ndarray, start: list[int]) -> list[int]:
    """`start` (in order), then repeatedly the position farthest from every chosen one (ties: lowest)."""
    count = len(coords)
    order = list(start) or [int(np.argmin(((coords - coords.mean(0)) ** 2).sum(1)))]
    chosen = np.zeros(count, bool)
    chosen[order] = True
    nearest = np.full(count, np.inf)
    for index in order:
        nearest = np.minimum(nearest, ((coords - coords[index]) ** 2).sum(1))
    while len(order) < count:
        gaps = np.where(chosen, -1.0, nearest)
        index = int(np.argmax(gaps))
        order.append(index)
        chosen[index] = True
        nearest = np.minimum(nearest, ((coords - coords[index]) ** 2).sum(1))
    return order
