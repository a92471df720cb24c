"""Shared by the benchmark scripts: machine description, atomic JSON output, argument lists and the
`run_benchmark` wrapper that turns a bad input into one line and exit code 1."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    import onnxruntime
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def write_json(name: str, payload: dict[str, Any]) -> Path:
    """Write ``results/<name>.json`` atomically (and to $OUT too when set)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    text = json.dumps(payload, indent=2, default=str) + "\n"
    targets = [RESULTS / f"{name}.json"]
    if os.environ.get("OUT"):
        targets.append(Path(os.environ["OUT"]) / f"{name}.json")
    for path in targets:
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    return targets[0]


def median_ms(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def int_list(text: str) -> list[int]:
    """argparse type: "1024,2048" -> [1024, 2048] (a usage error otherwise)."""
    return _number_list(text, int)


def float_list(text: str) -> list[float]:
    """argparse type: "100,1000" -> [100.0, 1000.0]; "" -> []."""
    return _number_list(text, float)


def _number_list(text: str, kind: Callable[[str], Any]) -> list[Any]:
    try:
        return [kind(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of {kind.__name__} values") from None


def run_benchmark(main: Callable[[], Any]) -> None:
    """Run a benchmark's `main`: an edgeattn error (a bad model, folder or setting) is one line on
    stderr and exit code 1, not a traceback."""
    from edgeattn.errors import EdgeAttnError

    try:
        main()
    except EdgeAttnError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
