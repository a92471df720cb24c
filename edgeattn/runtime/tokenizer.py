"""The tokenizer an exported folder ships, loaded from its files only, with one-line refusals."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgeattn.errors import EdgeAttnError
from edgeattn.manifest import Manifest


def load_tokenizer(folder: str | Path, manifest: Manifest, error: type[EdgeAttnError] = EdgeAttnError,
                   missing: str = "re-export a model that ships one") -> Any:
    """The folder's Hugging Face tokenizer (local files only). A folder without one is refused with
    `error`, the message ending in `missing` (what the caller's user can do instead)."""
    if not manifest.tokenizer:
        raise error(f"{folder} has no tokenizer folder; {missing}")
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    path = Path(folder) / manifest.tokenizer
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except MemoryError:
        raise error(f"not enough memory to load the tokenizer in {path}") from None
    except Exception as err:  # noqa: BLE001 - tokenizer files that transformers or tokenizers reject
        raise error(f"cannot load the tokenizer in {path} ({type(err).__name__}); re-export the folder") from None
    finally:
        hf_logging.set_verbosity(verbosity)
