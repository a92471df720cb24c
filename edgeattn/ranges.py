"""What users type in flags and recipes: index ranges ("3", "0-11", "0,2,8-11", "0-1+5") parsed with a
bound before expanding, `name=value` lists, and numbers held to finite values within their range.

A range is expanded into the indices it names only after its end is checked against a limit (no model has
more layers or heads than these), so "0-99999999999" is a one-line error, not an exhausted memory.
"""

from __future__ import annotations

import math
import re
from typing import Any, Iterable

MAX_LAYERS = 10_000  # layer indices: far above any real model (SmolLM2 has 30, large LLMs ~100)
MAX_HEADS = 4_096  # head indices: far above any real model (64-128 query heads at most today)

_PART = re.compile(r"^(\d{1,12})(?:-(\d{1,12}))?$")
_SEPARATORS = re.compile(r"[,+;\s]+")
_INT64 = (-(2**63), 2**63 - 1)


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


def flag_items(rest: str, flag: str, text: str) -> list[tuple[str, str]]:
    """`name=value,name=value` -> [(name, value)]; ValueError for an item without a value."""
    items = []
    for item in filter(None, (part.strip() for part in rest.split(","))):
        name, eq, value = item.partition("=")
        if not eq or not value.strip():
            raise ValueError(f"{item!r} in {flag} {text!r} has no value; write name=value")
        items.append((name.strip(), value.strip()))
    return items


def flag_value(raw: str) -> int | float | str:
    """A value as typed: an int, a float (finite or not: `check_number` decides), else the text."""
    for kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            pass
    return raw


def check_number(name: str, value: Any, bounds: tuple[float, float] | None = None) -> None:
    """ValueError unless `value` (when it is a number) is finite and within `bounds` (default: int64 for an
    int, any finite value for a float)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    low, high = bounds or (_INT64 if isinstance(value, int) else (-math.inf, math.inf))
    if not math.isfinite(value):
        raise ValueError(f"{name}={value!r} is not a finite number")
    if not low <= value <= high:
        raise ValueError(f"{name}={value!r} is out of range; it takes {low} to {high}")



__all__ = ["MAX_HEADS", "MAX_LAYERS", "check_indices", "check_number", "flag_items", "flag_value", "parse_index_ranges"]
