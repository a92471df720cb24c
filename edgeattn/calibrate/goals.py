"""What `--method` and `--target` ask for, parsed and checked before any model is read.

    parse_method("block:block=64")       -> Method("block", op BlockSparseAttention, tunable "keep")
    parse_method("window:sinks=4")       -> Method("window", op BlockSparseAttention, tunable "window")
    parse_goals("sparsity=0.5,ppl=+2%")  -> (Goal("sparsity", 0.5), Goal("ppl", 0.02))
    parse_goals("kl=0.05,tokens=16", prune=True) -> (Goal("kl", 0.05), Goal("tokens", 16.0))

A sparsity goal is a target to reach (the measured skip ratio, or 1 - density, at least that much, as
little above it as the candidates allow); ppl and kl goals are bounds to respect (the largest perplexity
increase and the largest mean KL divergence of the next-token distribution against the dense model).
With bounds only, calibration takes the most compute away that keeps within them. `tokens=N` is the
image-token budget of prune:NAME calibration (`edgeattn.calibrate.prune`), which takes no ppl goal.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from edgeattn.errors import EdgeAttnError

RECORD_FORMAT = "edgeattn.calibration/1"  # calibration.json, for every method
GOAL_NAMES = ("sparsity", "ppl", "kl")
PRUNE_GOAL_NAMES = ("kl", "tokens", "sparsity")
# The parameters a window method may fix besides layers/name (its window is what calibration chooses);
# the select layout's belong to block, which refuses the window layout's own (WINDOW_ONLY).
WINDOW_PARAMETERS = ("block_size", "sinks", "heads", "dense_decode")
WINDOW_ONLY = ("window", "sinks")
DENSE_WINDOW = 1 << 20  # at least any calibration length (--max-tokens): every key in the window
GRANULARITIES = ("layer", "model")


class CalibrationError(EdgeAttnError):
    """A calibration that cannot be run or cannot meet its goals: one line for the user."""


@dataclass(frozen=True)
class Goal:
    name: str  # sparsity | ppl | kl | tokens
    value: float  # sparsity fraction; ppl: the relative increase (0.02 for +2%); kl: nats; tokens: a count

    @property
    def text(self) -> str:
        if self.name == "ppl":
            return f"ppl=+{self.value * 100:g}%"
        if self.name == "tokens":
            return f"tokens={int(self.value)}"
        return f"{self.name}={self.value:g}"


@dataclass(frozen=True)
class Method:
    name: str  # blasst | block | window
    flag: str  # the method as written (a --sparse flag without the tunable)
    entry: dict[str, Any] = field(hash=False, compare=False)  # the recipe entry the flag gives
    tunable: str = ""  # the attribute calibration chooses
    dense_value: float = 0.0  # the tunable's value that computes every score
    statistic: str = ""  # the op's statistics output (skip_ratio, density)

    def sparsity(self, statistic: float) -> float:
        """The statistic as a sparsity (a skip ratio is one; a density d is 1 - d)."""
        return statistic if self.statistic == "skip_ratio" else 1.0 - statistic


_METHOD = re.compile(r"^\s*([a-z_]+)(?::(.*))?$")


def parse_method(text: str) -> Method:
    """`blasst[:key=value,...]`, `block[:key=value,...]` or `window[:key=value,...]`: the op and its fixed
    parameters; the tunable (scale_factor; keep, or threshold with mode=threshold; window) is what
    calibration chooses."""
    from edgeattn.graphs.sparse.flags import parse_sparse_flag

    found = _METHOD.match(text)
    name = found.group(1) if found else ""
    if name not in ("blasst", "block", "window"):
        raise CalibrationError(f"--method {text!r} names no calibration method; use blasst, block or window "
                               "(optionally with fixed parameters, e.g. block:block=64), prune:NAME or debias[:NAME]")
    try:
        entry = parse_sparse_flag(text)
    except EdgeAttnError as err:
        raise CalibrationError(str(err)) from None
    if name == "blasst":
        tunable, dense, statistic = "scale_factor", 0.0, "skip_ratio"
    elif name == "window":
        tunable, dense, statistic = "window", float(DENSE_WINDOW), "density"
        _check_window_entry(text, entry)
    elif entry.get("mode", "topk") == "threshold":
        tunable, dense, statistic = "threshold", 0.0, "density"
    elif entry.get("mode", "topk") == "topk":
        tunable, dense, statistic = "keep", 1.0, "density"
    else:
        raise CalibrationError(f"--method {text!r}: block calibration chooses keep (mode=topk) or threshold "
                               f"(mode=threshold), not mode={entry.get('mode')}")
    if name == "block" and entry.get("layout", "select") != "select":
        raise CalibrationError(f"--method {text!r}: block calibration needs the select layout")
    for key in WINDOW_ONLY if name == "block" else ():
        if key in entry:
            raise CalibrationError(f"--method {text!r}: {key} belongs to the window layout (--method window); "
                                   "block calibrates the select layout")
    for key in (tunable, "layers", "name", "keep_blocks"):
        if key in entry:
            raise CalibrationError(f"--method {text!r} fixes {key}; calibration chooses {tunable} for every "
                                   "layer: drop it from the method")
    return Method(name, text.strip(), entry, tunable, dense, statistic)


def _check_window_entry(text: str, entry: dict[str, Any]) -> None:
    """A window method fixes only the window layout's parameters (the select layout's belong to block)."""
    for key in entry:
        if key not in ("op", "layout", "window", "layers", "name", *WINDOW_PARAMETERS):
            raise CalibrationError(f"--method {text!r}: {key} is not a parameter of the window layout; window "
                                   "calibration takes sinks, block, heads and decode")


def parse_goals(text: str, prune: bool = False) -> tuple[Goal, ...]:
    """`sparsity=0.5`, `ppl=+2%`, `kl=0.02`, comma-separated; all must hold. With `prune` (image-token
    pruning): `kl=0.05`, `tokens=64`, `sparsity=0.75` (1 - k/N)."""
    names = PRUNE_GOAL_NAMES if prune else GOAL_NAMES
    goals: dict[str, Goal] = {}
    for part in [p.strip() for p in text.split(",")]:
        key, sep, raw = part.partition("=")
        key, raw = key.strip(), raw.strip()
        if not sep or not raw:
            raise CalibrationError(f"--target {text!r}: {part!r} is not NAME=VALUE; e.g. sparsity=0.5,ppl=+2%")
        if key == "tokens" and not prune:
            raise CalibrationError(f"--target {text!r}: tokens= is the image-token budget of prune:NAME "
                                   f"calibration; blasst, block and window take {', '.join(GOAL_NAMES)}")
        if key == "ppl" and prune:
            raise CalibrationError(f"--target {text!r}: ppl has no meaning for image-token pruning (no text "
                                   f"to score); use {', '.join(PRUNE_GOAL_NAMES)}")
        if key not in names:
            raise CalibrationError(f"--target {text!r}: unknown goal {key!r}; known goals: {', '.join(names)}")
        if key in goals:
            raise CalibrationError(f"--target {text!r} gives {key} twice")
        goals[key] = Goal(key, _goal_value(key, raw, text))
    return tuple(goals.values())


def _goal_value(key: str, raw: str, text: str) -> float:
    percent = raw.endswith("%")
    number = raw[:-1] if percent else raw
    if key == "ppl" and not percent:
        raise CalibrationError(f"--target {text!r}: write the perplexity bound as a relative increase, e.g. ppl=+2%")
    try:
        value = float(number)
    except ValueError:
        raise CalibrationError(f"--target {text!r}: {raw!r} is not a number") from None
    value = value / 100 if percent else value
    if not math.isfinite(value):
        raise CalibrationError(f"--target {text!r}: {key} must be a finite number")
    if key == "tokens" and (value != int(value) or not 1 <= value <= 1 << 20):
        raise CalibrationError(f"--target {text!r}: tokens must be a whole number of image tokens from 1, got {raw}")
    if key == "sparsity" and not 0.0 < value < 1.0:
        raise CalibrationError(f"--target {text!r}: sparsity must be in (0, 1), got {value:g}")
    if key in ("ppl", "kl") and value <= 0.0:
        raise CalibrationError(f"--target {text!r}: {key} must be a bound above 0, got {raw}")
    return value


__all__ = ["GOAL_NAMES", "GRANULARITIES", "PRUNE_GOAL_NAMES", "RECORD_FORMAT", "CalibrationError", "Goal", "Method",
           "parse_goals", "parse_method"]
