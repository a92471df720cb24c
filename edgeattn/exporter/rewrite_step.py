"""`export --rewrite / --recipe / --sparse`: run the graph pipeline on the components just exported."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, ContextManager

from edgeattn.exporter.components import Component
from edgeattn.exporter.validate import validate_component

Step = Callable[[str], ContextManager[None]]
# Rewritten components hold exactly these ops when the rewrite changed no arithmetic, so they are
# validated against PyTorch again; sparse ops approximate attention by design and are measured instead.
EXACT_OPS = frozenset({"Attention"})


def rewrite_components(
    manifest: dict[str, Any],
    components: dict[str, Component],
    stage: Path,
    recipe: Any,
    target: str,
    validate: bool,
    step: Step,
    skip: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Rewrite each exported component in place; returns the manifest's ``rewrite`` record."""
    from edgeattn.exporter.manifest import describe_component
    from edgeattn.graphs import load, rewrite_file

    record: dict[str, Any] = {"target": target, "components": {}}
    for name, entry in manifest["components"].items():
        if name in skip:
            continue
        path = stage / entry["file"]
        with step(f"rewrite {entry['file']} (target {target})"):
            report = rewrite_file(path, path, recipe, target, component=name)
        ops = sorted({item.op for item in report.rewritten})
        record["components"][name] = {
            "rewritten": len(report.rewritten),
            "ops": ops,
            "refused": [item.to_json() for item in report.refused],
            "seconds": round(report.seconds, 3),
        }
        if not report.rewritten:
            continue
        entry.update(describe_component(load(path), entry["file"]))  # a recipe may add graph inputs
        pruned = name == "vision" and manifest.get("pruning")  # differs from the unpruned torch module
        exact = set(ops) <= EXACT_OPS and not pruned
        if validate and exact and name in components:
            with step(f"validate rewritten {entry['file']} against PyTorch"):
                manifest["validation"][f"{name}_rewritten"] = validate_component(components[name], path)
        else:
            record["components"][name]["validated"] = False
    return record


def sparsify_decoder(folder: Path, flags: tuple[str, ...] | list[str], recipe: Any = None, target: str = "ort") -> Any:
    """`export --sparse`: make the attention of the folder's decoder sparse where it is (the decoder is
    rewritten, lowered for onnxruntime or written in the TensorRT form, then saved atomically) and record the
    flags, the recipe and what each site runs as in the manifest's ``sparse`` record. Returns the
    `SparseReport`."""
    from edgeattn.manifest import read_manifest, write_manifest
    from edgeattn.graphs import save
    from edgeattn.graphs.sparse.api import sparsify

    manifest = read_manifest(folder).to_json()
    decoder = manifest["components"]["decoder"]["file"]
    lowering = "fast" if target == "ort" else "function"
    model, report = sparsify(folder / decoder, flags, recipe, component="decoder", target=target,  # type: ignore[arg-type]
                             lowering=lowering)
    save(model, folder / decoder)
    manifest["sparse"] = {"flags": list(flags), "recipe": None if recipe is None else str(recipe), "lowering": lowering,
                          "target": target,
                          "sites": [item.to_json() for item in report.lowered]}
    write_manifest(folder, manifest)
    return report
