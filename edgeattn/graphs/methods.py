"""One registry of the methods a user names on the command line, and one way to read their values.

    --prune METHOD:K[,name=value...]     visual-token pruning (edgeattn.graphs.pruning.methods)
    --sparse METHOD[:name=value,...]     sparse attention (declared by the ops: `OpSpec.sparse_flags`)

`methods()` lists both kinds with every parameter's kind, default, choices and range (what `--help` and
the docs show). Both flag parsers read values with the same helpers (`edgeattn.ranges`: `flag_items`,
`flag_value`, `check_number`), so a value is read and range-checked the same way whichever flag carries
it: finite numbers only, within the declared bounds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edgeattn.graphs.pruning.methods import COMMON, METHODS
from edgeattn.ops.registry import Registry, default_registry


@dataclass(frozen=True)
class Parameter:
    name: str
    kind: str  # "int", "float", "string", "ints", "floats", or "any" (several kinds, see choices)
    default: Any
    doc: str = ""
    choices: tuple[Any, ...] | None = None
    bounds: tuple[float, float] | None = None


@dataclass(frozen=True)
class MethodInfo:
    flag: str  # "--prune" or "--sparse"
    name: str
    doc: str
    parameters: tuple[Parameter, ...]
    op: str | None = None  # the op a --sparse method chooses

    def describe(self) -> dict[str, Any]:
        return {"flag": self.flag, "name": self.name, "doc": self.doc, "op": self.op,
                "parameters": [vars(p) | {"choices": list(p.choices) if p.choices else None} for p in self.parameters]}


def methods(registry: Registry | None = None) -> list[MethodInfo]:
    """Every --prune and --sparse method with its parameters, in the order the CLI lists them."""
    found = []
    for method in METHODS.values():
        params = {**COMMON, **method.params}
        found.append(MethodInfo("--prune", method.name, method.doc, tuple(
            Parameter(name, _kind(p.default), p.default, p.doc, p.choices, p.bounds) for name, p in params.items())))
    for spec in registry or default_registry():
        for flag in spec.sparse_flags:
            attrs = [a for a in spec.attributes if not a.from_site and a.name not in flag.fixed]
            found.append(MethodInfo("--sparse", flag.method, flag.doc, tuple(
                Parameter(a.name, a.kind, a.default, a.doc, a.choices) for a in attrs), spec.name))
    return found


def _kind(default: Any) -> str:
    return {bool: "int", int: "int", float: "float", str: "string"}.get(type(default), "any")


__all__ = ["MethodInfo", "Parameter", "methods"]
