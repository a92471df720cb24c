"""edgeattn.Attention for onnxruntime: exact causal attention that never computes the masked half.

The queries go in `chunks` slices, each slice attending only its key prefix (the standard Attention op
per slice); below chunks·min_rows query rows, one Attention over all keys. Tests hold it to the op's
function body.
"""

from __future__ import annotations

from typing import Any

import onnx_ir as ir

from edgeattn.ops.attention.trt import node_beyond_basic_form
from edgeattn.ops.bodies import Nodes
from edgeattn.ops.ort import OrtLowering, Plan, SharedValues, LoweringSite, attention, causal_mask, causal_site
from edgeattn.ops.ort import if_else as _if


def ort_lowering(node: ir.Node, attrs: dict[str, Any], opset: int) -> Plan | str:
    """The causal-chunks plan for a causal site, or why the node keeps its function body (a node that uses
    more of the op than Q, K, V and a mask, such as a KV cache or softcap, keeps it too)."""
    beyond = node_beyond_basic_form(node)
    if beyond is not None:
        return f"the causal-chunks lowering computes Q, K, V and a mask only, not {beyond}"
    site = causal_site(node, attrs, opset)
    if isinstance(site, str):
        return site
    return Plan("causal-chunks", lambda b, shared, settings: lower_causal_dense(b, site, shared, settings))


def lower_causal_dense(b: Nodes, site: LoweringSite, shared: SharedValues, settings: OrtLowering) -> ir.Value:
    """Exact causal attention in query slices, each over its key prefix."""
    causal, chunks = int(site.attrs["causal"]), settings.chunks
    node, opset = site.node, b.opset

    def pieces(s: Nodes) -> dict:
        q_len, kv_len = s.dim(site.query, 2), s.dim(site.key, 2)
        offset = s.op("Sub", kv_len, q_len) if causal == 2 else s.scalar(0)
        size = s.ceil_div(q_len, chunks)
        out = {"q_len": q_len, "kv_len": kv_len, "slices": [],
               "full": causal_mask(s, q_len, kv_len, offset, site.key_mask),
               "chunked": s.op("GreaterOrEqual", q_len, s.scalar(chunks * settings.min_chunk_rows))}
        for index in range(chunks):
            start = s.op("Min", s.op("Mul", s.scalar(index), size), q_len)
            end = s.op("Min", s.op("Mul", s.scalar(index + 1), size), q_len)
            keys = s.op("Add", offset, end)
            mask = causal_mask(s, s.op("Sub", end, start), keys, s.op("Add", offset, start), site.key_mask)
            out["slices"].append((s.vec(start), s.vec(end), s.vec(keys), mask))
        return out

    key = ("causal-dense", causal, chunks, settings.min_chunk_rows, *site.lengths, id(site.key_mask))
    got = shared.get(key, node, pieces, opset)

    def chunked(inner: Nodes) -> ir.Value:
        outs = []
        for start, end, keys, mask in got["slices"]:
            q = inner.op("Slice", site.query, start, end, inner.i64(2))
            k = inner.op("Slice", site.key, inner.i64(0), keys, inner.i64(2))
            v = inner.op("Slice", site.value, inner.i64(0), keys, inner.i64(2))
            outs.append(attention(inner, q, k, v, mask, site.scale))
        return inner.op("Concat", *outs, axis=2)

    def whole(inner: Nodes) -> ir.Value:
        return attention(inner, site.query, site.key, site.value, got["full"], site.scale)

    return _if(b, got["chunked"], chunked, whole)
