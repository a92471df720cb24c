"""`export --prune`: the exported (and validated) vision component gets the pruning pass.

The dense vision graph is validated against PyTorch first, as every component is. The pass then
replaces its `image_features` with the k kept tokens and adds `kept_indices`; the pruned file is
checked against the dense one on fresh images: its tokens must be exactly the dense tokens at the
kept positions, and the positions unique and ascending.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgeattn.errors import ValidationError
from edgeattn.exporter import manifest as mf
from edgeattn.exporter.components import Component
from edgeattn.graphs import load, save
from edgeattn.graphs.pruning import PruneReport, PruneSpec, prune


def prune_vision(component: Component, stage: Path, spec: PruneSpec, validate: bool = True,
                 seed: int = 2) -> tuple[dict[str, Any], dict[str, Any]]:
    """Prune `stage/vision.onnx` in place; returns (the manifest's pruning record, the check record).

    Both graphs run in the export's dtype (a bfloat16 one as its float32 widening, see `validate`)."""
    from edgeattn.exporter.components import float_dtype
    from edgeattn.exporter.validate import to_numpy, validation_session

    path = stage / component.file
    dtype = float_dtype(component.module)
    model, report = prune(load(path), spec, where=component.file)
    if not validate:
        save(model, path)
        return report.manifest_entry(), {"cases": [], "report": report.to_json()}
    with validation_session(path, dtype) as (dense, _):
        save(model, path)
        with validation_session(path, dtype) as (pruned, _):
            gen = torch.Generator().manual_seed(seed)
            checks = [check_pruned(dense, pruned, to_numpy(component.make_inputs(case, gen)["pixel_values"]), report)
                      for case in component.cases]
    return report.manifest_entry(), {"cases": checks, "report": report.to_json()}


def check_pruned(dense: Any, pruned: Any, pixels: np.ndarray, report: PruneReport) -> dict[str, Any]:
    """The pruned tokens are the dense ones at kept_indices (exactly as float32 noise allows)."""
    full = dense.run(["image_features"], {"pixel_values": pixels})[0]
    feeds = pruning_feeds(pruned, pixels, full.shape[-1])
    tokens, kept = pruned.run(["image_features", "kept_indices"], feeds)
    prefix = report.prefix if report.spec.params["keep_cls"] else 0
    want = np.take_along_axis(full[:, report.prefix:], kept[..., None], axis=1)
    diff = float(np.abs(tokens[:, prefix:] - want).max()) if want.size else 0.0
    scale = float(np.abs(want).max()) if want.size else 1.0
    ascending = bool((np.diff(kept, axis=1) > 0).all())
    if not ascending or diff > 1e-5 * max(scale, 1.0) or kept.shape[1] != report.k:
        raise ValidationError(
            f"the pruned vision component disagrees with the dense one: {kept.shape[1]} tokens kept (asked {report.k}), "
            f"ascending {ascending}, max difference to the dense tokens {diff:.3g}; export with --no-validate to keep it"
        )
    return {"batch": int(pixels.shape[0]), "kept": int(kept.shape[1]), "max_abs_vs_dense": diff}


def pruning_feeds(session: Any, pixels: np.ndarray, width: int, text_embeds: np.ndarray | None = None,
                  num_tokens: int | None = None) -> dict[str, np.ndarray]:
    """Inputs for a pruned vision session: the pixels and whatever the method added."""
    names = {i.name for i in session.get_inputs()}
    feeds: dict[str, np.ndarray] = {"pixel_values": pixels}
    if "text_embeds" in names:
        if text_embeds is None:  # validation: a few random prompt embeddings, in the pixels' float type
            text_embeds = np.random.default_rng(0).standard_normal((pixels.shape[0], 5, width)).astype(pixels.dtype)
        feeds["text_embeds"] = text_embeds
    if "num_tokens" in names and num_tokens is not None:
        feeds["num_tokens"] = np.array(num_tokens, np.int64)
    if "patch_valid" in names:
        count = next(i for i in session.get_inputs() if i.name == "patch_valid").shape[1]
        feeds["patch_valid"] = np.ones((pixels.shape[0], count), bool)
    return feeds


def update_manifest(manifest: dict[str, Any], pruning: dict[str, Any], stage: Path, name: str, file: str) -> None:
    """Record the pruning and what the pruned component (`name`, written to `stage/file`) now takes and gives."""
    entry = manifest["components"][name]
    entry.update(mf.describe_component(load(stage / file), file))
    manifest["pruning"] = pruning
    vision = manifest.get("vision")
    if vision is not None:
        vision["num_image_tokens_unpruned"] = vision["num_image_tokens"]
        vision["num_image_tokens"] = pruning["k"] + (1 if pruning["params"].get("keep_cls") and
                                                      vision["num_image_tokens"] > pruning["tokens_before"] else 0)
    if "image_token_count" in manifest:
        manifest["image_token_count"] = manifest["vision"]["num_image_tokens"]
