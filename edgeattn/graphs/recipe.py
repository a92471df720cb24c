"""Recipes: which op (and parameters) each attention site gets. A TOML file:

    version = 1                  # optional
    default_op = "Attention"     # op for sites no entry selects; "keep" leaves them as they are

    [[site]]                     # entries are applied in order; a later entry overrides an earlier one
    component = "decoder"        # optional: only in this component (decoder, encoder, vision, ...)
    layers = "0-11"              # optional: "3", "0-11", "0,2,8-11" or [0, 2, 3]
    name = "*self_attn*"         # optional: glob on the site name
    op = "Attention"             # a registered op of kind "attention", or "keep"
    # other keys are the op's parameters (`edgeattn ops` lists them), e.g. scale_factor = 4.0
    inputs = { scale_factor = "skip_scale" }   # tunable parameters read from a graph input instead

Errors are RecipeError sentences: unknown keys, malformed or reversed layer ranges, layers beyond the
model, parameters an op does not take, and entries that select no site.
"""

from __future__ import annotations

import fnmatch
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from edgeattn.errors import RecipeError
from edgeattn.paths import read_text
from edgeattn.ranges import MAX_LAYERS, check_indices, parse_index_ranges
from edgeattn.graphs.report import Site
from edgeattn.ops.registry import Registry, default_registry

KEEP = "keep"
SELECTOR_KEYS = ("component", "layers", "name")
ENTRY_KEYS = (*SELECTOR_KEYS, "op", "inputs")
TOP_KEYS = ("version", "default_op", "site")
MAX_RECIPE_BYTES = 1 << 20
_INPUT_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:/\-]*$")


@dataclass(frozen=True)
class SiteEntry:
    """One [[site]] entry: a selection, and the op and parameters the selected sites get."""

    index: int  # 1-based position in the file, for messages
    op: str
    component: str | None = None
    layers: tuple[int, ...] | None = None
    layers_text: str | None = None
    name: str | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    inputs: Mapping[str, str] = field(default_factory=dict)

    def selects(self, site: Site) -> bool:
        if self.layers is not None and site.layer not in self.layers:
            return False
        return self.name is None or fnmatch.fnmatchcase(site.name, self.name)

    def applies_to(self, component: str | None) -> bool:
        return self.component is None or (component is not None and fnmatch.fnmatchcase(component, self.component))


@dataclass(frozen=True)
class Assignment:
    op: str  # an op name, or "keep"
    params: Mapping[str, Any] = field(default_factory=dict)
    inputs: Mapping[str, str] = field(default_factory=dict)
    entry: int | None = None  # the entry that chose it (None: the default)


@dataclass(frozen=True)
class Recipe:
    entries: tuple[SiteEntry, ...] = ()
    default_op: str = "Attention"
    source: str = "<recipe>"

    @staticmethod
    def load(path: str | os.PathLike, registry: Registry | None = None) -> Recipe:
        path = Path(path)
        text = read_text(path, MAX_RECIPE_BYTES, "recipe (TOML)", RecipeError)
        try:
            data = tomllib.loads(text)
        except RecursionError:
            raise RecipeError(f"recipe {path} nests too deeply to be a recipe") from None
        except tomllib.TOMLDecodeError as err:
            raise RecipeError(f"recipe {path} is not valid TOML ({err}); fix the syntax at that line") from err
        return Recipe.parse(data, registry, source=str(path))

    @staticmethod
    def parse(data: Mapping[str, Any], registry: Registry | None = None, source: str = "<recipe>") -> Recipe:
        registry = registry or default_registry()
        _check_keys(data, TOP_KEYS, f"the top level of {source}", "")
        version = data.get("version", 1)
        if version != 1:
            raise RecipeError(f"recipe {source} has version {version!r}; this edgeattn reads version 1")
        default_op = _op_name(data.get("default_op", "Attention"), registry, f"default_op of {source}")
        raw_entries = data.get("site", [])
        if not isinstance(raw_entries, list) or not all(isinstance(e, dict) for e in raw_entries):
            raise RecipeError(f"'site' in {source} must be an array of tables ([[site]] entries)")
        entries = tuple(_parse_entry(raw, i + 1, registry, source) for i, raw in enumerate(raw_entries))
        return Recipe(entries, default_op, source)

    def assign(self, sites: Sequence[Site], component: str | None) -> dict[str, Assignment]:
        """The op of every site (by name). Raises RecipeError for entries that select nothing."""
        applicable = [e for e in self.entries if e.applies_to(component)]
        if self.entries and component is None and any(e.component is not None for e in self.entries):
            raise RecipeError(
                f"recipe {self.source} selects sites by component, but the model's component is unknown; "
                "pass --component (decoder, encoder, vision ...)"
            )
        default = Assignment(self.default_op)
        chosen = {site.name: default for site in sites}
        for entry in applicable:
            _check_layers_exist(entry, sites, self.source)
            selected = [site for site in sites if entry.selects(site)]
            if not selected:
                raise RecipeError(_nothing_selected(entry, sites, self.source))
            for site in selected:
                chosen[site.name] = Assignment(entry.op, dict(entry.params), dict(entry.inputs), entry.index)
        return chosen


def _check_keys(data: Mapping[str, Any], allowed: Sequence[str], where: str, extra: str) -> None:
    unknown = [key for key in data if key not in allowed]
    if unknown:
        raise RecipeError(f"unknown key '{unknown[0]}' in {where}; known keys: {', '.join(allowed)}{extra}")


def _op_name(value: Any, registry: Registry, where: str) -> str:
    if value == KEEP:
        return KEEP
    if not isinstance(value, str) or value not in registry.names():
        raise RecipeError(f"{where} asks for op {value!r}, which is not registered; ops: {', '.join(registry.names())} or 'keep'")
    if registry.get(value).kind != "attention":
        raise RecipeError(f"{where} asks for op {value}, which does not replace attention sites")
    return value


def _parse_entry(raw: Mapping[str, Any], index: int, registry: Registry, source: str) -> SiteEntry:
    where = f"[[site]] #{index} of {source}"
    op = _op_name(raw.get("op", "Attention"), registry, where)
    spec = registry.get(op) if op != KEEP else None
    settable = [a.name for a in spec.attributes if not a.from_site] if spec is not None else []
    params = {k: v for k, v in raw.items() if k not in ENTRY_KEYS}
    for key in params:
        if key not in settable:
            extra = f" and the parameters of {op}: {', '.join(settable)}" if settable else f" ({op} takes no parameters)"
            if spec is not None and key in {a.name for a in spec.attributes}:
                raise RecipeError(f"{where} sets '{key}', which {op} takes from the site itself; remove it")
            raise RecipeError(f"unknown key '{key}' in {where}; known keys: {', '.join(ENTRY_KEYS)}{extra}")
    coerced = {}
    for key, value in params.items():
        try:
            coerced[key] = spec.attribute(key).coerce(value)  # type: ignore[union-attr]
        except ValueError as err:
            raise RecipeError(f"{where}: {err}") from err
    layers, layers_text = _parse_layers(raw.get("layers"), where)
    for key in ("component", "name"):
        if key in raw and not isinstance(raw[key], str):
            raise RecipeError(f"'{key}' in {where} must be a string, got {raw[key]!r}")
    return SiteEntry(index, op, raw.get("component"), layers, layers_text, raw.get("name"), coerced,
                     _parse_inputs(raw.get("inputs", {}), spec, op, where))


def _parse_layers(value: Any, where: str) -> tuple[tuple[int, ...] | None, str | None]:
    if value is None:
        return None, None
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    try:
        if isinstance(value, list):
            return check_indices(value, limit=MAX_LAYERS, what=f"'layers' in {where}"), ",".join(map(str, value))
        if isinstance(value, str):
            return parse_index_ranges(value, limit=MAX_LAYERS, what=f"'layers' in {where}"), value
    except ValueError as err:
        raise RecipeError(str(err)) from None
    raise RecipeError(f"'layers' in {where} must be a string like \"0-11\" or a list of numbers, got {value!r}")


def _parse_inputs(value: Any, spec: Any, op: str, where: str) -> dict[str, str]:
    if not isinstance(value, dict):
        raise RecipeError(f"'inputs' in {where} must be a table of parameter = \"graph input name\"")
    tunable = [a.name for a in spec.attributes if a.tunable] if spec is not None else []
    for key, name in value.items():
        if key not in tunable:
            have = f"its tunable parameters: {', '.join(tunable)}" if tunable else f"{op} has no tunable parameters"
            raise RecipeError(f"'inputs' in {where} names '{key}', which is not a tunable parameter of {op}; {have}")
        if not isinstance(name, str) or not _INPUT_NAME.match(name):
            raise RecipeError(f"'inputs.{key}' in {where} must be a graph input name, got {name!r}")
    return dict(value)


def _check_layers_exist(entry: SiteEntry, sites: Sequence[Site], source: str) -> None:
    if entry.layers is None:
        return
    known = sorted({s.layer for s in sites if s.layer is not None})
    beyond = [layer for layer in entry.layers if not known or layer > known[-1]]
    if beyond:
        last = f"the last layer is {known[-1]}" if known else "the model has no attention layers"
        raise RecipeError(f"[[site]] #{entry.index} of {source} asks for layers {entry.layers_text}, but {last}; "
                          "fix the range")


def _nothing_selected(entry: SiteEntry, sites: Sequence[Site], source: str) -> str:
    asked = ", ".join(f"{k}={v!r}" for k, v in (("component", entry.component), ("layers", entry.layers_text),
                                                  ("name", entry.name)) if v is not None) or "everything"
    examples = ", ".join(site.name for site in sites[:3]) or "none"
    return (f"[[site]] #{entry.index} of {source} ({asked}) selects no attention site; "
            f"the {len(sites)} sites are named like: {examples}")
