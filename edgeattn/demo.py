"""The demo job: export a VLM once, prune its exported vision graph, run both, compare time to first token.

    export MODEL -> OUT/<model>/dense            (validated against PyTorch; reused when already there)
    rewrite OUT/<model>/dense OUT/<model>/pruned --prune fastervlm:K   (the graph pass; nothing re-exported)
    run both on one image and prompt, interleaved: dense, pruned, dense, pruned, ...

The speedup is the median over rounds of (dense TTFT / pruned TTFT), each round timing both variants back
to back, so a machine that slows down or speeds up meanwhile still gives a fair ratio; the spread over
rounds is shown beside it. The FLOP-ideal speedup counts the multiply-adds of the same graphs
(`edgeattn.graphs.flops`): vision at its full token count plus the prefill of the visual and text tokens.
"""

from __future__ import annotations

import contextlib
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ContextManager

import numpy as np

from edgeattn.version import __version__
from edgeattn.manifest import Manifest

Step = Callable[[str], ContextManager[None]]
DEFAULT_MODEL = "demo:dinov2-smollm2"
ROUNDS = 5
KEEP_FRACTION = 9  # keep 1/9 of the visual tokens (FasterVLM prunes 75-95 %)


def demo_image(size: int) -> np.ndarray:
    """A deterministic RGB test card (colour gradients and a disc), for when no photograph is at hand."""
    y, x = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    disc = ((x - 0.6) ** 2 + (y - 0.4) ** 2) < 0.08
    rgb = np.stack([x, y, np.where(disc, 1.0, 0.2)], axis=-1)
    return (rgb * 255).astype(np.uint8)


def photograph() -> tuple[np.ndarray | None, str]:
    """A real photograph that ships with an installed package (scikit-learn's sample images, installed by
    `make demo`), else None. Returns (RGB uint8 array, where it came from)."""
    try:
        from sklearn.datasets import load_sample_image
    except ImportError:
        return None, "no sample photograph installed (scikit-learn)"
    return np.ascontiguousarray(load_sample_image("china.jpg")), "scikit-learn's sample photograph china.jpg"


@dataclass
class Variant:
    name: str
    folder: Path
    manifest: Manifest
    image_tokens: int | None


def run_demo(model: str, out: str | Path, prompt: str, max_new_tokens: int,
             step: Step = lambda _: contextlib.nullcontext(), rounds: int = ROUNDS,
             image: str | None = None, picture: bool = True) -> dict[str, Any]:
    """Export `model` once, prune a VLM's vision graph to 1/9 of its tokens, time both side by side, and
    (for a VLM) draw the kept tokens on the image. Returns the report the CLI prints."""
    from edgeattn.runtime.images import load_image, pixel_values

    given = load_image(image) if image is not None else None  # a bad image is refused before the export
    base = Path(out) / model.replace(":", "_")
    variants = [export_once(model, base / "dense", step)]
    dense = variants[0].manifest
    if dense.family == "vlm" and dense.vision is not None:
        variants.append(prune_variant(variants[0], base / "pruned", step))
    if given is not None:
        rgb, source = given, str(image)
    else:
        rgb, source = photograph()
        if rgb is None:
            rgb, source = demo_image(dense.vision.image_size if dense.vision else 224), f"a test card ({source})"
    pixels = pixel_values(rgb, dense.vision.preprocess()) if dense.vision is not None else None
    tokenizer = _tokenizer(variants[0])
    text_ids = list(tokenizer(prompt)["input_ids"])
    with step(f"time {' and '.join(v.name for v in variants)}, interleaved ({rounds} rounds)"):
        rows = time_variants(variants, text_ids, pixels, max_new_tokens, rounds)
    for row in rows:
        row["text"] = tokenizer.decode(row.pop("tokens"), skip_special_tokens=True)
    add_ideal(rows, variants, len(text_ids))
    report = {"model": model, "edgeattn": __version__, "text_tokens": len(text_ids), "rounds": rounds,
              "image": source, "variants": rows, "picture": None}
    if picture and len(variants) > 1:
        report["picture"] = draw_kept(variants, rgb, base / "kept.png", step)
    return report


def export_once(model: str, folder: Path, step: Step) -> Variant:
    """The dense export in `folder`: reused when a complete export of `model` by this edgeattn is there."""
    from edgeattn.errors import EdgeAttnError
    from edgeattn.exporter.api import ExportOptions, export_model
    from edgeattn.manifest import read_manifest

    try:
        manifest = read_manifest(folder)
        if (manifest.model == model and manifest.document.get("edgeattn_version") == __version__
                and not manifest.pruning and not manifest.sparse):
            with step(f"reuse the export of {model} in {folder} (delete it to export again)"):
                pass
            return Variant("dense", folder, manifest, manifest.image_token_count)
    except EdgeAttnError:
        pass
    manifest = export_model(model, folder, ExportOptions(force=True), step=step)
    return Variant("dense", folder, manifest, manifest.image_token_count)


def prune_variant(dense: Variant, folder: Path, step: Step) -> Variant:
    """`edgeattn rewrite DENSE PRUNED --prune fastervlm:K` with K = 1/9 of the visual tokens."""
    from edgeattn.exporter.variant import VariantOptions, rewrite_folder
    from edgeattn.graphs.pruning import parse_prune
    from edgeattn.manifest import read_manifest

    flag = f"fastervlm:{max(1, (dense.manifest.image_token_count or KEEP_FRACTION) // KEEP_FRACTION)}"
    rewrite_folder(dense.folder, folder, VariantOptions(prune=parse_prune(flag), prune_flag=flag), force=True,
                   step=step)
    manifest = read_manifest(folder)
    return Variant(f"pruned {flag}", folder, manifest, manifest.image_token_count)


def _tokenizer(variant: Variant) -> Any:
    from edgeattn.runtime.tokenizer import load_tokenizer

    return load_tokenizer(variant.folder, variant.manifest)


def time_variants(variants: list[Variant], text_ids: list[int], pixels: np.ndarray | None, max_new_tokens: int,
                  rounds: int) -> list[dict[str, Any]]:
    """One warm-up generation each, then `rounds` rounds generating with every variant in turn."""
    from edgeattn.runtime.generate import DecoderRunner

    runners = [DecoderRunner(v.folder, v.manifest) for v in variants]
    prompts = [[v.manifest.image_token_id] * (v.image_tokens or 0) + text_ids if pixels is not None else text_ids
               for v in variants]
    for runner, ids in zip(runners, prompts):
        runner.generate(ids, max_new_tokens, pixels)
    runs: list[list[Any]] = [[] for _ in variants]
    for _ in range(rounds):
        for index, (runner, ids) in enumerate(zip(runners, prompts)):
            runs[index].append(runner.generate(ids, max_new_tokens, pixels))
    rows = []
    for variant, ids, gens in zip(variants, prompts, runs):
        ttft = [g.ttft_ms for g in gens]
        ratios = [a.ttft_ms / b.ttft_ms for a, b in zip(runs[0], gens)]
        rows.append({
            "variant": variant.name, "folder": str(variant.folder), "image_tokens": variant.image_tokens,
            "prompt_tokens": len(ids), "ttft_rounds_ms": ttft, "ttft_ms": statistics.median(ttft), "ttft_min_ms": min(ttft),
            "ttft_max_ms": max(ttft), "tpot_ms": statistics.median(g.tpot_ms for g in gens),
            "vision_ms": statistics.median(g.stages_ms.get("vision_ms", 0.0) for g in gens),
            "speedup": statistics.median(ratios), "speedup_min": min(ratios), "speedup_max": max(ratios),
            "tokens": gens[0].tokens,
        })
    return rows


def add_ideal(rows: list[dict[str, Any]], variants: list[Variant], text_tokens: int) -> None:
    """The FLOP-ideal speedup of each variant over the first: vision (all its tokens) + prefill."""
    from edgeattn.graphs import load
    from edgeattn.graphs.flops import forward_flops

    dense = variants[0]
    decoder = load(dense.folder / dense.manifest.file_of("decoder"))
    vision = 0.0
    if "vision" in dense.manifest.components and dense.manifest.vision is not None:
        # the vision graph runs on every patch (and a class token) whatever is kept afterwards
        tokens = (dense.manifest.vision.num_image_tokens or 0) + 1
        vision = forward_flops(load(dense.folder / dense.manifest.file_of("vision")), tokens, "vision")
    total = [vision + forward_flops(decoder, row["prompt_tokens"], "decoder") for row in rows]
    for row, flops in zip(rows, total):
        row["gflops"] = flops / 1e9
        row["ideal_speedup"] = total[0] / flops


def draw_kept(variants: list[Variant], rgb: np.ndarray, path: Path, step: Step) -> str:
    """`edgeattn show DENSE --compare PRUNED`: the image on its patch grid, every token, then the kept ones
    highlighted (the dropped ones dimmed), side by side."""
    from edgeattn.show import kept_picture, show_kept, write_png

    with step(f"draw the kept tokens to {path}"):
        image, record = kept_picture(show_kept([v.folder for v in variants], rgb))
        write_png(image, path, record)
    return str(path)
