"""Time to first token of demo:dinov2-smollm2 in onnxruntime CPU, unpruned and pruned to k visual tokens.

demo:dinov2-smollm2 is real DINOv2 ViT-S/14 at 336x336 (576 patches) + an untrained projector + real
SmolLM2-135M: real timing, meaningless answers. It is exported once (validated against PyTorch); each
pruned variant is the same vision.onnx with `fastervlm:K` inserted by the graph pass. TTFT = vision +
embed + prefill of (k image tokens + 32 prompt tokens) + the first token's argmax, in one process, the
variants measured in turn (interleaved) and the median taken over the repeats.

The ideal speedup counts the multiply-adds of the same components analytically from the configs
(every matmul: DINOv2 patch embedding, attention and MLPs of the 11 layers the features need (LLaVA's
feature layer -2), the projector; SmolLM2 projections, attention scores and values over all L x L
positions as onnxruntime's CPU kernel computes them, MLPs and the LM head on every position, since the
exported decoder returns logits for all of them). Elementwise ops, norms and softmax are not counted.

    python -m benchmarks.pruning_speed [--repeats 15] [--cache DIR]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import RESULTS, machine, median_ms, run_benchmark, write_json

KS = (192, 128, 64)
PROMPT_TOKENS = 32
MODEL = "demo:dinov2-smollm2"
PROMPT = ("Describe this picture in detail: the objects, their colours and positions, what is happening, "
          "and anything unusual that a careful observer would notice about the scene and its lighting.")


def vision_flops(cfg: dict[str, int], tokens: int, layers: int) -> float:
    d, hidden, patches = cfg["vision_hidden"], cfg["vision_mlp"], tokens - 1
    per_layer = 2 * tokens * (4 * d * d + 2 * d * hidden) + 2 * 2 * tokens * tokens * d
    patch_embed = 2 * patches * (3 * cfg["patch"] ** 2) * d
    projector = 2 * patches * (d * cfg["text_hidden"] + cfg["text_hidden"] ** 2)
    return layers * per_layer + patch_embed + projector


def prefill_flops(cfg: dict[str, int], length: int) -> float:
    d, head, heads, kv = cfg["text_hidden"], cfg["head_dim"], cfg["heads"], cfg["kv_heads"]
    projections = 2 * length * d * (heads * head + 2 * kv * head + heads * head)
    attention = 2 * 2 * length * length * heads * head
    mlp = 2 * length * 3 * d * cfg["text_mlp"]
    head_logits = 2 * length * d * cfg["vocab"]
    return cfg["text_layers"] * (projections + attention + mlp) + head_logits


def geometry(manifest: Any, model: Any) -> dict[str, int]:
    vcfg, tcfg = model.config.vision_config, model.config.text_config
    return {
        "vision_hidden": vcfg.hidden_size, "vision_mlp": vcfg.hidden_size * vcfg.mlp_ratio, "patch": vcfg.patch_size,
        "vision_layers": vcfg.num_hidden_layers, "text_hidden": tcfg.hidden_size, "text_mlp": tcfg.intermediate_size,
        "heads": tcfg.num_attention_heads, "kv_heads": tcfg.num_key_value_heads,
        "head_dim": getattr(tcfg, "head_dim", None) or tcfg.hidden_size // tcfg.num_attention_heads,
        "text_layers": tcfg.num_hidden_layers, "vocab": tcfg.vocab_size,
    }


class Variant:
    def __init__(self, name: str, vision_path: Path, folder: Path, manifest: Any, threads: int) -> None:
        from edgeattn.runtime.generate import DecoderRunner
        from edgeattn.graphs.session import session_from_onnx

        self.name = name
        self.runner = DecoderRunner(folder, manifest, threads=threads)
        self.runner.vision = session_from_onnx(vision_path, threads=threads)
        self.tokens = int(self.runner.vision.get_outputs()[0].shape[1])
        self.stages: list[dict[str, float]] = []

    def ttft(self, pixels: np.ndarray, text_ids: list[int], image_id: int) -> int:
        gen = self.runner.generate([image_id] * self.tokens + text_ids, 1, pixels)
        self.stages.append(gen.stages_ms)
        return gen.tokens[0]


def ensure_export(folder: Path) -> Any:
    from edgeattn.exporter.api import ExportOptions, export_model
    from edgeattn.manifest import read_manifest

    if (folder / "manifest.json").is_file():
        return read_manifest(folder)
    return export_model(MODEL, folder, ExportOptions(force=True))


def run(repeats: int, cache: Path, threads: int) -> dict[str, Any]:
    from transformers import AutoTokenizer

    from edgeattn.exporter.sources import load_model
    from edgeattn.graphs.pruning import prune_file
    from edgeattn.demo import demo_image
    from edgeattn.runtime.images import pixel_values

    folder = cache / "dinov2-smollm2"
    start = time.perf_counter()
    manifest = ensure_export(folder)
    export_s = time.perf_counter() - start
    cfg = geometry(manifest, load_model(MODEL).model)
    variants = [Variant("unpruned", folder / "vision.onnx", folder, manifest, threads)]
    for k in KS:
        path = folder / f"vision_fastervlm_{k}.onnx"
        if not path.is_file():
            prune_file(folder / "vision.onnx", path, f"fastervlm:{k}")
        variants.append(Variant(f"fastervlm k={k}", path, folder, manifest, threads))
    tokenizer = AutoTokenizer.from_pretrained(folder / str(manifest.tokenizer))
    text_ids = list(tokenizer(PROMPT)["input_ids"])[:PROMPT_TOKENS]
    assert len(text_ids) == PROMPT_TOKENS, len(text_ids)
    pixels = pixel_values(demo_image(manifest.vision.image_size), manifest.vision.preprocess())
    image_id = manifest.image_token_id
    for variant in variants:  # warm-up
        variant.ttft(pixels, text_ids, image_id)
        variant.stages.clear()
    times: dict[str, list[float]] = {v.name: [] for v in variants}
    for _ in range(repeats):
        for variant in variants:
            times[variant.name].append(median_ms(lambda v=variant: v.ttft(pixels, text_ids, image_id), 1, warmup=0))
    layers = cfg["vision_layers"] - 1  # the feature layer is -2: the last layer is not in the graph
    patches = manifest.vision.num_image_tokens
    dense_flops = vision_flops(cfg, patches + 1, layers) + prefill_flops(cfg, patches + PROMPT_TOKENS)
    rows = []
    for variant in variants:
        flops = vision_flops(cfg, patches + 1, layers) + prefill_flops(cfg, variant.tokens + PROMPT_TOKENS)
        rows.append({
            "variant": variant.name,
            "image_tokens": variant.tokens,
            "sequence": variant.tokens + PROMPT_TOKENS,
            "ttft_ms": float(np.median(times[variant.name])),
            "vision_ms": float(np.median([s["vision_ms"] for s in variant.stages])),
            "prefill_ms": float(np.median([s["prefill_ms"] for s in variant.stages])),
            "gflops": flops / 1e9,
            "ideal_speedup": dense_flops / flops,
        })
    for row in rows:
        row["speedup"] = rows[0]["ttft_ms"] / row["ttft_ms"]
        row["share_of_ideal"] = (row["speedup"] - 1) / (row["ideal_speedup"] - 1) if row["ideal_speedup"] > 1 else 1.0
        row["ratio_to_ideal"] = row["speedup"] / row["ideal_speedup"]
    return {"model": MODEL, "prompt_tokens": PROMPT_TOKENS, "repeats": repeats, "threads": threads,
            "export_seconds": round(export_s, 1), "rows": rows, "geometry": cfg,
            "vision_gflops": vision_flops(cfg, patches + 1, layers) / 1e9}


def markdown(result: dict[str, Any], info: dict[str, Any]) -> str:
    lines = [
        f"{result['model']} (real DINOv2 ViT-S/14 at 336x336 + untrained projector + real SmolLM2-135M), "
        f"onnxruntime {info['onnxruntime']} CPU, {result['threads']} threads, {result['prompt_tokens']} prompt tokens, "
        f"median of {result['repeats']} interleaved runs; {info['date']}, {info['cpu']}. Ideal = analytic FLOP ratio "
        f"(vision {result['vision_gflops']:.1f} GFLOP + prefill).",
        "",
        "| variant | image tokens | TTFT (ms) | vision (ms) | embed + prefill (ms) | speedup | ideal | measured / ideal |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(f"| {r['variant']} | {r['image_tokens']} | {r['ttft_ms']:.0f} | {r['vision_ms']:.0f} | "
                     f"{r['prefill_ms']:.0f} | {r['speedup']:.2f}x | {r['ideal_speedup']:.2f}x | {r['ratio_to_ideal']:.0%} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/edgeattn-bench-cache"))
    args = parser.parse_args(argv)
    info = machine()
    result = run(args.repeats, args.cache, args.threads)
    write_json("pruning_speed", {"machine": info, **result})
    text = markdown(result, info)
    (RESULTS / "pruning_speed.md").write_text(text)
    print(text)


if __name__ == "__main__":
    run_benchmark(main)
