"""Which transformer layer a site belongs to, read from node names and exporter scope metadata."""

from __future__ import annotations

import dataclasses
import re
from typing import Sequence

from edgeattn.graphs.report import Site

# `layers.3`, `layer.3`, `h.3` (GPT-2), `blocks.3`, `block_3`, `layers_3` ... as the last such piece of a name.
_LAYER = re.compile(r"(?:^|[^a-z0-9])(?:layers?|h|blocks?|encoderlayer|decoderlayer)[._/\-](\d+)(?![0-9])", re.IGNORECASE)


def layer_from_texts(texts: Sequence[str]) -> int | None:
    """The layer index written in the first text that has one (the innermost occurrence in it)."""
    for text in texts:
        found = _LAYER.findall(text or "")
        if found:
            return int(found[-1])
    return None


def assign_layers(sites: Sequence[tuple[Site, Sequence[str]]]) -> list[Site]:
    """Layers from names when every site has one; otherwise the order of the sites in the graph.

    Sites already rewritten carry their layer in metadata and keep it."""
    named = [site.layer if site.layer is not None else layer_from_texts(texts) for site, texts in sites]
    if all(layer is not None for layer in named):
        return [dataclasses.replace(site, layer=layer) for (site, _), layer in zip(sites, named)]
    return [dataclasses.replace(site, layer=index) for index, (site, _) in enumerate(sites)]
