"""`TokenNodes`: the recorder of the TokenScore and TokenSelect function bodies.

A `Nodes` that builds for every opset from 13 on (the token bodies write no CastLike: everything is
computed in float32) with the pieces both token ops use: min-max scaling, cosine similarities, stable
orderings and row gathers.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from edgeattn.ops.bodies import FLOAT, Nodes

DUPLICATE_SNAP = 1e-6  # cosine similarities this close to 1 count as duplicates (exactly 1)


class TokenNodes(Nodes):
    """Records token-op bodies; `op` returns the output value(s) of the node it adds."""

    min_opset = 13
    bodies = "token pruning bodies"

    def to_float(self, value: ir.Value) -> ir.Value:
        return self.cast(value, FLOAT)

    def minmax(self, value: ir.Value, axis: int = -1) -> ir.Value:
        """(x - min) / max(max - min, 1e-12) along `axis` (all-equal rows become zeros)."""
        low = self.reduce("Min", value, [axis], keepdims=True)
        high = self.reduce("Max", value, [axis], keepdims=True)
        span = self.op("Max", self.op("Sub", high, low), self.const(np.float32(1e-12)))
        return self.op("Div", self.op("Sub", value, low), span)

    def l2_normalize(self, value: ir.Value) -> ir.Value:
        """x / max(||x||, 1e-12) over the last axis (torch.nn.functional.normalize)."""
        norm = self.op("Sqrt", self.reduce("Sum", self.op("Mul", value, value), [-1], keepdims=True))
        return self.op("Div", value, self.op("Max", norm, self.const(np.float32(1e-12))))

    def cosine(self, keys: ir.Value, other: ir.Value | None = None) -> ir.Value:
        """Cosine similarities [B, N, M] between rows of keys [B, N, C] and other [B, M, C] (default: keys).
        Similarities within DUPLICATE_SNAP of 1 are exactly 1, so duplicated tokens tie exactly (the float
        noise of a normalised dot product would otherwise order them differently in every runtime)."""
        left = self.l2_normalize(keys)
        right = left if other is None else self.l2_normalize(other)
        cos = self.op("MatMul", left, self.op("Transpose", right, perm=[0, 2, 1]))
        one = self.const(np.float32(1))
        return self.op("Where", self.op("Greater", cos, self.const(np.float32(1 - DUPLICATE_SNAP))), one, cos)

    def stable_order(self, scores: ir.Value, count: ir.Value, largest: int = 1) -> tuple[ir.Value, ir.Value]:
        """TopK of 0-D `count` along the last axis: values and indices, ties broken by the lower index
        (the ONNX rule)."""
        return self.op("TopK", scores, self.vec(count), axis=-1, largest=largest, sorted=1, outputs=2)

    def ascending(self, indices: ir.Value) -> ir.Value:
        """int64 indices [B, k] sorted ascending (raster order)."""
        values, _ = self.stable_order(indices, self.dim(indices, -1), largest=0)
        return values

    def gather_rows(self, data: ir.Value, indices: ir.Value) -> ir.Value:
        """data [B, N, D] at indices [B, k] -> [B, k, D]."""
        shape = self.op("Concat", self.op("Shape", indices), self.dims(data, -1), axis=0)
        expanded = self.op("Expand", self.unsqueeze(indices, -1), shape)
        return self.op("GatherElements", data, expanded, axis=1)
