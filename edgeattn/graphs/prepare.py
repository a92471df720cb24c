"""What every model goes through before its attention sites are matched (`inspect` and `rewrite` alike).

1. The standard domain under one name: a model may import the standard opset as "ai.onnx" instead of
   "" (BERT and GPT-2 exports do); the import is renamed to "" so the nodes the rules write (which
   the rewriter imports under "") and the function bodies read the model's real opset.
2. Shapes and types inferred where they are missing (`shapes.ensure_shapes`).
3. `CastLike(x, t)` whose `t` is an attention intermediate (Phi-2's export casts its mask fill like the
   scores) becomes `Cast(x, to=type of t)`: the same result, and the scores no longer have a reader
   outside the site, so the site can be rewritten.

Each step changes the model only where its meaning stays the same.
"""

from __future__ import annotations

import onnx_ir as ir

from edgeattn.graphs.shapes import ensure_shapes
from edgeattn.ops.spec import DOMAIN, STANDARD_DOMAINS

_ALIAS = STANDARD_DOMAINS[1]  # "ai.onnx"
# The ops between the Q·Kᵀ product and the Softmax, and the Softmax: a CastLike reading one of their
# outputs as its target type only needs the type.
_SCORE_OPS = {"MatMul", "Einsum", "Mul", "Div", "Add", "Sub", "Where", "Cast", "Softmax", "Tanh", "Reshape"}


def prepare(model: ir.Model) -> None:
    """Bring `model` to the form the rules match (in place, meaning unchanged)."""
    unify_standard_domain(model)
    ensure_shapes(model)
    cast_like_to_cast(model)


def unify_standard_domain(model: ir.Model) -> bool:
    """Import the standard opset as "" (not "ai.onnx") in the model and its functions; returns whether
    anything changed. Node domains are already "" (onnx-ir reads "ai.onnx" as "")."""
    changed = False
    tables = [model.opset_imports] + [f.opset_imports for f in model.functions.values()]
    for table in tables:
        if _ALIAS in table:
            version = table.pop(_ALIAS)
            table.setdefault("", version)
            changed = True
    return changed


def cast_like_to_cast(model: ir.Model) -> int:
    """`CastLike(x, t)` -> `Cast(x, to=t.dtype)` where `t` is produced by a score-chain op and its type is
    known. Returns the number of nodes replaced."""
    replaced = 0
    for graph in model.graphs():
        for node in list(graph):
            if node.domain != "" or node.op_type != "CastLike" or len(node.inputs) != 2:
                continue
            source, target = node.inputs
            producer = target.producer() if target is not None else None
            if source is None or target is None or target.dtype is None or producer is None:
                continue
            if producer.domain == DOMAIN or producer.op_type not in _SCORE_OPS:
                continue
            cast = ir.node("Cast", [source], attributes={"to": int(target.dtype)},
                           name=f"{node.name or node.outputs[0].name}/cast", metadata_props=dict(node.metadata_props))
            old, new = node.outputs[0], cast.outputs[0]
            name, old.name = old.name, None
            new.name, new.dtype, new.shape = name, old.dtype or target.dtype, old.shape
            graph.insert_before(node, [cast])
            ir.convenience.replace_all_uses_with(old, new)
            for position, output in enumerate(graph.outputs):
                if output is old:
                    graph.outputs[position] = new
            old.name = None
            graph.remove(node, safe=True)
            replaced += 1
    return replaced
