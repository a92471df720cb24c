"""`edgeattn run DIR`: onnxruntime inference from an exported folder, through the app API (`edgeattn.app`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from edgeattn.cli.common import emit_json, json_option
from edgeattn.errors import EdgeAttnError


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
    from edgeattn.app import CLI
    from edgeattn.app.requests import check_text, check_threads
    from edgeattn.manifest import read_manifest

    for prompt in prompts:
        check_text(prompt, CLI.prompt)
    check_threads(threads, CLI)
    manifest = read_manifest(folder)
    family = manifest.family
    if family not in ("decoder", "vlm") and image_tokens is not None:
        raise EdgeAttnError(f"--image-tokens sets a VLM's visual-token budget; this folder holds a {family} model")
    if family == "encoder" and image is not None:
        raise EdgeAttnError("--image needs a VLM or a vision encoder; this folder holds a text encoder")
    if family not in ("decoder", "vlm", "encoder") and prompts:
        raise EdgeAttnError(f"--prompt needs a language model or a text encoder; this folder holds a {family} model")
    if family in ("decoder", "vlm"):
        result = _generate(Path(folder), manifest, prompts, image, max_new_tokens, threads, image_tokens)
    elif family == "encoder":
        result = _embed(Path(folder), manifest, prompts, threads)
    else:
        result = _vision(Path(folder), manifest, image, threads)
    if as_json:
        emit_json(result)
    else:
        _print(result)


def _generate(folder: Path, manifest, prompts, image, max_new_tokens, threads, image_tokens=None) -> dict[str, Any]:
    """Options are checked and the image decoded before any session is made."""
    from edgeattn.app import CLI, load
    from edgeattn.app.requests import check_generate_request
    from edgeattn.runtime.images import load_image

    if len(prompts) != 1:
        raise EdgeAttnError(f"give exactly one --prompt to generate from (got {len(prompts)})")
    check_generate_request(manifest, image is not None, max_new_tokens, image_tokens, CLI)
    picture = load_image(image) if image is not None else None
    model = load(folder, threads, manifest=manifest, names=CLI)
    gen = model.generate(prompts[0], picture, max_new_tokens, image_tokens)
    return {
        "tokens": list(gen.tokens),
        "text": gen.text,
        "prompt_tokens": gen.prompt_tokens,
        "ttft_ms": round(gen.ttft_ms, 3),
        "tpot_ms": round(gen.tpot_ms, 3),
        **{k: round(v, 3) for k, v in gen.stages_ms.items()},
        **({} if gen.kept_indices is None else {"kept_indices": list(gen.kept_indices)}),
    }


def _embed(folder: Path, manifest, prompts, threads) -> dict[str, Any]:
    from edgeattn.app import CLI, load

    out = load(folder, threads, manifest=manifest, names=CLI).run_embed(list(prompts))
    embedding = out.outputs["embedding"]
    return {"embedding": embedding.tolist(), "dim": int(embedding.shape[-1]), "latency_ms": round(out.latency_ms, 3)}


def _vision(folder: Path, manifest, image, threads) -> dict[str, Any]:
    """The image is decoded before the session is made: a bad file fails fast."""
    from edgeattn.app import CLI, load
    from edgeattn.runtime.images import load_image

    if image is None:
        raise EdgeAttnError("a vision encoder needs --image FILE")
    picture = load_image(image)
    out = load(folder, threads, manifest=manifest, names=CLI).run_image_features(picture)
    feats = out.outputs["image_features"]
    result = {"shape": list(feats.shape), "mean_feature": feats.mean(axis=1)[0].tolist(),
              "latency_ms": round(out.latency_ms, 3)}
    if "kept_indices" in out.outputs:
        result["kept_indices"] = out.outputs["kept_indices"][0].tolist()
    return result


def _print(result: dict[str, Any]) -> None:
    if "text" in result:
        click.echo(result["text"])
        click.echo(
            f"[{result['prompt_tokens']} prompt tokens, {len(result['tokens'])} generated] "
            f"time to first token {result['ttft_ms']:.1f} ms, per token {result['tpot_ms']:.1f} ms"
        )
        if "kept_indices" in result:  # a pruned vision component: which patches (raster order) it kept
            click.echo(f"kept {len(result['kept_indices'])} visual tokens at patches "
                       f"{' '.join(map(str, result['kept_indices']))} (draw them with `edgeattn show`)")
    elif "embedding" in result:
        for row in result["embedding"]:
            click.echo("[" + ", ".join(f"{x:.4f}" for x in row[:8]) + f", ...] ({result['dim']} dims)")
        click.echo(f"{result['latency_ms']:.1f} ms")
    else:
        click.echo(f"image_features {result['shape']} in {result['latency_ms']:.1f} ms")
