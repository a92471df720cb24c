"""What the app API returns: a finished generation, and encoder outputs with their time."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np


@dataclass(frozen=True)
class Generated:
    """One greedy generation: the text (special tokens left out), the generated token ids, the prompt's
    length in tokens (image placeholders included) and the times onnxruntime took."""

    text: str
    tokens: tuple[int, ...]
    prompt_tokens: int
    ttft_ms: float  # vision + embed + prefill + first token
    tpot_ms: float  # mean time per generated token after the first (0 when only one was generated)
    stages_ms: Mapping[str, float] = field(default_factory=dict)  # vision_ms (with an image), prefill_ms
    kept_indices: tuple[int, ...] | None = None  # the visual tokens a pruned export kept (patch positions)


@dataclass(frozen=True)
class Encoded:
    """An encoder's outputs by name, and the wall time of the onnxruntime run that made them."""

    outputs: Mapping[str, np.ndarray]
    latency_ms: float
