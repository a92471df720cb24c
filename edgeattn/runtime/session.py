"""onnxruntime sessions: made lazily from a path, with edgeattn's defaults."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from edgeattn.errors import RuntimeUnavailableError


def session_from_onnx(path: str | Path, providers: list[str] | None = None, threads: int | None = None) -> Any:
    """An ``onnxruntime.InferenceSession`` on ``path``. CPU by default; ``threads`` caps intra-op threads."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads is None and os.environ.get("EDGEATTN_THREADS"):
        threads = int(os.environ["EDGEATTN_THREADS"])
    if threads:
        opts.intra_op_num_threads = threads
    available = ort.get_available_providers()
    wanted = providers or ["CPUExecutionProvider"]
    missing = [p for p in wanted if p not in available]
    if missing:
        raise RuntimeUnavailableError(
            f"onnxruntime provider(s) {', '.join(missing)} not available here; available: {', '.join(available)}"
        )
    return ort.InferenceSession(str(path), sess_options=opts, providers=wanted)
