"""edgeattn.BlockSparseAttention: block-selected, block-masked or windowed attention (the op declaration)."""

from __future__ import annotations

from edgeattn.ops.block_sparse_attention import spec
from edgeattn.ops.block_sparse_attention.function import build_function, function_key, to_trt_form
from edgeattn.ops.block_sparse_attention.trt import plugin_def
from edgeattn.ops.spec import SparseFlag, declare, lazy

_BOTH = {"heads": spec.parse_heads_flag, "decode": spec.parse_decode_flag}
FLAGS = (
    SparseFlag("block", "BlockSparseAttention, blocks picked from pooled Q/K scores", {"layout": "select"},
               {"block": "block_size", "k": "keep_blocks", "p": "cum_prob", "pool": "key_pool", "qpool": "query_pool",
                "local": "local_blocks", "sink": "sink_blocks", "dense_rows": "dense_last_rows"}, _BOTH),
    SparseFlag("window", "BlockSparseAttention, sliding window + sink tokens", {"layout": "window"},
               {"size": "window", "block": "block_size"}, _BOTH),
)

# The reference is imported on first call: it needs torch, which the registry must not import.
SPEC = declare(spec, kind="attention", reference=lazy("edgeattn.ops.block_sparse_attention.reference",
                                 "block_sparse_attention_reference"),
               function_key=function_key, build_function=build_function, to_trt_form=to_trt_form, tags=("sparse",),
               check_site=spec.check_site, ort_lowering=lazy("edgeattn.ops.block_sparse_attention.ort", "ort_lowering"),
               sparse_flags=FLAGS, kernels=("block_sparse",), plugin=plugin_def)

__all__ = ["SPEC"]
