"""The TensorRT form of edgeattn.SkipSoftmaxAttention: what the skip-softmax plugin takes.

The plugin (kernels in `edgeattn.kernels.skip_softmax`) reads contiguous 4-D Q, K, V and no mask; its
float attributes are compiled into the kernel. A node in another form is refused with the reason.
"""

from __future__ import annotations

import onnx_ir as ir


def to_trt_form(node: ir.Node) -> None:
    query = node.inputs[0]
    if query is None or query.shape is None or len(query.shape) != 4:
        raise ValueError(f"the skip-softmax plugin takes 4-D Q, K, V; {node.name} has another layout")
    if len(node.inputs) > 3 and node.inputs[3] is not None:
        raise ValueError(f"the skip-softmax plugin takes no mask, and {node.name} has one")
    if node.attributes.get_int("causal", 0) == 1:
        node.attributes["causal"] = ir.AttrInt64("causal", 2)  # the kernels' causal is lower-right
