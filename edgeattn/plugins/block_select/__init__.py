"""edgeattn.BlockSelect: block selection from pooled Q/K scores (the op declaration)."""

from __future__ import annotations

from typing import Any

from edgeattn.plugins.block_select import spec
from edgeattn.plugins.block_select.function import build_function, function_key, to_trt_form
from edgeattn.plugins.spec import OpSpec


def reference(*args: Any, **kwargs: Any) -> Any:
    """`reference.block_select_reference`, imported on first use (it needs torch)."""
    from edgeattn.plugins.block_select.reference import block_select_reference

    return block_select_reference(*args, **kwargs)


SPEC = OpSpec(
    name=spec.NAME,
    doc=spec.DOC,
    kind="select",
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
