"""edgeattn.BlockSparseAttention: block-selected, block-masked or windowed attention (the op declaration)."""

from __future__ import annotations

from typing import Any

from edgeattn.plugins.block_sparse_attention import spec
from edgeattn.plugins.block_sparse_attention.function import build_function, function_key, to_trt_form
from edgeattn.plugins.spec import OpSpec


def reference(*args: Any, **kwargs: Any) -> Any:
    """`reference.block_sparse_attention_reference`, imported on first use (it needs torch)."""
    from edgeattn.plugins.block_sparse_attention.reference import block_sparse_attention_reference

    return block_sparse_attention_reference(*args, **kwargs)


SPEC = OpSpec(
    name=spec.NAME,
    doc=spec.DOC,
    kind="attention",
    inputs=spec.INPUTS,
    outputs=spec.OUTPUTS,
    attributes=spec.ATTRIBUTES,
    infer_shapes=spec.infer_shapes,
    reference=reference,
    function_key=function_key,
    build_function=build_function,
    to_trt_form=to_trt_form,
    tags=("sparse",),
)

__all__ = ["SPEC", "reference"]
