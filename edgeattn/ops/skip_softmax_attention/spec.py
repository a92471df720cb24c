"""edgeattn.SkipSoftmaxAttention (BLASST): attention that skips key tiles whose scores cannot matter.

Inside a flash-attention walk over (query tile, key tile) pairs, a key tile is skipped when every row
of the query tile agrees that exp(tile row max - running row max) < λ, with λ = scale_factor / Lkv;
the first tile of each split is never skipped, and a skipped tile changes nothing (no exponentials,
no row sums, no P·V, no running-max update). The exact rule, tile order and counts are those of
`edgeattn.kernels.skip_softmax.reference`. scale_factor = 0 is dense attention.

Inputs and attributes of the site are those of edgeattn.Attention (4-D or 3-D layouts, grouped heads,
causal 0/1/2, boolean or additive mask; masked keys count as keys a row cannot see). The optional
output `skip_ratio` is skipped / visited tiles over the whole call (a float scalar).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from edgeattn.ops.attention.spec import SITE_ATTRIBUTES
from edgeattn.ops.attention.spec import SITE_INPUTS as ATTENTION_INPUTS
from edgeattn.ops.attention.spec import site_shapes as attention_shapes
from edgeattn.ops.spec import AttrSpec, IOSpec, Shape

NAME = "SkipSoftmaxAttention"

DOC = ("BLASST skip-softmax attention: key tiles whose row maxima fall below λ = scale_factor / Lkv of the "
       "running maxima are skipped; optional output: the fraction of visited tiles skipped.")

INPUTS = (
    *ATTENTION_INPUTS,
    IOSpec("scale_factor", "λ·Lkv as a float scalar (overrides the attribute)", optional=True,
           types=("tensor(float)",), tunable_for="scale_factor"),
)

OUTPUTS = (
    IOSpec("Y", "output, [B, Hq, Sq, dv] or [B, Sq, Hq·dv]"),
    IOSpec("skip_ratio", "skipped / visited key tiles over the call, float scalar", optional=True,
           types=("tensor(float)",), statistics=True),
)

ATTRIBUTES = (
    *SITE_ATTRIBUTES,
    AttrSpec("scale_factor", "float", 0.0, "λ = scale_factor / Lkv; 0 skips nothing", tunable=True),
    AttrSpec("block_m", "int", 128, "query rows per tile"),
    AttrSpec("block_n", "int", 64, "keys per tile"),
    AttrSpec("num_splits", "int", 1, "contiguous key-tile ranges, each with its own running max (split-K)"),
)


def infer_shapes(shapes: Sequence[Shape | None], attributes: Mapping[str, Any]) -> list[Shape | None]:
    return [*attention_shapes(shapes, attributes), []]


def check_attributes(attrs: Mapping[str, Any]) -> None:
    """ValueError sentences for attribute values out of range."""
    if attrs["scale_factor"] < 0:
        raise ValueError(f"scale_factor must be >= 0, got {attrs['scale_factor']}")
    for name in ("block_m", "block_n", "num_splits"):
        if attrs[name] < 1:
            raise ValueError(f"{name} must be >= 1, got {attrs[name]}")
