"""edgeattn.Attention: dense attention, the op every rewritten attention site becomes first."""

from __future__ import annotations

from edgeattn.plugins.attention import spec
from edgeattn.plugins.attention.function import build_function, function_key
from edgeattn.plugins.attention.reference import attention_reference
from edgeattn.plugins.attention.trt import to_trt_form
from edgeattn.plugins.spec import declare

SPEC = declare(spec, kind="attention", reference=attention_reference, function_key=function_key,
               build_function=build_function, to_trt_form=to_trt_form)

__all__ = ["SPEC", "attention_reference"]
