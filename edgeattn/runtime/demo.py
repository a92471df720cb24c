"""The demo job: export a model, run each variant on the same input side by side, compare latency."""

from __future__ import annotations

import contextlib
import statistics
from pathlib import Path
from typing import Any, Callable, ContextManager

import numpy as np

Step = Callable[[str], ContextManager[None]]
REPEATS = 5


def demo_image(size: int) -> np.ndarray:
    """A deterministic RGB test card (colour gradients and a disc), so the demo needs no files."""
    y, x = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    disc = ((x - 0.6) ** 2 + (y - 0.4) ** 2) < 0.08
    rgb = np.stack([x, y, np.where(disc, 1.0, 0.2)], axis=-1)
    return (rgb * 255).astype(np.uint8)


def run_demo(model: str, out: str | Path, prompt: str, max_new_tokens: int, step: Step = lambda _: contextlib.nullcontext()) -> dict[str, Any]:
    from transformers import AutoTokenizer

    from edgeattn.exporter.api import ExportOptions, export_model
    from edgeattn.runtime.generate import DecoderRunner
    from edgeattn.runtime.images import pixel_values

    folder = Path(out) / model.replace(":", "_")
    manifest = export_model(model, folder, ExportOptions(force=True), step=step)
    tokenizer = AutoTokenizer.from_pretrained(folder / manifest["tokenizer"])
    ids = list(tokenizer(prompt)["input_ids"])
    pixels = None
    if manifest["family"] == "vlm":
        pixels = pixel_values(demo_image(manifest["vision"]["image_size"]), manifest["vision"])
        ids = [manifest["image_token_id"]] * manifest["image_token_count"] + ids
    variants = [("dense export", folder, manifest)]
    rows = []
    for name, path, man in variants:
        with step(f"run {name} ({REPEATS} repeats)"):
            runner = DecoderRunner(path, man)
            runs = [runner.generate(ids, max_new_tokens, pixels) for _ in range(REPEATS)]
        rows.append(
            {
                "variant": name,
                "folder": str(path),
                "ttft_ms": statistics.median(r.ttft_ms for r in runs),
                "tpot_ms": statistics.median(r.tpot_ms for r in runs),
                "tokens": runs[0].tokens,
                "text": tokenizer.decode(runs[0].tokens, skip_special_tokens=True),
            }
        )
    for row in rows:
        row["speedup"] = rows[0]["ttft_ms"] / row["ttft_ms"]
    return {"model": model, "prompt_tokens": len(ids), "repeats": REPEATS, "variants": rows}
