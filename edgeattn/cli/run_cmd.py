"""`edgeattn run DIR`: onnxruntime inference from an exported folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from edgeattn.cli.common import emit_json, json_option


@click.command(short_help="Run an exported folder with onnxruntime.")
@click.argument("folder", type=click.Path())
@click.option("--prompt", "prompts", multiple=True, help="Prompt text (repeat to embed several texts).")
@click.option("--image", type=click.Path(), help="Image file for a VLM or a vision encoder.")
@click.option("--max-new-tokens", type=int, default=16, show_default=True)
@click.option("--threads", type=click.IntRange(min=1), help="onnxruntime intra-op threads.")
@click.option("--image-tokens", type=int, help="Visual tokens to keep, for a pruned export with a run-time budget (dynamic=1).")
@json_option
def run(folder: str, prompts: tuple[str, ...], image: str | None, max_new_tokens: int, threads: int | None,
        image_tokens: int | None, as_json: bool) -> None:
    """Generate greedily from a decoder LM or VLM folder, or embed with an encoder folder.

    Prints the text, the time to first token (vision + embed + prefill) and the mean time per
    further token.
    """
    from edgeattn.exporter.manifest import read_manifest

    manifest = read_manifest(folder)
    family = manifest["family"]
    if family in ("decoder", "vlm"):
        result = _generate(Path(folder), manifest, prompts, image, max_new_tokens, threads, image_tokens)
    elif family == "encoder":
        result = _embed(Path(folder), manifest, prompts)
    else:
        result = _vision(Path(folder), manifest, image)
    if as_json:
        emit_json(result)
    else:
        _print(result)


def _tokenizer(folder: Path, manifest: dict[str, Any]) -> Any:
    from edgeattn.errors import EdgeAttnError

    if not manifest.get("tokenizer"):
        raise EdgeAttnError(f"{folder} has no tokenizer folder; re-export a model that ships one")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder / manifest["tokenizer"])


def _generate(folder: Path, manifest, prompts, image, max_new_tokens, threads, image_tokens=None) -> dict[str, Any]:
    from edgeattn.errors import EdgeAttnError
    from edgeattn.runtime.generate import DecoderRunner
    from edgeattn.runtime.images import load_image, pixel_values

    if len(prompts) != 1:
        raise EdgeAttnError(f"give exactly one --prompt to generate from (got {len(prompts)})")
    tokenizer = _tokenizer(folder, manifest)
    runner = DecoderRunner(folder, manifest, threads=threads)
    ids = list(tokenizer(prompts[0])["input_ids"])
    pixels = None
    if image is not None:
        if manifest["family"] != "vlm":
            raise EdgeAttnError("--image needs a VLM export; this folder holds a text-only decoder")
        pixels = pixel_values(load_image(image), manifest["vision"])
        count = image_tokens if image_tokens is not None else manifest["image_token_count"]
        ids = [manifest["image_token_id"]] * count + ids
    elif image_tokens is not None:
        raise EdgeAttnError("--image-tokens needs --image")
    gen = runner.generate(ids, max_new_tokens, pixels, num_tokens=image_tokens)
    return {
        "tokens": gen.tokens,
        "text": tokenizer.decode(gen.tokens, skip_special_tokens=True),
        "prompt_tokens": len(gen.prompt_tokens),
        "ttft_ms": round(gen.ttft_ms, 3),
        "tpot_ms": round(gen.tpot_ms, 3),
        **{k: round(v, 3) for k, v in gen.stages_ms.items()},
    }


def _embed(folder: Path, manifest, prompts) -> dict[str, Any]:
    from edgeattn.runtime.encode import encode_texts

    out = encode_texts(folder, manifest, _tokenizer(folder, manifest), list(prompts))
    return {"embedding": out["embedding"].tolist(), "dim": int(out["embedding"].shape[-1]), "latency_ms": round(out["latency_ms"], 3)}


def _vision(folder: Path, manifest, image) -> dict[str, Any]:
    from edgeattn.errors import EdgeAttnError
    from edgeattn.runtime.encode import encode_image
    from edgeattn.runtime.images import load_image, pixel_values

    if image is None:
        raise EdgeAttnError("a vision encoder needs --image FILE")
    out = encode_image(folder, manifest, pixel_values(load_image(image), manifest["vision"]))
    feats = out["outputs"]["image_features"]
    result = {"shape": list(feats.shape), "mean_feature": feats.mean(axis=1)[0].tolist(), "latency_ms": round(out["latency_ms"], 3)}
    if "kept_indices" in out["outputs"]:
        result["kept_indices"] = out["outputs"]["kept_indices"][0].tolist()
    return result


def _print(result: dict[str, Any]) -> None:
    if "text" in result:
        click.echo(result["text"])
        click.echo(
            f"[{result['prompt_tokens']} prompt tokens, {len(result['tokens'])} generated] "
            f"time to first token {result['ttft_ms']:.1f} ms, per token {result['tpot_ms']:.1f} ms"
        )
    elif "embedding" in result:
        for row in result["embedding"]:
            click.echo("[" + ", ".join(f"{x:.4f}" for x in row[:8]) + f", ...] ({result['dim']} dims)")
        click.echo(f"{result['latency_ms']:.1f} ms")
    else:
        click.echo(f"image_features {result['shape']} in {result['latency_ms']:.1f} ms")
