"""Shared by the benchmark scripts: machine description, atomic JSON output, argument lists, the
`run_benchmark` wrapper that turns a bad input into one line and exit code 1, and the digit images the
pruning benchmarks feed DINOv2 (scikit-learn's digits as edgeattn preprocesses an image)."""

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

import numpy as np

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
    targets = [RESULTS / f"{name}.json"]
    if os.environ.get("OUT"):
        targets.append(Path(os.environ["OUT"]) / f"{name}.json")
    for path in targets:
        write_json_at(path, payload)
    return targets[0]


def write_json_at(path: Path, payload: dict[str, Any]) -> Path:
    """Write `payload` as JSON to `path` atomically."""
    return write_text_at(path, json.dumps(payload, indent=2, default=str) + "\n")


def write_text_at(path: Path, text: str) -> Path:
    """Write `text` to `path` atomically (a temporary file in the same folder, then a rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


DINOV2_VISION = {"image_size": 224, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def digit_pixels(images: np.ndarray, vision: dict[str, Any] | None = None) -> np.ndarray:
    """[n, H, W] digit intensities (0..16, scikit-learn's scale; one digit or a canvas of them) ->
    [n, 3, S, S] pixel values, resized (bicubic) and normalised as edgeattn preprocesses an image
    (`vision`: image_size, mean, std; default DINOv2's)."""
    from edgeattn.runtime.images import pixel_values

    rgb = np.repeat((np.asarray(images) / 16.0 * 255.0).round().astype(np.uint8)[..., None], 3, axis=-1)
    return np.concatenate([pixel_values(img, vision or DINOV2_VISION) for img in rgb])


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
