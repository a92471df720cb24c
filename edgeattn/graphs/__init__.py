"""ONNX in memory (onnx-ir): load/save, attention-site rules, the rewrite pipeline, lowerings, reports.

    from edgeattn.graphs import find_sites, load, rewrite, save

    model = load("decoder.onnx")
    print(find_sites(model).to_json())
    model, report = rewrite(model, recipe=None, target="ort", component="decoder")
    save(model, "out/decoder.onnx")
"""

from __future__ import annotations

from edgeattn.graphs.detect import find_sites
from edgeattn.graphs.io import as_model, load, save
from edgeattn.graphs.attach import attach_bodies
from edgeattn.graphs.passes import PipelineOptions, build_pipeline, rewrite, rewrite_file, run_pipeline
from edgeattn.graphs.recipe import Recipe
from edgeattn.graphs.report import RewriteReport, Site, SiteReport, Unmatched

__all__ = [
    "PipelineOptions",
    "Recipe",
    "RewriteReport",
    "Site",
    "SiteReport",
    "Unmatched",
    "as_model",
    "build_pipeline",
    "find_sites",
    "load",
    "attach_bodies",
    "rewrite",
    "rewrite_file",
    "run_pipeline",
    "save",
]
