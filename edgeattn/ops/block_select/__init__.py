"""edgeattn.BlockSelect: block selection from pooled Q/K scores (the op declaration)."""

from __future__ import annotations

from edgeattn.ops.block_select import spec
from edgeattn.ops.block_select.function import build_function, function_key, to_trt_form
from edgeattn.ops.block_select.trt import plugin_def
from edgeattn.ops.spec import declare, lazy

# The reference is imported on first call: it needs torch, which the registry must not import.
SPEC = declare(spec, kind="select", reference=lazy("edgeattn.ops.block_select.reference",
                                 "block_select_reference"),
               function_key=function_key, build_function=build_function, to_trt_form=to_trt_form, tags=("sparse",),
               check=spec.check_selection, kernels=("block_sparse",), plugin=plugin_def)

__all__ = ["SPEC"]
