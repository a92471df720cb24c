"""Index ranges typed by users ("3", "0-11", "0,2,8-11", "0-1+5"): parsed with a bound before expanding.

A range is expanded into the indices it names only after its end is checked against a limit (no model has
more layers or heads than these), so "0-99999999999" is a one-line error, not an exhausted memory.
"""

from __future__ import annotations

import re
from typing import Iterable

MAX_LAYERS = 10_000  # layer indices: far above any real model (SmolLM2 has 30, large LLMs ~100)
MAX_HEADS = 4_096  # head indices: far above any real model (64-128 query heads at most today)

_PART = re.compile(r"^(\d{1,12})(?:-(\d{1,12}))?$")
_SEPARATORS = re.compile(r"[,+;\s]+")


def parse_index_ranges(text: str, *, limit: int, what: str) -> tuple[int, ...]:
    """The sorted indices `text` names; ValueError (a sentence) for a malformed, reversed or too-large range."""
    parts = [p for p in _SEPARATORS.split(text.strip()) if p]
    if not parts:
        raise ValueError(f"{what} names no index; write \"3\", \"0-11\" or \"0,2,8-11\"")
    spans = []
    for part in parts:
        found = _PART.match(part.replace(" ", ""))
        if found is None:
            raise ValueError(f"{what} has the bad range {part!r}; write \"3\", \"0-11\" or \"0,2,8-11\"")
        start = int(found.group(1))
        end = int(found.group(2)) if found.group(2) is not None else start
        if end < start:
            raise ValueError(f"{what} has the reversed range {part!r}; write it as \"{end}-{start}\"")
        if end >= limit:
            raise ValueError(f"{what} asks for index {end}, beyond the largest this edgeattn accepts ({limit - 1})")
        spans.append((start, end))
    return tuple(sorted({i for start, end in spans for i in range(start, end + 1)}))


def check_indices(values: Iterable[object], *, limit: int, what: str) -> tuple[int, ...]:
    """A list of indices (from TOML or JSON): ints in [0, limit)."""
    values = list(values)
    if not values or not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < limit for v in values):
        raise ValueError(f"{what} must list numbers >= 0 and <= {limit - 1}, got {values[:8]!r}")
    return tuple(sorted(set(values)))  # type: ignore[arg-type]


__all__ = ["MAX_HEADS", "MAX_LAYERS", "check_indices", "parse_index_ranges"]
