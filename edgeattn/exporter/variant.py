"""`edgeattn rewrite FOLDER OUT`: a variant of an exported folder, without exporting again.

The passes `export` runs after capture (`--prune`, `--sparse`, `--rewrite/--recipe`) run on the
components of a folder `export` wrote, and the result is a folder every command accepts (`run`,
`profile`, `show`, `calibrate`, `compile`, `rewrite` again):

- `--prune METHOD:K`: the vision component gets the pruning pass exactly as `export --prune` gives it,
  and is checked against the input folder's dense vision graph on random images (the kept tokens must be
  the dense tokens at `kept_indices`);
- `--sparse FLAG`: the decoder is made sparse as `export --sparse` makes it;
- neither: the attention sites of every component (or `--component`) become edgeattn ops.

Components the variant does not change are shared with the input folder as hard links where the
filesystem allows (every edgeattn write replaces a file by renaming a new one over it, so a shared file
is never changed through the variant), copied otherwise. The manifest records what was done, under
`variant` (the input folder and the flags) and the records the passes write (`pruning`, `sparse`,
`rewrite`). The output is staged beside OUT and renamed into place: a failure leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ContextManager

import numpy as np

from edgeattn.errors import EdgeAttnError
from edgeattn.manifest import Manifest, read_manifest, write_manifest

Step = Callable[[str], ContextManager[None]]
VALIDATION_BATCHES = (1, 2)  # images per pruning check, as `export --prune` checks two batch sizes


@dataclass(frozen=True)
class VariantOptions:
    """What `rewrite` does to a folder: `prune` (a PruneSpec, with `prune_flag` its text), `sparse` flags,
    or a plain rewrite of `components` (all with attention sites when empty) with `recipe`."""

    prune: Any = None
    prune_flag: str | None = None
    sparse: tuple[str, ...] = ()
    recipe: Path | None = None
    target: str = "ort"
    components: tuple[str, ...] = ()
    validate: bool = True


def rewrite_folder(source: Path, out: Path, options: VariantOptions, force: bool = False,
                   step: Step = lambda _: contextlib.nullcontext(),
                   finish: Callable[[Path, dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Write the variant of the exported folder `source` that `options` asks for to `out`; returns the
    manifest's `variant` record with what each pass reported. `finish(stage, manifest)` adds to the
    staged folder and its manifest document before the manifest is written (`edgeattn calibrate`)."""
    from edgeattn.exporter.files import staged_folder

    source, out = Path(source), Path(out)
    manifest = read_manifest(source)
    _check_request(source, manifest, options)
    record: dict[str, Any] = {"from": str(source), "prune": options.prune_flag, "sparse": list(options.sparse),
                              "recipe": None if options.recipe is None else str(options.recipe),
                              "target": options.target}
    with staged_folder(out, force, [source]) as stage:
        with step(f"share the unchanged files of {source}"):
            record["shared"] = share_folder(source, stage)
        document = manifest.to_json()
        if options.prune is not None:
            record["pruning"] = _prune(source, stage, manifest, document, options, step)
        elif options.sparse:
            with step(f"make the attention of {manifest.file_of('decoder')} sparse ({', '.join(options.sparse)})"):
                record["sparse_sites"] = _sparse(stage, document, options)
        else:
            record["rewrite"] = _rewrite(stage, manifest, document, options, step)
        document["variant"] = record
        if finish is not None:
            finish(stage, document)
        write_manifest(stage, document)
    return record


def _check_request(source: Path, manifest: Manifest, options: VariantOptions) -> None:
    """Refuse, before anything is written, what the folder cannot take."""
    comps = manifest.components
    if options.prune is not None:
        if "vision" not in comps:
            raise EdgeAttnError(f"--prune needs a folder with a vision component; {source} holds a "
                                f"{manifest.family} export ({', '.join(comps)})")
        if manifest.pruning:
            done = f"{manifest.pruning.get('method')}:{manifest.pruning.get('k')}"
            raise EdgeAttnError(f"{source} is already pruned ({done}); prune the folder it came from, "
                                "the unpruned export")
    if options.sparse:
        if "decoder" not in comps:
            raise EdgeAttnError(f"--sparse needs a folder with a decoder; {source} holds a {manifest.family} export")
        if manifest.sparse:
            raise EdgeAttnError(f"the decoder of {source} is already sparse ({', '.join(manifest.sparse.get('flags', []))}); "
                                "make the dense export sparse instead")
    for name in options.components:
        if name not in comps:
            raise EdgeAttnError(f"--component {name!r} is not in {source} (it has {', '.join(comps)})")


def share_folder(source: Path, stage: Path) -> str:
    """Give `stage` every file and folder of `source` except hidden ones: hard links where the filesystem
    allows, copies otherwise. Symlinks are not followed (a manifest never names one). Returns "hard links"
    or "copies", what was used."""
    how = "hard links"

    def link(src: str, dst: str) -> None:
        nonlocal how
        try:
            os.link(src, dst, follow_symlinks=False)
        except OSError:  # another filesystem, or one without hard links
            how = "copies"
            shutil.copy2(src, dst)

    for entry in sorted(source.iterdir()):
        if entry.name.startswith(".") or entry.is_symlink():
            continue
        if entry.is_dir():
            shutil.copytree(entry, stage / entry.name, symlinks=True, copy_function=link)
        elif entry.is_file():
            link(str(entry), str(stage / entry.name))
    return how


def _prune(source: Path, stage: Path, manifest: Manifest, document: dict[str, Any], options: VariantOptions,
           step: Step) -> dict[str, Any]:
    from edgeattn.exporter.pruning import update_manifest
    from edgeattn.graphs import load, save
    from edgeattn.graphs.pruning import prune

    file = manifest.file_of("vision")
    with step(f"prune {file} ({options.prune_flag})"):
        model, report = prune(load(stage / file), options.prune, where=f"{source.name}/{file}")
        save(model, stage / file)
    checks = []
    if options.validate:
        with step(f"check the pruned {file} against the dense one ({len(VALIDATION_BATCHES)} batches)"):
            checks = check_against_dense(source / file, stage / file, manifest, report)
    update_manifest(document, report.manifest_entry(), stage, "vision", file)
    return {"k": report.k, "tokens": report.tokens, "checks": checks}


def check_against_dense(dense_path: Path, pruned_path: Path, manifest: Manifest, report: Any) -> list[dict[str, Any]]:
    """The pruned vision graph's tokens are the dense graph's at `kept_indices`, on random images."""
    import torch

    from edgeattn.exporter.pruning import check_pruned
    from edgeattn.exporter.validate import validation_session

    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[manifest.dtype]
    assert manifest.vision is not None
    size = manifest.vision.image_size
    rng = np.random.default_rng(2)
    wide = np.float16 if manifest.dtype == "fp16" else np.float32  # bf16 files run as their float32 widening
    with validation_session(dense_path, dtype) as (dense, _), validation_session(pruned_path, dtype) as (pruned, _):
        return [check_pruned(dense, pruned, rng.standard_normal((batch, 3, size, size)).astype(wide), report)
                for batch in VALIDATION_BATCHES]


def _sparse(stage: Path, document: dict[str, Any], options: VariantOptions) -> int:
    from edgeattn.exporter.rewrite_step import sparsify_decoder

    report = sparsify_decoder(stage, options.sparse, options.recipe, options.target)
    document["sparse"] = read_manifest(stage).sparse
    return len(report.lowered)


def _rewrite(stage: Path, manifest: Manifest, document: dict[str, Any], options: VariantOptions,
             step: Step) -> dict[str, Any]:
    from edgeattn.exporter.rewrite_step import rewrite_components

    skip = tuple(name for name in manifest.components if options.components and name not in options.components)
    document.setdefault("validation", {})
    record = rewrite_components(document, {}, stage, options.recipe, options.target, False, step, skip=skip)
    if not any(item["rewritten"] for item in record["components"].values()):
        raise EdgeAttnError(f"no attention site was rewritten in {', '.join(record['components']) or 'any component'}; "
                            "run `edgeattn inspect` on the component files to see why")
    document["rewrite"] = record
    return record
