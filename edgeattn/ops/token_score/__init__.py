"""edgeattn.TokenScore: per-visual-token importance for pruning."""

from __future__ import annotations

from edgeattn.ops.token_score import spec
from edgeattn.ops.token_score.function import build_function, function_key
from edgeattn.ops.token_score.reference import token_score_reference
from edgeattn.ops.token_score.trt import plugin_def, to_trt_form
from edgeattn.ops.spec import declare

SPEC = declare(spec, kind="pruning", reference=token_score_reference, function_key=function_key,
               build_function=build_function, to_trt_form=to_trt_form, kernels=("tokens",), plugin=plugin_def)

__all__ = ["SPEC", "token_score_reference"]
