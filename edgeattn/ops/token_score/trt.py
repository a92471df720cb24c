"""The TensorRT form of edgeattn.TokenScore: the node as it is, every attribute written out.

TokenScore has no run-time tunable: all its numbers are already plugin fields (floats, ints, strings),
and its output shape [B, N] follows from the input shapes, so the plugin takes the inputs the node has
(their count tells the plugin which optional inputs are present). Only the element type must be known.
"""

from __future__ import annotations

import onnx_ir as ir


def to_trt_form(node: ir.Node) -> None:
    first = node.inputs[0] if node.inputs else None
    if first is None or first.dtype is None:
        raise ValueError(f"the element type of the first input of {node.name} is unknown")
