"""Multiply-adds of a forward pass, counted from the graph: what a FLOP-ideal speedup compares.

The count takes the operations whose cost grows with the tokens a transformer processes:

- every MatMul or Gemm with a constant operand (the weight matrices: projections, MLPs, the LM head,
  a projector): 2 x its elements per token;
- every Conv with a constant kernel and a static output (a ViT's patch embedding): 2 x kernel elements x
  output positions per image;
- every attention site `find_sites` finds: scores and values over all L x L positions, 2 x 2 x L^2 x
  heads x head size, as onnxruntime's CPU kernel computes them (causal masking saves nothing there).

Elementwise ops, norms and softmax are not counted (a few percent of a transformer's work).

    flops = forward_flops(load("decoder.onnx"), tokens=600)
"""

from __future__ import annotations

import math
from typing import Any

import onnx_ir as ir

from edgeattn.graphs.detect import find_sites

_LINEAR = ("MatMul", "Gemm")


def linear_elements(model: ir.Model) -> int:
    """Elements of the constant matrices MatMul / Gemm nodes multiply by (weights read once per token)."""
    total = 0
    for node in model.graph.all_nodes():
        if node.op_type not in _LINEAR or node.domain not in ("", "ai.onnx"):
            continue
        for value in node.inputs[:2]:
            if value is not None and value.const_value is not None and len(value.const_value.shape) == 2:
                total += math.prod(value.const_value.shape.numpy())
    return total


def conv_flops(model: ir.Model) -> float:
    """Multiply-adds x 2 of the Conv nodes with a constant kernel and a static output size, per image."""
    total = 0.0
    for node in model.graph.all_nodes():
        if node.op_type != "Conv" or len(node.inputs) < 2 or node.inputs[1] is None:
            continue
        kernel, out = node.inputs[1].const_value, node.outputs[0].shape
        if kernel is None or out is None or not all(isinstance(d, int) for d in list(out)[2:]):
            continue
        total += 2.0 * math.prod(kernel.shape.numpy()) * math.prod(list(out)[2:])
    return total


def attention_flops(model: ir.Model, tokens: int, component: str = "model") -> float:
    """Scores and weighted values of every attention site over `tokens` x `tokens` positions."""
    total = 0.0
    for site in find_sites(model, component).sites:
        if site.num_heads is None or site.head_size is None:
            continue
        total += 2.0 * 2.0 * tokens * tokens * site.num_heads * site.head_size
    return total


def forward_flops(model: ir.Model, tokens: int, component: str = "model") -> float:
    """FLOPs (2 per multiply-add) of one forward pass over `tokens` positions of one sequence or image."""
    return 2.0 * linear_elements(model) * tokens + conv_flops(model) + attention_flops(model, tokens, component)


def describe(model: ir.Model, component: str = "model") -> dict[str, Any]:
    """The counts `forward_flops` combines, for reports."""
    sites = find_sites(model, component).sites
    return {"linear_elements": linear_elements(model), "conv_flops": conv_flops(model), "attention_sites": len(sites)}
