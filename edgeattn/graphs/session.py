"""onnxruntime sessions: made lazily from a path, with edgeattn's defaults."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from edgeattn.errors import GraphError, RuntimeUnavailableError


def session_from_onnx(path: str | Path, providers: list[str] | None = None, threads: int | None = None,
                      profile_prefix: str | None = None) -> Any:
    """An ``onnxruntime.InferenceSession`` on ``path``. CPU by default; ``threads`` caps intra-op threads;
    with ``profile_prefix`` onnxruntime's profiler writes its events to ``<prefix>_<date>.json`` (the
    session's ``end_profiling`` returns the name)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads is None and os.environ.get("EDGEATTN_THREADS"):
        text = os.environ["EDGEATTN_THREADS"]
        if not text.isdigit() or not 1 <= int(text) <= 1024:
            raise RuntimeUnavailableError(f"EDGEATTN_THREADS={text!r} is not a thread count; set it to 1-1024 or unset it")
        threads = int(text)
    if threads:
        opts.intra_op_num_threads = threads
    if profile_prefix is not None:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile_prefix
    available = ort.get_available_providers()
    wanted = providers or ["CPUExecutionProvider"]
    missing = [p for p in wanted if p not in available]
    if missing:
        raise RuntimeUnavailableError(
            f"onnxruntime provider(s) {', '.join(missing)} not available here; available: {', '.join(available)}"
        )
    from edgeattn.graphs.io import load

    load(path)  # refuses unreadable files and external data outside the model's folder, in one line
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=wanted)
    except Exception as err:  # noqa: BLE001 - onnxruntime raises its own Fail/InvalidGraph/... types
        raise GraphError(f"onnxruntime cannot load {path} ({type(err).__name__}: {one_line(err)}); re-export the "
                         "model or check the file") from None


def one_line(err: object, limit: int = 300) -> str:
    text = " ".join(str(err).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
