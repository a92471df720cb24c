"""What every attention rule shares: the plan a match becomes, and the rule base class.

A rule is an onnxscript pattern rule whose `check` and `rewrite` both call one pure function,
`plan(**bindings) -> Plan`, which either raises `Refusal(reason)` or says how to build the
`edgeattn.Attention` node (its inputs, attributes, and what the report shows). Nothing is kept between
`check` and `rewrite`: the rewrite recomputes the plan from the same bindings.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, Callable

import onnx_ir as ir
from onnxscript.rewriter import pattern as orp
from onnxscript.rewriter._basics import MatchFailureError
from edgeattn.ops.spec import DOMAIN

Builder = Any  # the onnxscript rewriter's op builder (RewriterContext)
InputsBuilder = Callable[[Builder], list["ir.Value | None"]]
OutputFinisher = Callable[[Builder, ir.Value], ir.Value]

EDGEATTN = DOMAIN  # the domain of the nodes the rules write
FLOAT32_MAX = 3.4028234663852886e38
FLOAT32_TINY = 1.401298464324817e-45  # the smallest positive float32 (subnormal); below it a scale rounds to 0


class Refusal(MatchFailureError):
    """A rule saw attention but cannot rewrite it; the message is the reason shown to the user."""

    def __init__(self, reason: str, *sources: ir.Node | ir.Value) -> None:
        super().__init__(reason, *[s for s in sources if s is not None])


@dataclass(frozen=True)
class SiteFacts:
    """What `inspect` reports about one site."""

    anchor: ir.Node  # the node that names the site: the Softmax, or the fused attention node
    dialect: str
    layout: str  # "bhsd" (4-D), "bs(hd)" (3-D, heads packed in the last axis), "(bh)sd" (3-D, heads in batch)
    num_heads: int | None
    kv_num_heads: int | None
    head_size: int | None
    mask: str  # "none", "bool" or "additive"
    causal: int
    scale: float | None  # None: 1/sqrt(head size) at run time
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Plan:
    facts: SiteFacts
    attributes: dict[str, Any]
    build_inputs: InputsBuilder  # emits any nodes the inputs need; returns [Q, K, V, mask or None]
    rank: int  # rank of the op's Q, K, V (3 or 4)
    dtype: ir.DataType | None  # element type of Q, K, V
    finish: OutputFinisher | None = None  # maps the op's output back to the site's output
    outputs: int = 1  # outputs of the edgeattn node (the pattern's: Y, then the site's others in the op's order)
    others: Callable[[], list[ir.Value]] | None = None
    """The site's outputs after Y when build_inputs computes them outside the op (which then has one output)."""


class AttentionRule(orp.RewriteRuleClassBase):
    """Pattern + plan. Subclasses define `pattern` and `plan`; this class does check and rewrite."""

    dialect = "attention"
    root: tuple[str, str] = ("", "MatMul")  # (domain, op type) of the pattern's output node

    def __init__(self) -> None:
        super().__init__(name=type(self).__name__)

    @abc.abstractmethod
    def plan(self, **bindings: Any) -> Plan:
        """The plan for a match, or raise Refusal."""

    def check(self, context: Any, **bindings: Any) -> orp.MatchResult:
        self.plan(**bindings)
        return orp.MatchResult()

    def rewrite(self, op: Builder, **bindings: Any) -> ir.Value:
        plan = self.plan(**bindings)
        inputs = plan.build_inputs(op)
        _annotate(inputs, plan)
        while inputs and inputs[-1] is None:
            inputs.pop()
        if plan.outputs == 1 or plan.others is not None:
            out = op.Attention(*inputs, _domain=EDGEATTN, **plan.attributes)
            out = plan.finish(op, out) if plan.finish is not None else out
            return out if plan.outputs == 1 else [out, *plan.others()[: plan.outputs - 1]]
        first, *others = op.Attention(*inputs, _domain=EDGEATTN, _outputs=plan.outputs, **plan.attributes)
        return [plan.finish(op, first) if plan.finish is not None else first, *others]

    def may_match(self, node: ir.Node) -> bool:
        """A cheap test before the pattern matcher: the node has the pattern's root op type."""
        domain = "" if node.domain == "ai.onnx" else node.domain
        return (domain, node.op_type) == self.root

    def to_rule(self) -> orp.RewriteRule:
        return orp.RewriteRule(self.pattern, self.rewrite, self.check, name=self.name)


class FusedOutputsRule(AttentionRule):
    """A fused op (`root`) whose node declares a number of `output_names` (Y first): one instance per count,
    `outputs` of them; the instance for all of them also takes longer, malformed nodes (its plan refuses)."""

    output_names: tuple[str, ...] = ("y",)

    def __init__(self, outputs: int = 1) -> None:
        super().__init__()
        self.outputs = outputs

    @classmethod
    def instances(cls) -> tuple["FusedOutputsRule", ...]:
        """One instance per output count, most outputs first."""
        return tuple(cls(n) for n in range(len(cls.output_names), 0, -1))

    def may_match(self, node: ir.Node) -> bool:
        count = len(node.outputs)
        return (count == self.outputs or (self.outputs == len(self.output_names) and count > self.outputs)) and \
            super().may_match(node)

    def pattern(self, op, query):
        domain, op_type = self.root
        return getattr(op, op_type)(query, _domain=domain, _allow_other_inputs=True,
                                    _outputs=list(self.output_names[: self.outputs]))


def _annotate(inputs: list[ir.Value | None], plan: Plan) -> None:
    """Rank and type on new input values, so lowering can choose the function body without inference."""
    for value in inputs[:3]:
        if value is not None and value.shape is None:
            value.shape = ir.Shape([None] * plan.rank)
        if value is not None and value.dtype is None and plan.dtype is not None:
            value.dtype = plan.dtype
    mask = inputs[3] if len(inputs) > 3 else None
    if mask is not None and mask.dtype is None:
        mask.dtype = ir.DataType.BOOL if plan.facts.mask == "bool" else plan.dtype


def attribute(node: ir.Node, name: str, kind: ir.AttributeType, default: Any) -> Any:
    """Attribute `name` of `node`, which its op's schema gives as `kind`; `default` when it is absent.

    A file may say anything: an attribute of another type, or a reference to a function attribute, is
    refused with its reason rather than read as something else."""
    attr = node.attributes.get(name)
    if attr is None:
        return default
    if attr.is_ref() or attr.type != kind:
        what = f"a reference to '{attr.ref_attr_name}'" if attr.is_ref() else f"of type {attr.type.name}"
        raise Refusal(f"attribute '{name}' of the {node.op_type} node '{node.name}' is {what}, not {kind.name}", node)
    return list(attr.value) if kind == ir.AttributeType.INTS else attr.value


def int_attribute(node: ir.Node, name: str, default: Any) -> Any:
    return attribute(node, name, ir.AttributeType.INT, default)


def float_attribute(node: ir.Node, name: str, default: Any) -> Any:
    return attribute(node, name, ir.AttributeType.FLOAT, default)


def ints_attribute(node: ir.Node, name: str, default: Any) -> Any:
    return attribute(node, name, ir.AttributeType.INTS, default)


def attention_attributes(
    scale: float | None, causal: int, q_heads: int | None, kv_heads: int | None, softmax_precision: int = 0,
    zero_nan_rows: int = 0,
) -> dict[str, Any]:
    """The edgeattn.Attention attributes of a site, every one written out (TensorRT plugins read them all).

    The op reads a scale of 0 as 1/sqrt(head size), and keeps it as a float32 attribute: a site whose
    scale is not a positive finite float32 (0, negative, inf/NaN, or one that under/overflows float32)
    is refused rather than silently computed with another scale."""
    if scale is not None and not FLOAT32_TINY <= scale <= FLOAT32_MAX:  # also False for NaN
        raise Refusal(f"the attention scale {scale:g} is not a positive finite float32; edgeattn.Attention "
                      "takes a scale > 0 (0 means 1/sqrt(head size))")
    return {
        "scale": float(scale) if scale is not None else 0.0,
        "causal": int(causal),
        "q_num_heads": int(q_heads or 0),
        "kv_num_heads": int(kv_heads or 0),
        "softmax_precision": int(softmax_precision),
        **({"zero_nan_rows": 1} if zero_nan_rows else {}),
    }
