"""The TensorRT form of edgeattn.TokenScore: the node as it is, every attribute written out.

TokenScore has no run-time tunable: all its numbers are already plugin fields (floats, ints, strings),
and its output shape [B, N] follows from the input shapes, so the plugin takes the inputs the node has
(`present_inputs` says which, when one is skipped). The body computes in float32 whatever the inputs'
type, so nothing about them needs to be known here (a plugin reads the types from the network).
"""

from __future__ import annotations

import onnx_ir as ir


def to_trt_form(node: ir.Node) -> None:
    if not node.inputs or node.inputs[0] is None:
        raise ValueError(f"{node.name} has no first input")
