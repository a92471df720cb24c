"""Capture a component with ``torch.onnx.export(dynamo=True)`` and check what came out."""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import warnings

import onnx
import onnx_ir as ir
import torch

from edgeattn.errors import ExportError
from edgeattn.exporter.components import Component

MIN_OPSET, MAX_OPSET, DEFAULT_OPSET = 17, 23, 23
DYNAMO_MIN_OPSET = 18  # the dynamo exporter writes opset 18 or newer; older opsets are converted down
# Reductions that gained `noop_with_empty_axes` in opset 18 (ReduceSum had it since 13).
_REDUCE_18 = {"ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2", "ReduceLogSum",
              "ReduceLogSumExp", "ReduceSumSquare"}


def ir_version_for(opset: int) -> int:
    """The lowest ONNX IR version that carries ``opset`` (older runtimes read only older IR versions)."""
    return onnx.helper.find_min_ir_version_for([onnx.helper.make_opsetid("", opset)], ignore_unknown=True)


def capture(component: Component, opset: int = DEFAULT_OPSET) -> ir.Model:
    """Export one component to an in-memory onnx-ir model with every dynamic axis kept symbolic."""
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ExportError(f"opset {opset} is not supported; choose an opset from {MIN_OPSET} to {MAX_OPSET}")
    gen = torch.Generator().manual_seed(0)
    example = component.make_inputs(component.example, gen)
    args = tuple(example[name] for name in component.input_names)
    dims: dict[str, torch.export.Dim] = {}
    per_input = [
        {axis: dims.setdefault(dim, torch.export.Dim(dim, min=1, max=1 << 20)) for axis, dim in axes.items()} or None
        for axes in (component.dynamic.get(name, {}) for name in component.input_names)
    ]
    shapes = _group_for_signature(component.module, per_input)
    try:
        with _quiet():
            program = torch.onnx.export(
                component.module,
                args,
                dynamo=True,
                optimize=False,  # optimize=True fuses rotary caches that break batch > 1 (DESIGN.md)
                opset_version=max(opset, DYNAMO_MIN_OPSET),
                input_names=component.input_names,
                output_names=component.output_names,
                dynamic_shapes=shapes,
                verbose=False,
            )
    except Exception as err:  # torch raises many types; report the first line of its own summary
        raise ExportError(f"torch.onnx.export failed for component {component.name!r}: {_first_line(err)}") from err
    model = program.model
    import onnxscript

    with _quiet():
        onnxscript.optimizer.optimize_ir(model)
        if opset < DYNAMO_MIN_OPSET:
            downgrade(model, opset)
    model.ir_version = ir_version_for(opset)
    check_dynamic_axes(model, component)
    return model


def downgrade(model: ir.Model, opset: int) -> None:
    """Convert an opset-18 graph down to ``opset`` (for older TensorRT parsers)."""
    from onnxscript import version_converter

    version_converter.convert_version(model, opset, fallback=True)
    for node in model.graph.all_nodes():
        if node.domain == "" and node.op_type in _REDUCE_18 and "noop_with_empty_axes" in node.attributes:
            # The C converter moves axes to an attribute but keeps this opset-18 flag; 0 is the old behaviour.
            if node.attributes["noop_with_empty_axes"].as_int() != 0:
                raise ExportError(f"node {node.name!r} ({node.op_type}) needs opset 18; export with --opset 18 or newer")
            del node.attributes["noop_with_empty_axes"]


def _group_for_signature(module: torch.nn.Module, per_input: list) -> tuple:
    """torch.export wants dynamic shapes shaped like forward's parameters: a ``*args`` tail is one tuple."""
    params = inspect.signature(module.forward).parameters.values()
    fixed = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    has_var = any(p.kind == p.VAR_POSITIONAL for p in params)
    if not has_var:
        return tuple(per_input)
    return (*per_input[: len(fixed)], tuple(per_input[len(fixed) :]))


def check_dynamic_axes(model: ir.Model, component: Component) -> None:
    """Fail if an axis meant to be dynamic came out as a fixed number (the exporter specialised it)."""
    inputs = {value.name: value for value in model.graph.inputs}
    for name, axes in component.dynamic.items():
        value = inputs.get(name)
        if value is None:
            raise ExportError(f"component {component.name!r} lost its input {name!r} during export")
        for axis, dim in axes.items():
            got = value.shape[axis] if value.shape is not None else None
            if not isinstance(got, ir.SymbolicDim):
                raise ExportError(
                    f"component {component.name!r}: input {name!r} axis {axis} ({dim}) was exported as {got!r}, "
                    "not as a dynamic dimension"
                )


@contextlib.contextmanager
def _quiet():
    """Silence the exporter's progress prints and warnings; errors still propagate."""
    sink = io.StringIO()
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    summary = [line for line in text if line.startswith("<class")]
    return (summary[0] if summary else (text[0] if text else type(err).__name__))[:300]
