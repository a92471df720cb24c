"""edgeattn.Attention: dense attention, the op every rewritten attention site becomes first."""

from __future__ import annotations

from edgeattn.ops.attention import spec
from edgeattn.ops.attention.function import build_function, function_key
from edgeattn.ops.attention.reference import attention_reference
from edgeattn.ops.attention.trt import plugin_def, to_trt_form
from edgeattn.ops.spec import SparseFlag, declare, lazy

SPEC = declare(spec, kind="attention", reference=attention_reference, function_key=function_key,
               build_function=build_function, to_trt_form=to_trt_form,
               ort_lowering=lazy("edgeattn.ops.attention.ort", "ort_lowering"),
               sparse_flags=(SparseFlag("dense", "edgeattn.Attention (the exact causal-aware lowering)"),), kernels=("skip_softmax",), plugin=plugin_def)

__all__ = ["SPEC", "attention_reference"]
