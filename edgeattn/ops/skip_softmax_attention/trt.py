"""The TensorRT form of edgeattn.SkipSoftmaxAttention: the node as it is, every attribute written out.

The skip-softmax kernels (`edgeattn.kernels.skip_softmax`) read contiguous 4-D Q, K, V and no mask, with
lower-right causal masking; a node in another layout or with a mask keeps the TensorRT form all the same,
and a TensorRT without a plugin that takes it inlines the node's exact function body.
"""

from __future__ import annotations

import onnx_ir as ir


def to_trt_form(node: ir.Node) -> None:
    query = node.inputs[0] if node.inputs else None
    if query is None or query.dtype is None:
        raise ValueError(f"the element type of Q of {node.name} is unknown")
    four_dims = query.shape is not None and len(query.shape) == 4
    if four_dims and node.attributes.get_int("causal", 0) == 1:
        node.attributes["causal"] = ir.AttrInt64("causal", 2)  # the kernels' causal is lower-right (as before)
