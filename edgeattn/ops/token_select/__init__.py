"""edgeattn.TokenSelect: keep k visual tokens (top-k, per-region budgets, diversity fill, greedy max-min)."""

from __future__ import annotations

from edgeattn.ops.token_select import spec
from edgeattn.ops.token_select.function import build_function, function_key
from edgeattn.ops.token_select.reference import token_select_reference
from edgeattn.ops.token_select.trt import plugin_def, to_trt_form
from edgeattn.ops.spec import declare

SPEC = declare(spec, kind="pruning", reference=token_select_reference, function_key=function_key,
               build_function=build_function, to_trt_form=to_trt_form, kernels=("tokens",), plugin=plugin_def)

__all__ = ["SPEC", "token_select_reference"]
