"""The attention rules, in the order they are tried on each node."""

from __future__ import annotations

from edgeattn.graphs.rules.base import AttentionRule, Plan, Refusal, SiteFacts
from edgeattn.graphs.rules.decomposed import DecomposedAttention
from edgeattn.graphs.rules.einsum import EinsumAttention
from edgeattn.graphs.rules.fused import MsAttention, mha_rules
from edgeattn.graphs.rules.gqa import gqa_rules
from edgeattn.graphs.rules.standard import onnx_attention_rules


def attention_rules() -> tuple[AttentionRule, ...]:
    return (*onnx_attention_rules(), MsAttention(), *mha_rules(), *gqa_rules(), DecomposedAttention(),
            EinsumAttention())


__all__ = ["AttentionRule", "Plan", "Refusal", "SiteFacts", "attention_rules"]
