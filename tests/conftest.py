"""Shared fixtures: exports made once per test session and reused by every test that reads them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    """``exported("demo:tiny-llama")`` -> folder of a validated export, made on first use."""
    from edgeattn.exporter.api import ExportOptions, export_model

    cache: dict[tuple[str, int], Path] = {}

    def get(model: str, opset: int = 23) -> Path:
        key = (model, opset)
        if key not in cache:
            out = tmp_path_factory.mktemp("export") / model.replace(":", "_")
            export_model(model, out, ExportOptions(opset=opset))
            cache[key] = out
        return cache[key]

    return get


# Triton fixes at its first import whether kernels are compiled or interpreted. The kernel tests run
# on CPU tensors in the interpreter, so it is chosen here, before any test module imports triton;
# ahead-of-time compilation (tests/test_triton_aot.py) runs in a subprocess without it.
os.environ["TRITON_INTERPRET"] = "1"
