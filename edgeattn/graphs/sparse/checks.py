"""Parameter checks for edgeattn sites, as RecipeError sentences, before anything is built.

What an op's attributes allow (keep in (0, 1], sinks >= 0 ...) is the op's own `check`; what the graph
knows statically (a window longer than a static sequence, a block size that does not divide a static
length, heads the site does not have) is the op's `check_site`. Both are hooks on the op's declaration.
"""

from __future__ import annotations

import onnx_ir as ir

from edgeattn.errors import RecipeError
from edgeattn.graphs.detect import SITE_TAG
from edgeattn.graphs.attach import call_facts
from edgeattn.ops.registry import Registry
from edgeattn.ops.spec import DOMAIN, standard_opset


def check_sparse_sites(model: ir.Model, registry: Registry) -> None:
    """Every edgeattn node of the main graph against its op's checks."""
    opset = standard_opset(model.opset_imports, 0)
    for node in model.graph:
        spec = registry.find(node.domain, node.op_type) if node.domain == DOMAIN else None
        if spec is None or (spec.check is None and spec.check_site is None):
            continue
        attrs = call_facts(node, spec, opset).attributes
        where = f"site {node.metadata_props.get(SITE_TAG, node.name)} ({node.op_type})"
        try:
            if spec.check is not None:
                spec.check(attrs)
            if spec.check_site is not None:
                spec.check_site(node, attrs)
        except ValueError as err:
            raise RecipeError(f"{where}: {err}") from err
