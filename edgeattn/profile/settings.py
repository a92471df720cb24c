"""What `edgeattn profile` measures, as one checked value: shapes, run counts, threads, provider.

Every number a user types is bounded here, before anything is loaded or allocated, so a typo is one
line (`--runs 1e9` does not start a week of measuring, `--lengths 99999999` does not allocate).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from edgeattn.errors import EdgeAttnError

# Far above what an edge model is profiled at, low enough that generated inputs stay allocatable.
MAX_LENGTH = 1 << 17
MAX_LENGTHS = 8
MAX_BATCH = 1024
MAX_PAST = 1 << 17
MAX_WARMUP = 1000
MAX_RUNS = 10_000
MAX_PROFILE_RUNS = 100
MAX_NEW_TOKENS = 4096
MAX_THREADS = 1024
MAX_TARGETS = 8
MAX_SEED = 2**32 - 1
# The defaults are usable on a 2-core CPU with a small model: a handful of runs, a few profiled ones.
DEFAULT_LENGTHS = (512,)
DEFAULT_PROVIDER = "CPUExecutionProvider"


class ProfileError(EdgeAttnError):
    """A profile request that cannot be measured as asked (a bad flag, target or combination)."""


@dataclass(frozen=True)
class ProfileOptions:
    """One `edgeattn profile` request (see docs/profiling.md for what each field means)."""

    lengths: tuple[int, ...] | None = None  # sequence (prompt) lengths, one configuration each (None: 512)
    batch: int = 1
    past: int = 0  # past (KV cache) length fed to an ONNX file with past_key_values inputs
    prompt: str | None = None  # real text for folders (replaces lengths)
    image: str | None = None  # real image for VLM and vision folders
    max_new_tokens: int = 8  # decoder folders: tokens generated per request
    warmup: int = 2
    runs: int = 10
    profile_runs: int = 3  # runs under onnxruntime's profiler for the breakdown (0: no breakdown)
    threads: int | None = None  # onnxruntime intra-op threads (None: EDGEATTN_THREADS, else onnxruntime's)
    provider: str = DEFAULT_PROVIDER
    memory: bool = True  # measure peak memory in a child process per target
    seed: int = 0

    def check(self) -> None:
        """ProfileError (one line) for the first value out of its range."""
        if self.lengths is not None:
            if not self.lengths:
                raise ProfileError("--lengths names no length; write e.g. --lengths 512,2048")
            if len(self.lengths) > MAX_LENGTHS:
                raise ProfileError(f"--lengths names {len(self.lengths)} lengths; give at most {MAX_LENGTHS}")
            for length in self.lengths:
                _bounded("--lengths", length, 1, MAX_LENGTH)
        _bounded("--batch", self.batch, 1, MAX_BATCH)
        _bounded("--past", self.past, 0, MAX_PAST)
        _bounded("--max-new-tokens", self.max_new_tokens, 1, MAX_NEW_TOKENS)
        _bounded("--warmup", self.warmup, 0, MAX_WARMUP)
        _bounded("--runs", self.runs, 1, MAX_RUNS)
        _bounded("--profile-runs", self.profile_runs, 0, MAX_PROFILE_RUNS)
        _bounded("--seed", self.seed, 0, MAX_SEED)
        if self.threads is not None:
            _bounded("--threads", self.threads, 1, MAX_THREADS)
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9]{0,63}", self.provider or ""):
            raise ProfileError(f"--provider {self.provider!r} is not an onnxruntime provider name; "
                               "write e.g. CPUExecutionProvider")
        if self.prompt is not None:
            check_text(self.prompt)


def parse_lengths(text: str) -> tuple[int, ...]:
    """`"512,2048"` -> (512, 2048), in the order given, repeats dropped; ProfileError for anything else."""
    parts = [part for part in re.split(r"[,\s]+", text.strip()) if part]
    if not parts:
        raise ProfileError("--lengths names no length; write e.g. --lengths 512,2048")
    if len(parts) > MAX_LENGTHS:
        raise ProfileError(f"--lengths names {len(parts)} lengths; give at most {MAX_LENGTHS}")
    lengths: list[int] = []
    for part in parts:
        if not re.fullmatch(r"\d{1,9}", part):
            raise ProfileError(f"--lengths has {part[:20]!r}, not a whole number; write e.g. --lengths 512,2048")
        value = _bounded("--lengths", int(part), 1, MAX_LENGTH)
        if value not in lengths:
            lengths.append(value)
    return tuple(lengths)


def resolve_threads(threads: int | None) -> int | None:
    """The intra-op thread count the sessions get: `threads`, else EDGEATTN_THREADS (as every edgeattn
    session reads it), else None (onnxruntime's default: one per physical core)."""
    if threads is not None:
        return threads
    text = os.environ.get("EDGEATTN_THREADS")
    if not text:
        return None
    if not text.isdigit() or not 1 <= int(text) <= MAX_THREADS:
        raise ProfileError(f"EDGEATTN_THREADS={text[:20]!r} is not a thread count; set it to 1-{MAX_THREADS} "
                           "or unset it")
    return int(text)


def check_text(prompt: str) -> None:
    """A prompt click decoded from bytes that were not UTF-8 carries lone surrogates."""
    for index, char in enumerate(prompt):
        if "\ud800" <= char <= "\udfff":
            raise ProfileError(f"--prompt is not valid UTF-8 text (an undecodable byte at character {index}); "
                               "pass the prompt as UTF-8")
    if not prompt.strip():
        raise ProfileError("--prompt is empty; give some text, or leave it out to generate inputs at --lengths")


def _bounded(flag: str, value: int, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ProfileError(f"{flag} must be a whole number from {low} to {high} (got {value!r})")
    return value


__all__ = ["DEFAULT_LENGTHS", "DEFAULT_PROVIDER", "MAX_TARGETS", "ProfileError", "ProfileOptions", "check_text",
           "parse_lengths", "resolve_threads"]
