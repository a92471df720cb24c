"""`--sparse METHOD[:key=value,...]` flags as recipe [[site]] entries.

    blasst:scale_factor=4                      SkipSoftmaxAttention (BLASST), λ = scale_factor / Lkv
    block:keep=0.25,block=64                   BlockSparseAttention, blocks picked from pooled Q/K scores
    window:size=1024,sinks=4                   BlockSparseAttention, sliding window + sink tokens
    dense                                      edgeattn.Attention (the exact causal-aware lowering)

Every method also takes `layers=2-29` and `name=GLOB` (which sites), `heads=0-1` (block and window:
the key/value heads the layout applies to; the others stay dense) and any parameter of its op by its
op name (`edgeattn ops` lists them). Several flags make several entries; a later one overrides an
earlier one where both select a site, as in a recipe file.
"""

from __future__ import annotations

import re
from typing import Any

from edgeattn.errors import RecipeError
from edgeattn.graphs.ranges import MAX_HEADS, MAX_LAYERS, parse_index_ranges
from edgeattn.plugins.registry import Registry, default_registry

# method -> (op, fixed parameters, {flag key: op attribute})
METHODS: dict[str, tuple[str, dict[str, Any], dict[str, str]]] = {
    "blasst": ("SkipSoftmaxAttention", {}, {"sf": "scale_factor", "splits": "num_splits"}),
    "block": ("BlockSparseAttention", {"layout": "select"}, {
        "block": "block_size", "k": "keep_blocks", "p": "cum_prob", "pool": "key_pool", "qpool": "query_pool",
        "local": "local_blocks", "sink": "sink_blocks", "dense_rows": "dense_last_rows",
    }),
    "window": ("BlockSparseAttention", {"layout": "window"}, {"size": "window", "block": "block_size"}),
    "dense": ("Attention", {}, {}),
}
SELECTORS = ("layers", "name")
_DECODE = {"dense": 1, "sparse": 0}
_FLAG = re.compile(r"^\s*([a-z_]+)\s*(?::(.*))?$")


def parse_sparse_flag(text: str, registry: Registry | None = None) -> dict[str, Any]:
    """One `--sparse` flag as a recipe [[site]] entry (a dict `Recipe.parse` takes).

    >>> parse_sparse_flag("block:keep=0.25,block=64")
    {'op': 'BlockSparseAttention', 'layout': 'select', 'keep': 0.25, 'block_size': 64}
    """
    registry = registry or default_registry()
    found = _FLAG.match(text)
    if found is None or found.group(1) not in METHODS:
        raise RecipeError(f"--sparse {text!r} names no method; write METHOD[:key=value,...] with METHOD one of "
                          f"{', '.join(METHODS)}, for example block:keep=0.25,block=64")
    method, rest = found.group(1), found.group(2) or ""
    op, fixed, aliases = METHODS[method]
    spec = registry.get(op)
    settable = {a.name for a in spec.attributes if not a.from_site}
    entry: dict[str, Any] = {"op": op, **fixed}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not raw.strip():
            raise RecipeError(f"--sparse {text!r}: '{item}' is not key=value; write e.g. {method}:"
                              f"{next(iter(aliases), 'layers')}=...")
        value = _value(raw.strip())
        if key in SELECTORS:
            entry[key] = str(raw.strip())
            if key == "layers":  # checked (and bounded) here, so a bad range fails before the model is read
                _layers(entry[key], text)
            continue
        if key == "heads":
            entry["heads"] = _heads(raw.strip(), text)
            continue
        if key == "decode" and op == "BlockSparseAttention":
            if raw.strip() not in _DECODE:
                raise RecipeError(f"--sparse {text!r}: decode takes dense or sparse, got {raw.strip()!r}")
            entry["dense_decode"] = _DECODE[raw.strip()]
            continue
        name = aliases.get(key, key)
        if name not in settable or name in fixed:
            extra = ["heads", "decode"] if op == "BlockSparseAttention" else []
            known = sorted({*aliases, *(settable - set(fixed)), *SELECTORS, *extra})
            raise RecipeError(f"--sparse {text!r}: unknown key '{key}' for {method}; known keys: {', '.join(known)}")
        entry[name] = _coerce(spec, name, value, text)
    from edgeattn.graphs.sparse.checks import check_attributes

    params = {k: v for k, v in entry.items() if k not in ("op", *SELECTORS)}
    check_attributes(op, spec.resolve(params), f"--sparse {text!r}")
    return entry


def sparse_recipe(flags: list[str] | tuple[str, ...], registry: Registry | None = None) -> dict[str, Any]:
    """A recipe (the dict form `rewrite` takes) from `--sparse` flags, in order."""
    return {"site": [parse_sparse_flag(flag, registry) for flag in flags]}


def _value(raw: str) -> Any:
    for kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            pass
    return raw


def _coerce(spec: Any, name: str, value: Any, text: str) -> Any:
    try:
        return spec.attribute(name).coerce(value)
    except ValueError as err:
        raise RecipeError(f"--sparse {text!r}: {err}") from err


def _heads(raw: str, text: str) -> list[int]:
    try:
        return list(parse_index_ranges(raw, limit=MAX_HEADS, what=f"--sparse {text!r}: heads"))
    except ValueError as err:
        raise RecipeError(f"{err} (a range like 0-3 or 0-1+5)") from None


def _layers(raw: str, text: str) -> None:
    try:
        parse_index_ranges(raw, limit=MAX_LAYERS, what=f"--sparse {text!r}: layers")
    except ValueError as err:
        raise RecipeError(str(err)) from None
