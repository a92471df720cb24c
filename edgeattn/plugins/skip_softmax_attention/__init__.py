"""edgeattn.SkipSoftmaxAttention (BLASST): the op declaration. The tile-walk reference and the GPU
kernels live in `edgeattn.plugins.skip_softmax`; this package gives them the op's signature."""

from __future__ import annotations

from edgeattn.plugins.skip_softmax_attention import spec
from edgeattn.plugins.skip_softmax_attention.function import build_function, function_key
from edgeattn.plugins.skip_softmax_attention.trt import to_trt_form
from edgeattn.plugins.spec import declare, lazy

# The reference is imported on first call: it needs torch, which the registry must not import.
SPEC = declare(spec, kind="attention", reference=lazy("edgeattn.plugins.skip_softmax_attention.reference",
                                 "skip_softmax_reference"),
               function_key=function_key, build_function=build_function, to_trt_form=to_trt_form, tags=("sparse",))

__all__ = ["SPEC"]
