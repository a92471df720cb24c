"""The demo job: export a model, run each variant on the same input side by side, compare latency."""

from __future__ import annotations

import contextlib
import statistics
from pathlib import Path
from typing import Any, Callable, ContextManager

import numpy as np

from edgeattn.manifest import Manifest

Step = Callable[[str], ContextManager[None]]
REPEATS = 20


def demo_image(size: int) -> np.ndarray:
    """A deterministic RGB test card (colour gradients and a disc), so the demo needs no files."""
    y, x = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    disc = ((x - 0.6) ** 2 + (y - 0.4) ** 2) < 0.08
    rgb = np.stack([x, y, np.where(disc, 1.0, 0.2)], axis=-1)
    return (rgb * 255).astype(np.uint8)


def run_demo(
    model: str, out: str | Path, prompt: str, max_new_tokens: int, step: Step = lambda _: contextlib.nullcontext()
) -> dict[str, Any]:
    """Export ``model`` dense and (for a VLM) pruned to a quarter of its visual tokens, then time both."""
    from transformers import AutoTokenizer

    from edgeattn.exporter.sources import load_model
    from edgeattn.runtime.images import pixel_values

    with step(f"load {model}"):
        loaded = load_model(model)
    variants = export_variants(loaded, Path(out) / model.replace(":", "_"), step)
    dense = variants[0][2]
    tokenizer = AutoTokenizer.from_pretrained(variants[0][1] / str(dense.tokenizer))
    ids = list(tokenizer(prompt)["input_ids"])
    pixels = None
    if dense.family == "vlm" and dense.vision is not None:
        pixels = pixel_values(demo_image(dense.vision.image_size), dense.vision.preprocess())
    rows = []
    for name, folder, manifest in variants:
        with step(f"run {name} ({REPEATS} repeats)"):
            rows.append(time_variant(name, folder, manifest, ids, pixels, max_new_tokens))
        rows[-1]["text"] = tokenizer.decode(rows[-1]["tokens"], skip_special_tokens=True)
    for row in rows:
        row["speedup"] = rows[0]["ttft_ms"] / row["ttft_ms"]
    return {"model": model, "text_tokens": len(ids), "repeats": REPEATS, "variants": rows}


def export_variants(loaded: Any, base: Path, step: Step) -> list[tuple[str, Path, Manifest]]:
    from edgeattn.exporter.api import ExportOptions, export_model

    manifest = export_model(loaded, base / "dense", ExportOptions(force=True), step=step)
    variants = [("dense export", base / "dense", manifest)]
    if manifest.family == "vlm":
        from edgeattn.graphs.pruning import parse_prune

        prune = f"fastervlm:{max(1, (manifest.image_token_count or 4) // 4)}"
        options = ExportOptions(force=True, prune=parse_prune(prune))
        variants.append((f"pruned {prune}", base / "pruned", export_model(loaded, base / "pruned", options, step=step)))
    return variants


def time_variant(
    name: str, folder: Path, manifest: Manifest, ids: list[int], pixels: np.ndarray | None, max_new_tokens: int
) -> dict[str, Any]:
    """Median time to first token and per token over REPEATS generations (after one warm-up)."""
    from edgeattn.runtime.generate import DecoderRunner

    if manifest.family == "vlm":
        ids = [manifest.image_token_id] * (manifest.image_token_count or 0) + ids
    runner = DecoderRunner(folder, manifest)
    runner.generate(ids, max_new_tokens, pixels)
    runs = [runner.generate(ids, max_new_tokens, pixels) for _ in range(REPEATS)]
    return {
        "variant": name,
        "folder": str(folder),
        "prompt_tokens": len(ids),
        "ttft_ms": statistics.median(r.ttft_ms for r in runs),
        "tpot_ms": statistics.median(r.tpot_ms for r in runs),
        "tokens": runs[0].tokens,
    }
