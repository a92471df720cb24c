"""Calibration data: a text source read, tokenized and cut into windows of fixed lengths.

    text:FILE      plain UTF-8 text, or JSON lines with a "text" field (`.jsonl`)
    builtin:text   CPython's `pydoc_data.topics` (real English documentation, in every Python install)

Windows start at offsets drawn with the seed; every window of one length is distinct where the text
allows. The SHA-256 of the text goes into the calibration record.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeattn.calibrate.goals import CalibrationError
from edgeattn.paths import read_text

MAX_TEXT_BYTES = 64 * 1024**2
SOURCES = ("text:FILE", "builtin:text")


@dataclass(frozen=True)
class Text:
    source: str
    text: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Window:
    ids: np.ndarray  # int64 [L]
    start: int  # offset in the token stream

    @property
    def length(self) -> int:
        return int(self.ids.shape[0])


def read_source(source: str) -> Text:
    """The text a SOURCE names (see the module docstring)."""
    kind, sep, rest = source.partition(":")
    if kind == "builtin" and rest == "text":
        return Text(source, builtin_text())
    if kind == "text" and sep and rest:
        path = Path(rest)
        raw = read_text(path, MAX_TEXT_BYTES, "calibration text", CalibrationError)
        text = _jsonl(raw, path) if path.suffix == ".jsonl" else raw
        if not text.strip():
            raise CalibrationError(f"{path} holds no text; give a file with some text for --data/--eval")
        return Text(source, text)
    if kind == "images" or source == "builtin:images":
        raise CalibrationError(f"data source {source!r}: images calibrate prune:NAME; blasst and block "
                               f"calibrate on text: use {' or '.join(SOURCES)}")
    raise CalibrationError(f"data source {source!r} is not one of {', '.join(SOURCES)}")


def builtin_text() -> str:
    try:
        import pydoc_data.topics as topics
    except ImportError:  # some distributions split the documentation data off the standard library
        raise CalibrationError("builtin:text reads CPython's pydoc_data, which this Python lacks; "
                               "use --data text:FILE") from None
    return "\n\n".join(topics.topics[key] for key in sorted(topics.topics))


def _jsonl(raw: str, path: Path) -> str:
    texts = []
    for number, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            raise CalibrationError(f"{path}:{number} is not a JSON object; a .jsonl file holds one "
                                   '{"text": ...} per line') from None
        if not isinstance(item, dict) or not isinstance(item.get("text"), str):
            raise CalibrationError(f'{path}:{number} has no "text" string; a .jsonl file holds one '
                                   '{"text": ...} per line')
        texts.append(item["text"])
    return "\n\n".join(texts)


def load_tokenizer(folder: Path, tokenizer: str | None) -> Any:
    if not tokenizer:
        raise CalibrationError(f"{folder} has no tokenizer folder; calibrate needs one to read text")
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(folder / tokenizer))
    except Exception as err:  # noqa: BLE001 - tokenizer files that transformers rejects
        raise CalibrationError(f"cannot load the tokenizer in {folder / tokenizer} ({type(err).__name__}); "
                               "re-export the folder") from None


def token_ids(text: Text, tokenizer: Any) -> np.ndarray:
    return np.asarray(tokenizer(text.text, verbose=False)["input_ids"], dtype=np.int64)


def windows(ids: np.ndarray, lengths: tuple[int, ...], samples: int, seed: int, source: str) -> list[Window]:
    """`samples` windows of each length at seeded offsets, distinct where the text is long enough."""
    longest = max(lengths)
    if len(ids) < longest:
        raise CalibrationError(f"{source} gives {len(ids)} tokens, fewer than the {longest} one window needs; "
                               "give a longer text or lower --max-tokens")
    rng = np.random.default_rng(seed)
    out = []
    for length in lengths:
        room = len(ids) - length
        starts = rng.choice(room + 1, size=min(samples, room + 1), replace=False) if room > 0 else np.zeros(1, int)
        out += [Window(ids[int(s):int(s) + length], int(s)) for s in sorted(starts)]
    return out


__all__ = ["SOURCES", "Text", "Window", "builtin_text", "load_tokenizer", "read_source", "token_ids", "windows"]
