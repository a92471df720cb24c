"""``export_model``: MODEL -> a folder of validated ONNX components and a manifest."""

from __future__ import annotations

import contextlib
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ContextManager

import torch

from edgeattn.version import __version__
from edgeattn.errors import ExportError
from edgeattn.exporter import manifest as mf
from edgeattn.manifest import DTYPES, FORMAT, Manifest, read_manifest, write_manifest
from edgeattn.exporter.capture import DEFAULT_OPSET, capture
from edgeattn.exporter.components import Component, components_for, float_dtype
from edgeattn.exporter.files import save_onnx, staged_folder
from edgeattn.exporter.rewrite_step import rewrite_components, sparsify_decoder
from edgeattn.exporter.sources import LoadedModel, load_model
from edgeattn.exporter.validate import validate_component

Step = Callable[[str], ContextManager[None]]


@dataclass(frozen=True)
class ExportOptions:
    opset: int = DEFAULT_OPSET
    validate: bool = True
    force: bool = False
    prune: Any = None  # a graphs.pruning.PruneSpec: prune the vision component (`export --prune`)
    rewrite: bool = False  # rewrite every attention site into edgeattn ops (`export --rewrite`)
    recipe: str | None = None  # a recipe file for that rewrite (implies rewrite)
    target: str = "ort"  # what the rewritten graphs are lowered for: "ort" or "trt"
    sparse: tuple[str, ...] = ()  # `--sparse` flags for the decoder (rewritten and lowered for onnxruntime)
    dtype: str = "fp32"  # a key of `edgeattn.manifest.DTYPES`: weights, float inputs/outputs and KV cache


def _no_progress(_: str) -> ContextManager[None]:
    return contextlib.nullcontext()


def export_model(
    model: str | LoadedModel, out: str | Path, options: ExportOptions = ExportOptions(), step: Step = _no_progress
) -> Manifest:
    """Export every component of ``model`` into ``out`` and return the manifest written there.

    With ``options.dtype`` other than fp32 the torch model is cast to that dtype (a `LoadedModel` passed in is
    cast in place) before capture, so weights, float inputs and outputs and the KV cache are in that dtype and
    whatever the model computes in float32 (Llama's RMSNorm) stays float32."""
    out = Path(out)
    check_options(options)
    inputs = [Path(model)] if isinstance(model, str) and Path(model).exists() else []
    with staged_folder(out, options.force, inputs) as stage:  # refuse an existing folder before loading anything
        with step(f"load {model if isinstance(model, str) else model.name}"):
            loaded = load_model(model) if isinstance(model, str) else model
        cast_model(loaded, options.dtype)
        manifest = base_manifest(loaded, options)
        components = components_for(loaded)
        if options.prune is not None and not any(c.name == "vision" for c in components):
            raise ExportError(f"--prune prunes visual tokens, but {loaded.name} ({loaded.family}) has no vision "
                              "component; give a VLM or a vision encoder")
        if options.sparse and not any(c.name == "decoder" for c in components):
            raise ExportError(f"--sparse makes a decoder's attention sparse, but {loaded.name} ({loaded.family}) has "
                              "no decoder component; give a language model or a VLM")
        for component in components:
            manifest["components"][component.name] = export_component(component, stage, options, step, manifest)
        add_family_info(manifest, loaded, {c.name: c for c in components})
        if options.prune is not None:
            prune_exported(manifest, {c.name: c for c in components}, stage, options, step)
        if options.rewrite or options.recipe:
            manifest["rewrite"] = rewrite_components(
                manifest, {c.name: c for c in components}, stage, options.recipe, options.target,
                options.validate, step, skip=("decoder",) if options.sparse else (),
            )
        if loaded.tokenizer is not None:
            loaded.tokenizer.save_pretrained(stage / "tokenizer")
            manifest["tokenizer"] = "tokenizer"
        written = write_manifest(stage, manifest)
        if options.sparse:
            written = sparsify_exported(stage, options, step)
    return written


def check_options(options: ExportOptions) -> None:
    """Refuse, before anything is loaded, a dtype edgeattn does not export or a combination it cannot honour."""
    if options.dtype not in DTYPES:
        raise ExportError(f"unknown dtype {options.dtype!r}; choose one of {', '.join(DTYPES)}")


def cast_model(loaded: LoadedModel, dtype: str) -> None:
    """Cast the torch model to ``dtype`` as transformers' ``from_pretrained(dtype=...)`` loads it: parameters and
    saved buffers, except the modules the model keeps in float32 (``_keep_in_fp32_modules`` for fp16,
    ``_keep_in_fp32_modules_strict`` for both); buffers it computes itself in float32 and never saves (Llama's
    rotary ``inv_freq``) stay float32, as they do there (in fp16 its frequencies would be off by up to 5e-4
    relative, radians off at long positions)."""
    if dtype == "fp32":
        return
    target = getattr(torch, DTYPES[dtype])
    model = loaded.model
    keep = set(getattr(model, "_keep_in_fp32_modules_strict", None) or ())
    if dtype == "fp16":
        keep |= set(getattr(model, "_keep_in_fp32_modules", None) or ())
    kept = re.compile(r"(^|\.)(" + "|".join(re.escape(k) for k in sorted(keep)) + r")($|\.)") if keep else None
    for prefix, module in model.named_modules():
        if kept is not None and kept.search(prefix):
            continue
        for name, param in module.named_parameters(recurse=False):
            if param.is_floating_point():
                param.data = param.data.to(target)  # the same Parameter: tied weights stay tied
        for name, buffer in module.named_buffers(recurse=False):
            if buffer.is_floating_point() and name not in module._non_persistent_buffers_set:
                module._buffers[name] = buffer.to(target)


def sparsify_exported(stage: Path, options: ExportOptions, step: Step) -> Manifest:
    """Make the decoder's attention sparse (`--sparse`) in the staged folder; returns the new manifest."""
    with step(f"sparsify decoder.onnx ({' '.join(options.sparse)})"):
        sparsify_decoder(stage, options.sparse, options.recipe, options.target)
    return read_manifest(stage)


def export_component(
    component: Component, stage: Path, options: ExportOptions, step: Step, manifest: dict[str, Any]
) -> dict[str, Any]:
    start = time.perf_counter()
    with step(f"export {component.file} (opset {options.opset})"):
        model = capture(component, options.opset)
        save_onnx(model, stage / component.file)
    entry = mf.describe_component(model, component.file)
    entry["export_seconds"] = round(time.perf_counter() - start, 3)
    entry["info"] = component.info
    if options.validate:
        start = time.perf_counter()
        with step(f"validate {component.file} against PyTorch ({len(component.cases)} shapes)"):
            manifest["validation"][component.name] = validate_component(component, stage / component.file)
        entry["validate_seconds"] = round(time.perf_counter() - start, 3)
    return entry


def prune_exported(manifest: dict[str, Any], components: dict[str, Component], stage: Path, options: ExportOptions,
                   step: Step) -> None:
    from edgeattn.exporter.pruning import prune_vision, update_manifest
    from edgeattn.graphs.pruning import parse_prune

    spec = parse_prune(options.prune) if isinstance(options.prune, str) else options.prune
    with step(f"prune vision.onnx ({spec.text()})"):
        record, checks = prune_vision(components["vision"], stage, spec, options.validate)
    update_manifest(manifest, record, stage, "vision", components["vision"].file)
    if manifest.get("validation") is not None:
        manifest["validation"]["vision_pruned"] = checks["cases"]


def base_manifest(loaded: LoadedModel, options: ExportOptions) -> dict[str, Any]:
    from edgeattn.exporter.capture import ir_version_for

    return {
        "format": FORMAT,
        "edgeattn_version": __version__,
        "model": loaded.name,
        "family": loaded.family,
        "architecture": getattr(loaded.config, "model_type", None),
        "dtype": options.dtype,
        "opset": options.opset,
        "ir_version": ir_version_for(options.opset),
        "components": {},
        "tokenizer": None,
        "validation": {} if options.validate else None,
        "note": loaded.note or None,
    }


def add_family_info(manifest: dict[str, Any], loaded: LoadedModel, components: dict[str, Component]) -> None:
    """What the runtime needs besides the graphs: decoder geometry, special tokens, image layout."""
    if "decoder" in components:
        text_cfg = getattr(loaded.config, "text_config", loaded.config)
        manifest["decoder"] = {**components["decoder"].info, **_special_tokens(loaded, text_cfg)}
    if "encoder" in components:
        manifest["encoder"] = components["encoder"].info
    if "vision" in components:
        pre = loaded.image_preprocess or {"mean": [0.5] * 3, "std": [0.5] * 3}
        vision = components["vision"]
        manifest["vision"] = {**pre, **vision.info, "num_image_tokens": _image_tokens(vision)}
    if loaded.family == "vlm":
        manifest["image_token_id"] = int(loaded.config.image_token_id)
        manifest["image_token_count"] = manifest["vision"]["num_image_tokens"]


def _special_tokens(loaded: LoadedModel, cfg: Any) -> dict[str, Any]:
    eos = getattr(cfg, "eos_token_id", None)
    gen_cfg = getattr(loaded.model, "generation_config", None)
    if gen_cfg is not None and gen_cfg.eos_token_id is not None:
        eos = gen_cfg.eos_token_id
    if eos is None and loaded.tokenizer is not None:
        eos = loaded.tokenizer.eos_token_id
    eos_ids = [] if eos is None else ([int(eos)] if isinstance(eos, int) else [int(e) for e in eos])
    bos = getattr(cfg, "bos_token_id", None)
    return {"eos_token_ids": eos_ids, "bos_token_id": None if bos is None else int(bos)}


def _image_tokens(vision: Component) -> int:
    """Tokens the vision component emits per image, measured on one blank image."""
    size = int(vision.info["image_size"])
    with torch.no_grad():
        return int(vision.module(torch.zeros(1, 3, size, size, dtype=float_dtype(vision.module))).shape[1])
