"""The Python API for apps: load an exported folder once, then generate, embed or encode images, from as
many threads as the app likes.

    import edgeattn

    model = edgeattn.load("llava")
    print(model.generate("Describe the picture.", image="photo.png").text)
    for piece in model.generate("Tell me more.", image="photo.png", stream=True):
        print(piece, end="", flush=True)
"""

from __future__ import annotations

from edgeattn.app.model import Model, load
from edgeattn.app.requests import API, CLI, Names
from edgeattn.app.results import Encoded, Generated
from edgeattn.app.stream import TextStream

__all__ = ["API", "CLI", "Encoded", "Generated", "Model", "Names", "TextStream", "load"]
