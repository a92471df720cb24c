"""edgeattn.BlockSelect: the key blocks each query block attends, from pooled Q and K scores.

    block_mask[b, kv head, query block, key block]   (bool)

The exact rule (block geometry, pooling, softmax over available blocks, grouping over the query
heads of one key/value head, forced local/sink blocks, dense rows, topk / threshold / cumprob) is
the docstring of `edgeattn.ops.block_select.reference`. BlockSparseAttention with layout
"select" runs the same selection inside itself; this op is the selection alone (for inspection,
calibration and any attention that takes a block mask).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from edgeattn.ops.attention.spec import SITE_ATTRIBUTES as _SITE
from edgeattn.ops.spec import AttrSpec, IOSpec, Shape

NAME = "BlockSelect"

DOC = ("Block selection from mean-pooled Q and mean/max/min-pooled K scores: topk, threshold or cumulative "
       "probability, with always-kept local (diagonal), sink and last-row blocks; bool [B, Hkv, nQB, nKB].")

SITE_ATTRIBUTES = tuple(a for a in _SITE if a.name != "softmax_precision")  # (zero_nan_rows is not a site one)

SELECTION_ATTRIBUTES = (
    AttrSpec("block_size", "int", 64, "rows and keys per block (blocks are aligned to positions)"),
    AttrSpec("mode", "string", "topk", "topk: a budget of blocks; threshold: P > threshold; cumprob: the "
             "smallest set with mass >= cum_prob", choices=("topk", "threshold", "cumprob")),
    AttrSpec("keep", "float", 0.25, "topk budget as a fraction of the key blocks, in (0, 1]", tunable=True),
    AttrSpec("keep_blocks", "int", 0, "topk budget in blocks (overrides keep when > 0)"),
    AttrSpec("threshold", "float", 0.01, "threshold mode: keep blocks whose probability is above this",
             tunable=True),
    AttrSpec("cum_prob", "float", 0.9, "cumprob mode: probability mass to reach, in (0, 1]"),
    AttrSpec("query_pool", "string", "mean", "mean: score the mean query of a block; rows: score every query "
             "row against the pooled keys and average the rows' block probabilities", choices=("mean", "rows")),
    AttrSpec("key_pool", "string", "mean", "how a key block is pooled", choices=("mean", "max", "min")),
    AttrSpec("group_reduce", "string", "mean", "how the query heads of one key/value head combine their "
             "block probabilities", choices=("mean", "max")),
    AttrSpec("local_blocks", "int", 1, "always keep the blocks ending at the diagonal (1 = the diagonal)"),
    AttrSpec("sink_blocks", "int", 1, "always keep the first blocks (attention sinks)"),
    AttrSpec("dense_last_rows", "int", 0, "the last query blocks keep every available block"),
    AttrSpec("dense_decode", "int", 1, "a call with one query row keeps every available block", choices=(0, 1)),
)

ATTRIBUTES = (*SITE_ATTRIBUTES, *SELECTION_ATTRIBUTES)

INPUTS = (
    IOSpec("Q", "query, [B, Hq, Sq, d] or [B, Sq, Hq·d]"),
    IOSpec("K", "key, [B, Hkv, Skv, d] or [B, Skv, Hkv·d]"),
    IOSpec("keep", "topk budget fraction as a float scalar", optional=True, types=("tensor(float)",),
           tunable_for="keep"),
    IOSpec("threshold", "threshold as a float scalar", optional=True, types=("tensor(float)",),
           tunable_for="threshold"),
)

OUTPUTS = (IOSpec("block_mask", "selected blocks, bool [B, Hkv, nQB, nKB]", types=("tensor(bool)",)),)


def infer_shapes(shapes: Sequence[Shape | None], attributes: Mapping[str, Any]) -> list[Shape | None]:
    query, key = shapes[0], shapes[1]
    if query is None or key is None or len(query) != 4 or len(key) != 4:
        return [None]
    return [[query[0], key[1], None, None]]


def check_selection(attrs: Mapping[str, Any]) -> None:
    """ValueError sentences for selection attributes out of range."""
    if attrs["block_size"] < 1:
        raise ValueError(f"block_size must be >= 1, got {attrs['block_size']}")
    for name in ("keep_blocks", "local_blocks", "sink_blocks", "dense_last_rows"):
        if attrs[name] < 0:
            raise ValueError(f"{name} must be >= 0, got {attrs[name]}")
    if not 0.0 < attrs["keep"] <= 1.0:
        raise ValueError(f"keep must be in (0, 1], got {attrs['keep']}")
    if not 0.0 < attrs["cum_prob"] <= 1.0:
        raise ValueError(f"cum_prob must be in (0, 1], got {attrs['cum_prob']}")
