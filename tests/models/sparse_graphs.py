"""Tiny graphs for the sparse-attention tests: one edgeattn node, or one exported-style attention site,
run with onnxruntime through the function body or the fast lowering."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort

from edgeattn.graphs.attach import attach_bodies
from onnx_ir.passes import Sequential

from edgeattn.graphs.passes import AttachFunctionBodies, LowerForOrt, PipelineRecord
from edgeattn.ops.registry import default_registry
from edgeattn.ops.spec import OpSpec

_KINDS = {"int": ir.AttributeType.INT, "float": ir.AttributeType.FLOAT, "string": ir.AttributeType.STRING,
          "ints": ir.AttributeType.INTS, "floats": ir.AttributeType.FLOATS}


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    """max|a - b| / max|b| (the tolerance measure of the sparse tests)."""
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max() / max(np.abs(b).max(), 1e-30))


def op_model(spec: OpSpec, arrays: Sequence[np.ndarray | None], attrs: dict[str, Any], outputs: int = 1,
             symbolic: bool = True, opset: int = 23) -> ir.Model:
    """A model with one edgeattn node; inputs in0.. (Q, K, V, mask ...), outputs out0.. .

    With `symbolic`, the sequence axes are named (sequence / total) as in an export, so per-graph values
    are shared and nothing is specialised on a static length."""
    inputs, values = [], []
    for index, array in enumerate(arrays):
        if array is None:
            values.append(None)
            continue
        shape: list[Any] = list(array.shape)
        if symbolic and array.ndim == 4:
            if index == 0:
                shape[2] = "sequence"
            elif index in (1, 2):
                shape[2] = "total"
            elif index == 3:
                shape[3] = "total" if array.shape[3] > 1 else 1
        value = ir.Value(name=f"in{index}", type=ir.TensorType(ir.DataType.from_numpy(array.dtype)), shape=ir.Shape(shape))
        inputs.append(value)
        values.append(value)
    while values and values[-1] is None:
        values.pop()
    attributes = [ir.Attr(k, _KINDS[spec.attribute(k).kind], list(v) if isinstance(v, tuple) else v) for k, v in attrs.items()]
    node = ir.Node("edgeattn", spec.name, values, attributes=attributes, num_outputs=outputs, name="site")
    for index, out in enumerate(node.outputs):
        out.name = f"out{index}"
        out.type = ir.TensorType(ir.DataType.BOOL if spec.kind == "select" else ir.DataType.FLOAT)
        if index:
            out.shape = ir.Shape([])
    graph = ir.Graph(inputs, list(node.outputs), nodes=[node], opset_imports={"": opset, "edgeattn": 1}, name="g")
    return ir.Model(graph, ir_version=10)


def session(model: ir.Model | onnx.ModelProto) -> ort.InferenceSession:
    proto = ir.serde.serialize_model(model) if isinstance(model, ir.Model) else model
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])


def feeds_of(arrays: Sequence[np.ndarray | None]) -> dict[str, np.ndarray]:
    return {f"in{i}": a for i, a in enumerate(arrays) if a is not None}


def run_body(spec: OpSpec, arrays: Sequence[np.ndarray | None], attrs: dict[str, Any], outputs: int = 1) -> list:
    """The op through its function body (what onnxruntime inlines)."""
    model = op_model(spec, arrays, attrs, outputs)
    attach_bodies(model, "ort", default_registry())
    return session(model).run(None, feeds_of(arrays))


def run_fast(spec: OpSpec, arrays: Sequence[np.ndarray | None], attrs: dict[str, Any]) -> tuple[list, list]:
    """The op through the fast onnxruntime lowering; returns (outputs, lowering report)."""
    model = op_model(spec, arrays, attrs)
    record = PipelineRecord()
    Sequential(LowerForOrt(record=record), AttachFunctionBodies(record=record))(model)
    return session(model).run(None, feeds_of(arrays)), list(record.lowered)


def full_attrs(spec: OpSpec, **given: Any) -> dict[str, Any]:
    return {**spec.defaults(), **given}


def attention_site(q_heads: int = 4, kv_heads: int = 2, head: int = 8, static_len: int | None = None) -> onnx.ModelProto:
    """One opset-23 Attention site with the export's mask: And(causal(positions), padding(attention_mask))
    (inputs q, k, v, attention_mask; output y), the builder the sparse benchmark times."""
    from benchmarks.sparse_quality_speed import attention_site as sites

    return sites(static_len, layers=1, q_heads=q_heads, kv_heads=kv_heads, head=head, batch="batch", indexed=False)


def attention_feeds(rng: np.random.Generator, batch: int, q_heads: int, kv_heads: int, q_len: int, kv_len: int,
                    head: int, padded: int = 0) -> dict[str, np.ndarray]:
    mask = np.ones((batch, kv_len), np.int64)
    mask[-1, :padded] = 0
    return {"q": rng.standard_normal((batch, q_heads, q_len, head), np.float32),
            "k": rng.standard_normal((batch, kv_heads, kv_len, head), np.float32),
            "v": rng.standard_normal((batch, kv_heads, kv_len, head), np.float32),
            "attention_mask": mask}
