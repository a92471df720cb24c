"""Parity of exported components against PyTorch, on fresh inputs at shapes other than the export example."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from edgeattn.errors import ValidationError
from edgeattn.exporter.components import Case, Component


@dataclass(frozen=True)
class Tolerance:
    """An output passes when ``max|ort - torch| <= atol + rtol * max|torch|``.

    Relative to the output's largest magnitude, not elementwise: attention outputs and logits have
    near-zero entries whose elementwise relative error means nothing.
    """

    atol: float
    rtol: float


# One table, keyed by the compared dtype. float32: onnxruntime and PyTorch sum in different orders,
# each matmul of width w adding ~sqrt(w)·eps (eps = 1.2e-7) of relative noise, compounded over the
# layers. Measured (2026-11, realistic inputs): SmolLM2-135M, 30 layers, worst output 4.3e-6; the
# tiny demos, below 1e-6. 2e-5 leaves ~5x headroom while a real defect (a wrong mask, a dropped
# bias, a swapped head) is orders of magnitude larger. Half precision has 10-bit (fp16) or 7-bit
# (bf16) mantissas, ~1e-3 and ~8e-3 per rounding. Integer outputs must match exactly.
TOLERANCES: dict[str, Tolerance] = {
    "float32": Tolerance(atol=1e-6, rtol=2e-5),
    "float16": Tolerance(atol=1e-4, rtol=2e-3),
    "bfloat16": Tolerance(atol=1e-3, rtol=1.6e-2),
    "int64": Tolerance(atol=0.0, rtol=0.0),
}


def tolerance_for(dtype: str) -> Tolerance:
    return TOLERANCES.get(dtype, TOLERANCES["float32"])


@dataclass(frozen=True)
class OutputError:
    output: str
    dtype: str
    max_abs: float
    max_rel: float
    ok: bool


def compare(name: str, got: np.ndarray, want: np.ndarray) -> OutputError:
    dtype = str(want.dtype)
    tol = tolerance_for(dtype)
    if got.shape != want.shape:
        return OutputError(name, dtype, float("inf"), float("inf"), False)
    diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
    max_abs = float(diff.max()) if diff.size else 0.0
    scale = float(np.abs(want).max()) if want.size else 0.0
    max_rel = max_abs / scale if scale > 0 else max_abs
    finite = bool(np.isfinite(got).all() == np.isfinite(want).all())
    return OutputError(name, dtype, max_abs, max_rel, finite and max_abs <= tol.atol + tol.rtol * scale)


def validate_component(component: Component, onnx_path: Path, seed: int = 1) -> list[dict]:
    """Run every validation case in onnxruntime and PyTorch; raise ValidationError on the first miss."""
    from edgeattn.graphs.session import session_from_onnx

    session = session_from_onnx(onnx_path)
    gen = torch.Generator().manual_seed(seed)
    records = []
    for case in component.cases:
        feeds = component.make_inputs(case, gen)
        errors = _run_case(component, session, feeds)
        records.append({"case": case, "outputs": {e.output: {"max_abs": e.max_abs, "max_rel": e.max_rel} for e in errors}})
        for err in errors:
            if not err.ok:
                raise ValidationError(
                    f"component {component.name!r} output {err.output!r} differs from PyTorch at {_describe(case)}: "
                    f"max abs error {err.max_abs:.3g}, relative {err.max_rel:.3g} "
                    f"(tolerance for {err.dtype}: {tolerance_for(err.dtype)}); "
                    "export with --no-validate to keep the file and investigate"
                )
    return records


def _run_case(component: Component, session, feeds: dict[str, torch.Tensor]) -> list[OutputError]:
    with torch.no_grad():
        want = component.module(*(feeds[n] for n in component.input_names))
    want = want if isinstance(want, (tuple, list)) else (want,)
    got = session.run(component.output_names, {n: t.numpy() for n, t in feeds.items()})
    return [compare(n, g, w.detach().numpy()) for n, g, w in zip(component.output_names, got, want)]


def _describe(case: Case) -> str:
    return ", ".join(f"{k} {v}" for k, v in case.items())
