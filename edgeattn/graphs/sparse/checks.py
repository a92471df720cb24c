"""Parameter checks for sparse sites, as RecipeError sentences, before anything is built.

What an op's attributes allow (keep in (0, 1], sinks >= 0 ...) is the op's own check; what the graph
knows statically (a window longer than a static sequence, a block size that does not divide a static
length, heads the site does not have) is checked here against each site.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import onnx_ir as ir

from edgeattn.errors import RecipeError
from edgeattn.graphs.detect import SITE_TAG
from edgeattn.graphs.lower import call_facts
from edgeattn.graphs.values import static_dim
from edgeattn.plugins.block_select.spec import check_selection
from edgeattn.plugins.block_sparse_attention.spec import check_attributes as check_block_sparse
from edgeattn.plugins.registry import Registry
from edgeattn.plugins.skip_softmax_attention.spec import check_attributes as check_skip_softmax

ATTRIBUTE_CHECKS: dict[str, Callable[[Mapping[str, Any]], None]] = {
    "SkipSoftmaxAttention": check_skip_softmax,
    "BlockSparseAttention": check_block_sparse,
    "BlockSelect": check_selection,
}


def check_attributes(op: str, attrs: Mapping[str, Any], where: str) -> None:
    """The op's own range checks, as a RecipeError naming `where`."""
    check = ATTRIBUTE_CHECKS.get(op)
    if check is None:
        return
    try:
        check(attrs)
    except ValueError as err:
        raise RecipeError(f"{where}: {err}") from err


def check_sparse_sites(model: ir.Model, registry: Registry) -> None:
    opset = model.opset_imports.get("", 0)
    for node in model.graph:
        if node.domain != "edgeattn" or node.op_type not in ATTRIBUTE_CHECKS:
            continue
        spec = registry.get(node.op_type)
        attrs = call_facts(node, spec, opset).attributes
        where = f"site {node.metadata_props.get(SITE_TAG, node.name)} ({node.op_type})"
        check_attributes(node.op_type, attrs, where)
        if node.op_type == "BlockSparseAttention":
            _check_against_graph(node, attrs, where)


def _check_against_graph(node: ir.Node, attrs: Mapping[str, Any], where: str) -> None:
    query, key = node.inputs[0], node.inputs[1]
    four_d = query is not None and query.shape is not None and len(query.shape) == 4
    q_len = static_dim(query, 2 if four_d else 1)
    kv_len = static_dim(key, 2 if four_d else 1)
    kv_heads = static_dim(key, 1) if four_d else (int(attrs["kv_num_heads"]) or int(attrs["q_num_heads"]) or None)
    block = int(attrs["block_size"])
    for name, length in (("query", q_len), ("key", kv_len)):
        if length is not None and length % block:
            raise RecipeError(f"{where}: block size {block} does not divide the static {name} length {length}; "
                              f"choose a divisor of {length}")
    if attrs["layout"] == "window" and kv_len is not None and int(attrs["window"]) > kv_len:
        raise RecipeError(f"{where}: window {attrs['window']} is larger than the sequence ({kv_len} keys); "
                          f"choose a window of at most {kv_len}")
    heads = list(attrs["heads"])
    if heads and kv_heads is not None and max(heads) >= kv_heads:
        raise RecipeError(f"{where}: heads {heads} name key/value heads the site lacks (it has {kv_heads})")
