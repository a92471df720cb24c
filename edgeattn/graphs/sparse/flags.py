"""`--sparse METHOD[:key=value,...]` flags as recipe [[site]] entries.

    blasst:scale_factor=4                      SkipSoftmaxAttention (BLASST), λ = scale_factor / Lkv
    block:keep=0.25,block=64                   BlockSparseAttention, blocks picked from pooled Q/K scores
    window:size=1024,sinks=4                   BlockSparseAttention, sliding window + sink tokens
    dense                                      edgeattn.Attention (the exact causal-aware lowering)

Each method is declared by its op (`OpSpec.sparse_flags`: the attributes it fixes, short keys, keys with
a parser such as `heads=0-1` for block and window). Every method also takes `layers=2-29` and
`name=GLOB` (which sites) and any parameter of its op by its op name (`edgeattn ops` lists them). Several flags make several entries; a later one overrides an
earlier one where both select a site, as in a recipe file.
"""

from __future__ import annotations

import re
from typing import Any

from edgeattn.errors import RecipeError
from edgeattn.ranges import MAX_LAYERS, flag_items, flag_value, parse_index_ranges
from edgeattn.ops.registry import Registry, default_registry
from edgeattn.ops.spec import OpSpec, SparseFlag

SELECTORS = ("layers", "name")
_FLAG = re.compile(r"^\s*([a-z_]+)\s*(?::(.*))?$")


def methods(registry: Registry | None = None) -> dict[str, tuple[OpSpec, SparseFlag]]:
    """Every --sparse method, from the ops' declarations (`OpSpec.sparse_flags`), in registry order."""
    found: dict[str, tuple[OpSpec, SparseFlag]] = {}
    for spec in registry or default_registry():
        for flag in spec.sparse_flags:
            found[flag.method] = (spec, flag)
    return found


def parse_sparse_flag(text: str, registry: Registry | None = None) -> dict[str, Any]:
    """One `--sparse` flag as a recipe [[site]] entry (a dict `Recipe.parse` takes).

    >>> parse_sparse_flag("block:keep=0.25,block=64")
    {'op': 'BlockSparseAttention', 'layout': 'select', 'keep': 0.25, 'block_size': 64}
    """
    registry = registry or default_registry()
    known_methods = methods(registry)
    found = _FLAG.match(text)
    if found is None or found.group(1) not in known_methods:
        raise RecipeError(f"--sparse {text!r} names no method; write METHOD[:key=value,...] with METHOD one of "
                          f"{', '.join(known_methods)}, for example block:keep=0.25,block=64")
    method, rest = found.group(1), found.group(2) or ""
    spec, flag = known_methods[method]
    op, fixed, aliases = spec.name, dict(flag.fixed), dict(flag.aliases)
    settable = {a.name for a in spec.attributes if not a.from_site}
    entry: dict[str, Any] = {"op": op, **fixed}
    try:
        items = flag_items(rest, "--sparse", text)
    except ValueError as err:
        raise RecipeError(f"{err}, e.g. {method}:{next(iter(aliases), 'layers')}=...") from None
    for key, raw in items:
        value = flag_value(raw)
        if key in SELECTORS:
            entry[key] = str(raw.strip())
            if key == "layers":  # checked (and bounded) here, so a bad range fails before the model is read
                _layers(entry[key], text)
            continue
        if key in flag.parsers:
            try:
                entry.update(flag.parsers[key](raw.strip()))
            except ValueError as err:
                raise RecipeError(f"--sparse {text!r}: {err}") from None
            continue
        name = aliases.get(key, key)
        if name not in settable or name in fixed:
            known = sorted({*aliases, *(settable - set(fixed)), *SELECTORS, *flag.parsers})
            raise RecipeError(f"--sparse {text!r}: unknown key '{key}' for {method}; known keys: {', '.join(known)}")
        entry[name] = _coerce(spec, name, value, text)
    if spec.check is not None:
        try:
            spec.check(spec.resolve({k: v for k, v in entry.items() if k not in ("op", *SELECTORS)}))
        except ValueError as err:
            raise RecipeError(f"--sparse {text!r}: {err}") from err
    return entry


def sparse_recipe(flags: list[str] | tuple[str, ...], registry: Registry | None = None) -> dict[str, Any]:
    """A recipe (the dict form `rewrite` takes) from `--sparse` flags, in order."""
    return {"site": [parse_sparse_flag(flag, registry) for flag in flags]}


def _coerce(spec: Any, name: str, value: Any, text: str) -> Any:
    try:
        return spec.attribute(name).coerce(value)
    except ValueError as err:
        raise RecipeError(f"--sparse {text!r}: {err}") from err


def _layers(raw: str, text: str) -> None:
    try:
        parse_index_ranges(raw, limit=MAX_LAYERS, what=f"--sparse {text!r}: layers")
    except ValueError as err:
        raise RecipeError(str(err)) from None
