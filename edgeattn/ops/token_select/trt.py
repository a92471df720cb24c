"""The TensorRT form of edgeattn.TokenSelect: k as an attribute, every attribute written out.

An engine needs static output shapes: [B, k, D] and [B, k] follow from the attribute k, so a node that
reads k from the `num_tokens` input is refused before this is called (`graphs.lower` says so); the
plugin then takes scores, features and, when present, keys.
"""

from __future__ import annotations

import onnx_ir as ir


def to_trt_form(node: ir.Node) -> None:
    if len(node.inputs) > 2 and node.inputs[2] is not None:
        raise ValueError(f"{node.name} reads k from an input; TensorRT needs k as an attribute")
    features = node.inputs[1] if len(node.inputs) > 1 else None
    if features is None or features.dtype is None:
        raise ValueError(f"the element type of the features of {node.name} is unknown")
