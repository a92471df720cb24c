"""The registered edgeattn ops. Adding an op = its folder under edgeattn/ops/ and its package name in
OP_PACKAGES (docs/architecture.md has the checklist).

Each package `edgeattn.ops.<name>` exposes `SPEC: OpSpec`. The registry is an immutable value
built from that ordered tuple (`default_registry()`); tests and tools may build their own with extra
ops (`Registry.of(...)`) and pass it to the graph passes.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterator

from edgeattn.ops.spec import DOMAIN, OpSpec

# Op packages, in the order `edgeattn ops` lists them.
OP_PACKAGES: tuple[str, ...] = (
    "attention", "token_score", "token_select",
    "skip_softmax_attention", "block_select", "block_sparse_attention",
)

# The attribute kinds a TensorRT plugin field can hold (PluginField: ints, floats, chars and 1-D arrays).
TRT_ATTRIBUTE_KINDS = frozenset({"int", "float", "string", "ints", "floats"})


@dataclass(frozen=True)
class Registry:
    ops: tuple[OpSpec, ...]

    @staticmethod
    def of(*ops: OpSpec) -> Registry:
        names = [op.name for op in ops]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"ops registered twice: {', '.join(duplicates)}")
        for op in ops:
            _validate(op)
        return Registry(tuple(ops))

    def __iter__(self) -> Iterator[OpSpec]:
        return iter(self.ops)

    def names(self) -> list[str]:
        return [op.name for op in self.ops]

    def get(self, name: str) -> OpSpec:
        for op in self.ops:
            if op.name == name:
                return op
        raise KeyError(name)

    def find(self, domain: str, op_type: str) -> OpSpec | None:
        for op in self.ops:
            if op.domain == domain and op.name == op_type:
                return op
        return None

    def with_op(self, op: OpSpec) -> Registry:
        return Registry.of(*self.ops, op)


def _validate(op: OpSpec) -> None:
    """An op must be expressible as a TensorRT plugin node: checked once, when it is registered."""
    if op.domain != DOMAIN:
        raise ValueError(f"op {op.name} is in domain '{op.domain}', not '{DOMAIN}'")
    for attr in op.attributes:
        if attr.kind not in TRT_ATTRIBUTE_KINDS:
            raise ValueError(f"attribute {op.name}.{attr.name} of kind {attr.kind} has no TensorRT plugin field")
        if attr.choices is None:
            attr.coerce(attr.default)
        elif attr.default not in attr.choices:
            raise ValueError(f"default of {op.name}.{attr.name} is not one of its choices")
    names = {a.name for a in op.attributes}
    for io in op.inputs:
        if io.tunable_for is not None and (io.tunable_for not in names or not op.attribute(io.tunable_for).tunable):
            raise ValueError(f"input {op.name}.{io.name} carries '{io.tunable_for}', which is not a tunable attribute")
    for attr in op.attributes:
        if attr.tunable and not any(io.tunable_for == attr.name for io in op.inputs):
            raise ValueError(f"tunable attribute {op.name}.{attr.name} has no input to come from")


def from_packages(packages: tuple[str, ...]) -> Registry:
    """The registry of op packages: a bare name is a package under edgeattn.ops, a dotted name any
    importable package (an op kept outside edgeattn); each exposes ``SPEC``."""
    modules = [package if "." in package else f"edgeattn.ops.{package}" for package in packages]
    return Registry.of(*(importlib.import_module(module).SPEC for module in modules))


@lru_cache(maxsize=1)
def default_registry() -> Registry:
    return from_packages(OP_PACKAGES)


def get_op(name: str) -> OpSpec:
    return default_registry().get(name)
