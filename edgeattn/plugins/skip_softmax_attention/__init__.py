"""edgeattn.SkipSoftmaxAttention (BLASST): the op declaration. The tile-walk reference and the GPU
kernels live in `edgeattn.plugins.skip_softmax`; this package gives them the op's signature."""

from __future__ import annotations

from typing import Any

from edgeattn.plugins.skip_softmax_attention import spec
from edgeattn.plugins.skip_softmax_attention.function import build_function, function_key
from edgeattn.plugins.skip_softmax_attention.trt import to_trt_form
from edgeattn.plugins.spec import OpSpec


def reference(*args: Any, **kwargs: Any) -> Any:
    """`reference.skip_softmax_reference`, imported on first use (it needs torch)."""
    from edgeattn.plugins.skip_softmax_attention.reference import skip_softmax_reference

    return skip_softmax_reference(*args, **kwargs)


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
