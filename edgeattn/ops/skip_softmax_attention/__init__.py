"""edgeattn.SkipSoftmaxAttention (BLASST): the op declaration. The tile-walk reference and the GPU
kernels live in `edgeattn.kernels.skip_softmax`; this package gives them the op's signature."""

from __future__ import annotations

from edgeattn.ops.skip_softmax_attention import spec
from edgeattn.ops.skip_softmax_attention.function import build_function, function_key
from edgeattn.ops.skip_softmax_attention.trt import plugin_def, to_trt_form
from edgeattn.ops.spec import SparseFlag, declare, lazy

NO_ORT_KERNEL = "onnxruntime has no tile-skipping kernel: the exact body computes every score"
NOTE = ("SkipSoftmaxAttention runs its exact function body in onnxruntime, which computes every score (there is "
        "no tile-skipping kernel for onnxruntime); the skipping happens in the TensorRT plugin's GPU kernel")


def ort_lowering(node: object, attrs: object, opset: int) -> str:
    """No onnxruntime kernel skips tiles: the node keeps its exact body (and says why)."""
    return NO_ORT_KERNEL


# The reference is imported on first call: it needs torch, which the registry must not import.
SPEC = declare(spec, kind="attention", reference=lazy("edgeattn.ops.skip_softmax_attention.reference",
                                 "skip_softmax_reference"),
               function_key=function_key, build_function=build_function, to_trt_form=to_trt_form, tags=("sparse",),
               ort_lowering=ort_lowering, note=NOTE,
               sparse_flags=(SparseFlag("blasst", "SkipSoftmaxAttention (BLASST), λ = scale_factor / Lkv",
                                        aliases={"sf": "scale_factor", "splits": "num_splits"}),), kernels=("skip_softmax",), plugin=plugin_def)

__all__ = ["SPEC"]
