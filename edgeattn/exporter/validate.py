"""Parity of exported components against PyTorch, on fresh inputs at shapes other than the export example."""

from __future__ import annotations

import contextlib
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

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
# bias, a swapped head) is orders of magnitude larger. Half precision: PyTorch and onnxruntime round
# at different points, so the error is a few unit roundoffs (fp16 2^-11 = 4.9e-4, bf16 2^-8 = 3.9e-3)
# of the output's scale. Measured (2026-12, `export --dtype`, tiny-llama / tiny-vit / tiny-llava, every
# validation case, worst output per component): float16 6.7e-4 to 9.9e-4, ~2 roundoffs; bfloat16 (torch
# in bf16 against the file's float32 widening, see `validate_component`) 5.4e-3 to 7.8e-3, ~2 roundoffs.
# The rows leave ~2x headroom over these while a defect (a wrong mask, a dropped bias) is far larger.
# Integer outputs must match exactly.
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


def compare(name: str, got: np.ndarray, want: np.ndarray, dtype: str | None = None) -> OutputError:
    """``got`` (onnxruntime) against ``want`` (PyTorch), under the tolerance row of ``dtype`` (PyTorch's
    dtype; ``want``'s own when not given: a bfloat16 output reaches numpy as float32)."""
    dtype = dtype or str(want.dtype)
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
    """Run every validation case in onnxruntime and PyTorch; raise ValidationError on the first miss.

    PyTorch runs in the component's own dtype (its module was cast before export). onnxruntime runs the file
    as it is, except bfloat16 files, which run as their exact float32 widening (see `widen`): onnxruntime's
    CPU provider has no bfloat16 kernel for most ops and its Python API no numpy type for bfloat16. Each
    record says which (``ran_as``), and every output is held to the tolerance row of PyTorch's dtype.
    """
    from edgeattn.exporter.components import float_dtype

    dtype = float_dtype(component.module)
    with validation_session(onnx_path, dtype) as (session, ran_as):
        gen = torch.Generator().manual_seed(seed)
        records = []
        for case in component.cases:
            feeds = component.make_inputs(case, gen)
            errors = _run_case(component, session, feeds)
            records.append({"case": case, "ran_as": ran_as,
                            "outputs": {e.output: {"max_abs": e.max_abs, "max_rel": e.max_rel} for e in errors}})
            for err in errors:
                if not err.ok:
                    raise ValidationError(
                        f"component {component.name!r} output {err.output!r} differs from PyTorch at {_describe(case)}: "
                        f"max abs error {err.max_abs:.3g}, relative {err.max_rel:.3g} "
                        f"(tolerance for {err.dtype}: {tolerance_for(err.dtype)}); "
                        "export with --no-validate to keep the file and investigate"
                    )
    return records


@contextlib.contextmanager
def validation_session(onnx_path: Path, dtype: torch.dtype) -> Iterator[tuple[Any, str]]:
    """An onnxruntime session for validating ``onnx_path`` and what it runs ("float16 in onnxruntime", ...)."""
    from edgeattn.graphs.session import session_from_onnx

    if dtype != torch.bfloat16:
        yield session_from_onnx(onnx_path), f"{_name(dtype)} in onnxruntime"
        return
    from edgeattn.exporter.widen import widened_copy

    with tempfile.TemporaryDirectory(prefix="edgeattn-widen-") as tmp:
        session = session_from_onnx(widened_copy(onnx_path, Path(tmp) / onnx_path.name))
    yield session, "float32 widening in onnxruntime (no bfloat16 CPU kernels)"


def _run_case(component: Component, session: Any, feeds: dict[str, torch.Tensor]) -> list[OutputError]:
    with torch.no_grad():
        want = component.module(*(feeds[n] for n in component.input_names))
    want = want if isinstance(want, (tuple, list)) else (want,)
    got = session.run(component.output_names, {n: to_numpy(t) for n, t in feeds.items()})
    return [compare(n, g, to_numpy(w.detach()), _name(w.dtype)) for n, g, w in zip(component.output_names, got, want)]


def to_numpy(tensor: torch.Tensor) -> np.ndarray:
    """numpy has no bfloat16: such tensors become float32 (exactly; bfloat16 is a float32 prefix)."""
    return (tensor.float() if tensor.dtype == torch.bfloat16 else tensor).numpy()


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _describe(case: Case) -> str:
    return ", ".join(f"{k} {v}" for k, v in case.items())
