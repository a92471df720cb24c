"""Profiling: latency percentiles, interleaved A/B ratios, onnxruntime's per-op and per-site breakdown,
and peak memory, for exported folders and ONNX files (`edgeattn profile`, docs/profiling.md).

    from edgeattn.profile import ProfileOptions, profile

    record = profile(["smollm2/decoder.onnx", "smollm2-blasst/decoder.onnx"], ProfileOptions(lengths=(512,)))
    record["configs"][0]["comparison"][0]["ratio"]  # B/A: the median of per-round ratios
"""

from __future__ import annotations

from edgeattn.profile.api import FORMAT, profile
from edgeattn.profile.settings import ProfileError, ProfileOptions, parse_lengths

__all__ = ["FORMAT", "ProfileError", "ProfileOptions", "parse_lengths", "profile"]
