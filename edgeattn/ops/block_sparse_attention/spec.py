"""edgeattn.BlockSparseAttention: attention restricted to blocks (selected, given) or a static window.

Layouts ("layout" attribute):
- select: BlockSelect's rule picks the key blocks of each query block from pooled Q/K scores
  (SeerAttention's training-free variant, Rectified SpaAttn's selection) — attributes as BlockSelect;
- mask: the blocks come from the `block_mask` input (bool [B, Hkv or 1, nQB, nKB]), e.g. BlockSelect;
- window: a sliding window of `window` keys ending at each query, plus the first `sinks` keys.
rectify = 1 adds Rectified SpaAttn's correction for the mass of the blocks left out.
The exact definition is the docstring of `edgeattn.ops.block_sparse_attention.reference`. Site
inputs and attributes are those of edgeattn.Attention; the optional output `density` is the fraction
of the visible (query, key) pairs that were computed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Sequence

from edgeattn.ops.attention.spec import SITE_ATTRIBUTES
from edgeattn.ops.attention.spec import SITE_INPUTS as ATTENTION_INPUTS
from edgeattn.ops.attention.spec import site_shapes as attention_shapes
from edgeattn.ops.block_select.spec import SELECTION_ATTRIBUTES
from edgeattn.ops.block_select.spec import check_selection as _check_selection
from edgeattn.ops.dims import static_dim
from edgeattn.ops.spec import AttrSpec, IOSpec, Shape
from edgeattn.ranges import MAX_HEADS, parse_index_ranges

if TYPE_CHECKING:
    import onnx_ir as ir

NAME = "BlockSparseAttention"

DOC = ("Attention restricted to key blocks chosen from pooled Q/K scores (select), given as a block mask "
       "(mask), or a sliding window with sink tokens (window); optional Rectified SpaAttn correction; "
       "optional output: the density computed.")

INPUTS = (
    *ATTENTION_INPUTS,
    IOSpec("block_mask", "layout mask: bool [B, Hkv or 1, nQB, nKB]", optional=True, types=("tensor(bool)",)),
    IOSpec("keep", "topk budget fraction as a float scalar", optional=True, types=("tensor(float)",),
           tunable_for="keep"),
    IOSpec("threshold", "threshold as a float scalar", optional=True, types=("tensor(float)",),
           tunable_for="threshold"),
    IOSpec("window", "window layout: the window as an int64 scalar", optional=True, types=("tensor(int64)",),
           tunable_for="window"),
)

OUTPUTS = (
    IOSpec("Y", "output, [B, Hq, Sq, dv] or [B, Sq, Hq·dv]"),
    IOSpec("density", "computed / visible (query, key) pairs over the call, float scalar", optional=True,
           types=("tensor(float)",), statistics=True),
)

ATTRIBUTES = (
    *SITE_ATTRIBUTES,
    AttrSpec("layout", "string", "select", "select: blocks chosen from pooled scores; mask: the block_mask "
             "input; window: sliding window and sinks", choices=("select", "mask", "window")),
    *SELECTION_ATTRIBUTES,
    AttrSpec("window", "int", 256, "window layout: keys p - window < j <= p (without causal |p - j| < window)",
             tunable=True),
    AttrSpec("sinks", "int", 4, "window layout: the first keys every query sees"),
    AttrSpec("heads", "ints", (), "key/value heads the layout applies to (empty: all); the query heads of the "
             "other key/value heads attend densely"),
    AttrSpec("rectify", "int", 0, "add Rectified SpaAttn's estimate of the blocks left out (select, mask)",
             choices=(0, 1)),
)


def infer_shapes(shapes: Sequence[Shape | None], attributes: Mapping[str, Any]) -> list[Shape | None]:
    return [*attention_shapes(shapes, attributes), []]


def check_attributes(attrs: Mapping[str, Any]) -> None:
    """ValueError sentences for attribute values out of range."""
    _check_selection(attrs)
    if attrs["window"] < 1:
        raise ValueError(f"window must be >= 1, got {attrs['window']}")
    if attrs["sinks"] < 0:
        raise ValueError(f"sinks must be >= 0, got {attrs['sinks']}")
    if any(h < 0 for h in attrs["heads"]) or len(set(attrs["heads"])) != len(attrs["heads"]):
        raise ValueError(f"heads must list distinct key/value heads >= 0, got {list(attrs['heads'])}")


def check_site(node: ir.Node, attrs: Mapping[str, Any]) -> None:
    """ValueError sentences for attributes that do not fit what the site's graph knows statically: a
    block size that does not divide a static length, a window longer than the keys, heads it lacks."""
    query, key = node.inputs[0], node.inputs[1]
    four_d = query is not None and query.shape is not None and len(query.shape) == 4
    q_len = static_dim(query, 2 if four_d else 1)
    kv_len = static_dim(key, 2 if four_d else 1)
    kv_heads = static_dim(key, 1) if four_d else (int(attrs["kv_num_heads"]) or int(attrs["q_num_heads"]) or None)
    block = int(attrs["block_size"])
    for name, length in (("query", q_len), ("key", kv_len)):
        if length is not None and length % block:
            raise ValueError(f"block size {block} does not divide the static {name} length {length}; "
                             f"choose a divisor of {length}")
    if attrs["layout"] == "window" and kv_len is not None and int(attrs["window"]) > kv_len:
        raise ValueError(f"window {attrs['window']} is larger than the sequence ({kv_len} keys); "
                         f"choose a window of at most {kv_len}")
    heads = list(attrs["heads"])
    if heads and kv_heads is not None and max(heads) >= kv_heads:
        raise ValueError(f"heads {heads} name key/value heads the site lacks (it has {kv_heads})")


_DECODE = {"dense": 1, "sparse": 0}


def parse_heads_flag(text: str) -> dict[str, Any]:
    """`heads=0-1+5` in a --sparse flag: the key/value heads the layout applies to (the others stay dense)."""
    try:
        return {"heads": list(parse_index_ranges(text, limit=MAX_HEADS, what="heads"))}
    except ValueError as err:
        raise ValueError(f"{err} (a range like 0-3 or 0-1+5)") from None


def parse_decode_flag(text: str) -> dict[str, Any]:
    """`decode=dense|sparse` in a --sparse flag: how a one-token step attends to the cache."""
    if text not in _DECODE:
        raise ValueError(f"decode takes dense or sparse, got {text!r}")
    return {"dense_decode": _DECODE[text]}
