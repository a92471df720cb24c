"""The density a block layout computes when it does not depend on the data.

For layout "window", and for layout "select" in topk mode without a mask, how many (query, key) pairs
are computed depends only on the lengths and the attributes (each query block keeps
max(budget, forced) of its available blocks, whatever they are). This evaluates the op's reference
once on zeros of those lengths and returns its density output: computed pairs over the pairs the
causal rule leaves visible. Tests check it against the density output of the function body on data.
"""

from __future__ import annotations

from typing import Any, Mapping


def layout_density(attrs: Mapping[str, Any], q_len: int, kv_len: int | None = None) -> float:
    """Computed / visible (query, key) pairs of one call, for data-independent layouts."""
    import torch

    from edgeattn.errors import EdgeAttnError
    from edgeattn.ops.block_sparse_attention import SPEC
    from edgeattn.ops.block_sparse_attention.reference import block_sparse_attention_reference

    values = SPEC.resolve({k: v for k, v in attrs.items() if k in {a.name for a in SPEC.attributes}})
    if values["layout"] == "mask" or (values["layout"] == "select" and values["mode"] != "topk"):
        raise EdgeAttnError("the density of a threshold, cumprob or mask layout depends on the data")
    kv_len = q_len if kv_len is None else kv_len
    zeros = torch.zeros(1, 1, q_len, 1), torch.zeros(1, 1, kv_len, 1), torch.zeros(1, 1, kv_len, 1)
    values.update(q_num_heads=0, kv_num_heads=0, causal=values["causal"] or 2)
    _, density = block_sparse_attention_reference(*zeros, **values, compute_dtype=torch.float32, with_density=True)
    return float(density)
