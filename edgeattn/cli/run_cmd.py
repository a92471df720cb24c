"""`edgeattn run DIR`: onnxruntime inference from an exported folder."""

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
    from edgeattn.manifest import read_manifest

    for prompt in prompts:
        _check_text(prompt)
    if threads is not None and threads > MAX_THREADS:
        raise EdgeAttnError(f"--threads must be from 1 to {MAX_THREADS} (got {threads})")
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
        result = _embed(Path(folder), manifest, prompts)
    else:
        result = _vision(Path(folder), manifest, image)
    if as_json:
        emit_json(result)
    else:
        _print(result)


# onnxruntime makes one thread per count: more than this many is a typo, not a machine.
MAX_THREADS = 1024


def _check_text(prompt: str) -> None:
    """A prompt click decoded from bytes that were not UTF-8 carries lone surrogates (U+DC80..U+DCFF on Linux)."""
    for index, char in enumerate(prompt):
        if "\ud800" <= char <= "\udfff":
            raise EdgeAttnError(f"--prompt is not valid UTF-8 text (an undecodable byte at character {index}); "
                                "pass the prompt as UTF-8")


def _tokenizer(folder: Path, manifest: Any) -> Any:
    if not manifest.tokenizer:
        raise EdgeAttnError(f"{folder} has no tokenizer folder; re-export a model that ships one")
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    path = folder / manifest.tokenizer
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except MemoryError:
        raise EdgeAttnError(f"not enough memory to load the tokenizer in {path}") from None
    except Exception as err:  # noqa: BLE001 - tokenizer files that transformers or tokenizers reject
        raise EdgeAttnError(f"cannot load the tokenizer in {path} ({type(err).__name__}); re-export the folder") from None
    finally:
        hf_logging.set_verbosity(verbosity)


def _generate(folder: Path, manifest, prompts, image, max_new_tokens, threads, image_tokens=None) -> dict[str, Any]:
    from edgeattn.runtime.generate import DecoderRunner, check_generation_length, check_max_new_tokens, position_limit
    from edgeattn.runtime.images import load_image, pixel_values

    if len(prompts) != 1:
        raise EdgeAttnError(f"give exactly one --prompt to generate from (got {len(prompts)})")
    check_max_new_tokens(max_new_tokens)
    if image is not None and manifest.family != "vlm":
        raise EdgeAttnError("--image needs a VLM export; this folder holds a text-only decoder")
    if image_tokens is not None:
        if image is None:
            raise EdgeAttnError("--image-tokens needs --image")
        _check_image_tokens(manifest, image_tokens)
    tokenizer = _tokenizer(folder, manifest)
    ids = list(tokenizer(prompts[0], verbose=False)["input_ids"])
    pixels = None
    if image is not None:
        pixels = pixel_values(load_image(image), manifest.vision.preprocess())
        count = image_tokens if image_tokens is not None else manifest.image_token_count
        ids = [manifest.image_token_id] * count + ids
    check_generation_length(len(ids), max_new_tokens, position_limit(manifest, "decoder", tokenizer))
    runner = DecoderRunner(folder, manifest, threads=threads)
    gen = runner.generate(ids, max_new_tokens, pixels, num_tokens=image_tokens)
    return {
        "tokens": gen.tokens,
        "text": tokenizer.decode(gen.tokens, skip_special_tokens=True),
        "prompt_tokens": len(gen.prompt_tokens),
        "ttft_ms": round(gen.ttft_ms, 3),
        "tpot_ms": round(gen.tpot_ms, 3),
        **{k: round(v, 3) for k, v in gen.stages_ms.items()},
    }


def _check_image_tokens(manifest: Any, image_tokens: int) -> None:
    """--image-tokens: a run-time budget, from 1 to the tokens the image gives before pruning."""
    pruning = manifest.pruning or {}
    if not pruning.get("dynamic_k"):
        raise EdgeAttnError("this export has a fixed image-token budget; --image-tokens needs one exported with "
                            "--prune METHOD:K,dynamic=1")
    limit = pruning.get("tokens_before")
    if image_tokens < 1 or (isinstance(limit, int) and image_tokens > limit):
        raise EdgeAttnError(f"the image-token budget must be from 1 to {limit} (got {image_tokens})")


def _embed(folder: Path, manifest, prompts) -> dict[str, Any]:
    from edgeattn.runtime.encode import encode_texts

    out = encode_texts(folder, manifest, _tokenizer(folder, manifest), list(prompts))
    return {"embedding": out["embedding"].tolist(), "dim": int(out["embedding"].shape[-1]), "latency_ms": round(out["latency_ms"], 3)}


def _vision(folder: Path, manifest, image) -> dict[str, Any]:
    from edgeattn.runtime.encode import encode_image
    from edgeattn.runtime.images import load_image, pixel_values

    if image is None:
        raise EdgeAttnError("a vision encoder needs --image FILE")
    out = encode_image(folder, manifest, pixel_values(load_image(image), manifest.vision.preprocess()))
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
