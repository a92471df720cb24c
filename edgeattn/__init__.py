"""edgeattn: an export compiler for efficient attention at the edge."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Sequence

from edgeattn.version import __version__

if TYPE_CHECKING:
    from edgeattn.app import Model


def load(folder: str | os.PathLike, threads: int | None = None, providers: Sequence[str] | None = None) -> Model:
    """The model in an exported folder (an `edgeattn.app.Model`), its onnxruntime sessions made once, for
    `generate`, `embed` or `image_features` from any thread. The app layer is imported on the first call,
    so that ``import edgeattn`` stays light."""
    from edgeattn.app import load as load_folder

    return load_folder(folder, threads=threads, providers=providers)


__all__ = ["__version__", "load"]
