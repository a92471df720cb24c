"""Why a Softmax or a fused attention node is not a site: one sentence per rule.

A rule refuses in its check with a specific reason (`Refusal`); when its pattern does not match at
all, the matcher's message is replaced by what the graph actually has there.
"""

from __future__ import annotations

from typing import Any, Iterator

import onnx_ir as ir
from onnxscript.rewriter import pattern as orp
from onnxscript.rewriter._basics import MatchStatus

from edgeattn.graphs.rules import AttentionRule

_BETWEEN = {"Cast", "Where", "IsNaN", "Dropout", "Identity"}
_SCORE_CHAIN = {"Mul", "Div", "Add", "Where", "Cast"}
_PRODUCTS = {"MatMul", "Einsum"}  # the products attention is written with
_OTHER_USES = "Matched nodes have other uses"
NOT_ATTENTION = "no MatMul takes this Softmax's output as attention weights (not an attention softmax)"


class LastMatch(orp.MatchingTracer):
    """Keeps the outcome of the last match attempt (its status, and the MatchResult with its reason)."""

    def __init__(self) -> None:
        super().__init__()
        self.status: MatchStatus | None = None
        self.result: orp.MatchResult | None = None

    def log(self, rule: Any, container: Any, node: ir.Node, match_result: Any, status: MatchStatus) -> None:
        self.status, self.result = status, match_result


def refusal_reasons(model: ir.Model, container: Any, node: ir.Node, rules: list, is_softmax: bool) -> list[str]:
    anchors = list(_value_matmuls(node)) if is_softmax else [node]
    if not anchors:
        return [NOT_ATTENTION]
    reasons = []
    for rule, rewrite_rule in rules:
        for anchor in anchors:
            if not rule.may_match(anchor):
                continue
            tracer = LastMatch()
            rewrite_rule.match(model, container, anchor, tracer=tracer)
            reason = _explain(rule, tracer, node, anchor)
            if reason is not None:
                reasons.append(f"{rule.name}: {reason}")
    if not reasons:
        reasons.append(f"no rule handles {node.domain or 'ai.onnx'}.{node.op_type}")
    return reasons


def _explain(rule: AttentionRule, tracer: Any, node: ir.Node, anchor: ir.Node) -> str | None:
    result = tracer.result
    if tracer.status is None or result is None:
        return None  # the rule's pattern is for another op type: nothing to say
    reason = result.reason or "the pattern did not match"
    if tracer.status == MatchStatus.CONDITION_FAILED:
        return reason
    if reason.startswith(_OTHER_USES):
        return _other_uses(result.nodes, anchor)
    if node.op_type == "Softmax":
        return _score_chain(node)
    return reason


def _value_matmuls(softmax: ir.Node) -> Iterator[ir.Node]:
    """MatMul nodes that take the Softmax output (through casts, a NaN guard, dropout) as first input."""
    frontier, seen = list(softmax.outputs[:1]), set()  # a file may hold a Softmax without outputs
    for _ in range(5):
        following = []
        for value in frontier:
            for user, index in value.uses():
                if user in seen:
                    continue
                seen.add(user)
                if user.op_type in _PRODUCTS and index == 0:
                    yield user
                elif user.op_type in _BETWEEN:
                    following.extend(user.outputs[:1])
        frontier = following


def _other_uses(nodes: Any, anchor: ir.Node) -> str:
    matched = set(nodes)
    for node in nodes:
        for value in node.outputs:
            if node is anchor and value is node.outputs[0]:
                continue  # the site's own output
            outside = [user for user, _ in value.uses() if user not in matched]
            if value.is_graph_output() or outside:
                where = "is a graph output" if value.is_graph_output() else f"is also read by {outside[0].op_type} '{outside[0].name}'"
                return (f"the {node.op_type} output '{value.name}' inside the attention {where} "
                        "(e.g. returned attention weights or a KV-cache output)")
    return "nodes inside the attention have other uses"


def _scores_input(node: ir.Node) -> ir.Value | None:
    """The input of a scale/mask/cast node that carries the scores: the computed one of its operands
    (not a constant, an initializer or a graph input such as the mask), else the first."""
    if node.op_type == "Where":
        candidates = list(node.inputs[1:3])
    else:
        candidates = list(node.inputs[:2] if node.op_type in ("Mul", "Div", "Add", "Sub") else node.inputs[:1])
    computed = [v for v in candidates if v is not None and v.producer() is not None
                and v.producer().op_type != "Constant"]
    return computed[0] if computed else next((v for v in candidates if v is not None), None)


def _score_chain(softmax: ir.Node) -> str:
    """Describe the ops between the scores MatMul and the Softmax when they are not a scale/mask/cast chain."""
    ops, value = [], softmax.inputs[0] if softmax.inputs else None
    for _ in range(6):
        producer = value.producer() if value is not None else None
        if producer is None:
            return f"the Softmax input does not come from a Q·Kᵀ MatMul (it comes through: {', '.join(ops) or 'nothing'})"
        if producer.op_type in _PRODUCTS:
            break
        ops.append(producer.op_type)
        value = _scores_input(producer)
    unexpected = [op for op in ops if op not in _SCORE_CHAIN]
    if unexpected:
        return f"between the Q·Kᵀ MatMul and the Softmax there is {', '.join(unexpected)}, not a scale/mask/cast chain"
    return f"the ops between the Q·Kᵀ MatMul and the Softmax ({', '.join(ops) or 'none'}) are not in a recognised order"
