"""edgeattn.BlockSparseAttention: block-selected, block-masked or windowed attention (the op declaration)."""

from __future__ import annotations

from edgeattn.plugins.block_sparse_attention import spec
from edgeattn.plugins.block_sparse_attention.function import build_function, function_key, to_trt_form
from edgeattn.plugins.spec import declare, lazy

# The reference is imported on first call: it needs torch, which the registry must not import.
SPEC = declare(spec, kind="attention", reference=lazy("edgeattn.plugins.block_sparse_attention.reference",
                                 "block_sparse_attention_reference"),
               function_key=function_key, build_function=build_function, to_trt_form=to_trt_form, tags=("sparse",))

__all__ = ["SPEC"]
