"""Which visual tokens a folder's vision component keeps for one image: one `KeptPanel` per folder.

    panel = kept_tokens("llava_fastervlm16", load_image("cat.png"))
    panel.kept        # ascending patch positions on the grid, row by row (the folder's kept_indices)

What `kept_indices` index (`edgeattn.graphs.pruning`): the pruning pass scores the N *candidate* tokens of
the vision output, the tokens after its non-candidate prefix (a [CLS] token, when the encoder has one and
keeps it in its output), and `kept_indices` [B, k] holds ascending candidate positions, 0 = the first
candidate. The candidates are the patches in raster order, so position i is the patch at row i // side and
column i % side of the side x side grid, side = sqrt(N) (N is the pruning record's tokens before pruning).

A folder without pruning (no `kept_indices` output) gives a panel with every patch kept: the dense
baseline beside pruned folders in a comparison (`show_kept` refuses when no folder prunes).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edgeattn.errors import EdgeAttnError, GraphError
from edgeattn.graphs.pruning.report import PRUNING_METADATA
from edgeattn.graphs.session import session_from_onnx
from edgeattn.manifest import Manifest, read_manifest
from edgeattn.runtime.images import pixel_values
from edgeattn.runtime.precision import check_runnable_dtype, check_session_type, float_array_type
from edgeattn.show.prompt import prompt_ids, token_embeddings

KEPT_OUTPUT, TEXT_INPUT, BUDGET_INPUT, VALID_INPUT = "kept_indices", "text_embeds", "num_tokens", "patch_valid"
# A grid side beyond this is no vision encoder's (a 4096-patch side is 16.7 million tokens); refusing it
# bounds the picture.
MAX_GRID_SIDE = 256


@dataclass(frozen=True)
class KeptPanel:
    """One folder's answer for one image."""

    folder: str  # as given
    method: str | None  # the pruning method, None for a folder that does not prune
    tokens: int  # candidate tokens before pruning: the grid's cells
    side: int  # the grid is side x side patches
    kept: tuple[int, ...]  # ascending candidate positions (raster order on the grid)
    image: np.ndarray  # uint8 [S, S, 3]: the square input as the model sees it, before normalisation
    text_guided: bool = False  # the selection read the prompt
    dynamic: bool = False  # the budget was given at run time (--image-tokens)

    @property
    def k(self) -> int:
        return len(self.kept)

    def to_json(self) -> dict[str, Any]:
        return {"folder": self.folder, "method": self.method, "k": self.k, "tokens": self.tokens,
                "grid": [self.side, self.side], "text_guided": self.text_guided, "dynamic": self.dynamic,
                "kept_indices": list(self.kept)}


def show_kept(folders: Sequence[str | Path], image: Any, prompt: str | None = None, image_tokens: int | None = None,
              threads: int | None = None) -> list[KeptPanel]:
    """One panel per folder, all on the same image (a Pillow image or an RGB array). Refuses when no folder
    prunes, and `image_tokens` when no folder takes a run-time budget."""
    panels = [kept_tokens(folder, image, prompt, image_tokens, threads) for folder in folders]
    if not any(p.method for p in panels):
        names = ", ".join(str(f) for f in folders)
        raise EdgeAttnError(f"no folder given prunes visual tokens (no kept_indices output in {names}); show one "
                            "exported with --prune METHOD:K")
    if image_tokens is not None and not any(p.dynamic for p in panels):
        raise EdgeAttnError("--image-tokens sets a run-time budget, but no folder given takes one; export with "
                            "--prune METHOD:K,dynamic=1")
    return panels


def kept_tokens(folder: str | Path, image: Any, prompt: str | None = None, image_tokens: int | None = None,
                threads: int | None = None) -> KeptPanel:
    """Run `folder`'s vision component on `image` (as `edgeattn run` prepares it) and read which patches it
    keeps. `prompt` feeds text-guided methods; `image_tokens` a run-time budget (dynamic=1 exports)."""
    path = Path(folder)
    manifest = read_manifest(path)
    if "vision" not in manifest.components or manifest.vision is None:
        raise EdgeAttnError(f"{folder} holds a {manifest.family} export without a vision component; --image "
                            "needs a VLM or vision-encoder export")
    check_runnable_dtype(manifest, path)
    session = session_from_onnx(path / manifest.file_of("vision"), threads=threads)
    check_session_type(session, "pixel_values", manifest, manifest.file_of("vision"))
    pixels = pixel_values(image, manifest.vision.preprocess())
    seen = model_view(pixels, manifest)
    outputs = [o.name for o in session.get_outputs()]
    if KEPT_OUTPUT not in outputs:
        side = _dense_side(session, folder)
        return KeptPanel(str(folder), None, side * side, side, tuple(range(side * side)), seen)
    record = pruning_record(session, manifest)
    tokens = _candidate_count(record, manifest, folder)
    side = math.isqrt(tokens)
    feeds, guided, dynamic = _feeds(session, path, manifest, pixels, prompt, image_tokens, tokens, threads)
    kept = session.run([KEPT_OUTPUT], feeds)[0]
    return KeptPanel(str(folder), str(record.get("method", "?")), tokens, side, _checked(kept, tokens, folder), seen,
                     guided, dynamic)


def model_view(pixels: np.ndarray, manifest: Manifest) -> np.ndarray:
    """The square image the model sees (resized, before normalisation) as uint8 [S, S, 3]: `pixel_values`
    undone, so the picture is exactly the model's input."""
    assert manifest.vision is not None
    mean = np.asarray(manifest.vision.mean, np.float32)
    std = np.asarray(manifest.vision.std, np.float32)
    rgb = pixels[0].astype(np.float32).transpose(1, 2, 0) * std + mean
    return np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)


def pruning_record(session: Any, manifest: Manifest) -> dict[str, Any]:
    """What the pruning pass recorded: the graph's own report (model metadata, written by the pass; present
    also where vision.onnx was pruned by `prune_file` after export), else the manifest's `pruning` record."""
    text = session.get_modelmeta().custom_metadata_map.get(PRUNING_METADATA)
    if text:
        try:
            report = json.loads(text)
        except (json.JSONDecodeError, RecursionError):
            report = None
        if isinstance(report, dict):
            return {**report, "tokens_before": report.get("tokens")}
    return dict(manifest.pruning or {})


def _candidate_count(record: dict[str, Any], manifest: Manifest, folder: str | Path) -> int:
    """N, the candidate tokens before pruning: a square number whose side is the patch grid's."""
    tokens = record.get("tokens_before")
    if not isinstance(tokens, int) or isinstance(tokens, bool) or tokens < 1:
        raise EdgeAttnError(f"{folder}'s vision component keeps tokens but records no token count before pruning "
                            "(no pruning record in the graph or the manifest); re-export it with --prune")
    side = math.isqrt(tokens)
    if side * side != tokens or side > MAX_GRID_SIDE:
        raise EdgeAttnError(f"{folder} pruned {tokens} candidate tokens, which do not form a square patch grid "
                            f"(of side at most {MAX_GRID_SIDE}); show draws square patch grids only")
    assert manifest.vision is not None
    before = manifest.vision.extra.get("num_image_tokens_unpruned")
    if isinstance(before, int) and before not in (tokens, tokens + 1):
        raise EdgeAttnError(f"{folder}'s manifest says the encoder gives {before} tokens but its pruning record "
                            f"{tokens} candidates; re-export the folder")
    return tokens


def _dense_side(session: Any, folder: str | Path) -> int:
    """The grid of an unpruned vision output: N tokens that form a square, or a [CLS] and a square."""
    names = [o.name for o in session.get_outputs()]
    out = session.get_outputs()[names.index("image_features") if "image_features" in names else 0]
    count = out.shape[1] if len(out.shape) == 3 else None
    if isinstance(count, int):
        for prefix in (0, 1):
            side = math.isqrt(max(count - prefix, 0))
            if side and side * side == count - prefix and side <= MAX_GRID_SIDE:
                return side
    raise EdgeAttnError(f"{folder}'s vision output {out.name} has shape {out.shape}, not a square patch grid (with "
                        "or without a [CLS] token); show draws square patch grids only")


def _feeds(session: Any, folder: Path, manifest: Manifest, pixels: np.ndarray, prompt: str | None,
           image_tokens: int | None, tokens: int, threads: int | None) -> tuple[dict[str, np.ndarray], bool, bool]:
    """The vision inputs (as `DecoderRunner.image_features` makes them), and whether the prompt and a run-time
    budget were fed."""
    inputs = {i.name: i for i in (*session.get_inputs(), *session.get_overridable_initializers())}
    feeds: dict[str, np.ndarray] = {"pixel_values": pixels.astype(float_array_type(manifest), copy=False)}
    guided = TEXT_INPUT in inputs
    if guided:
        if prompt is None:
            raise EdgeAttnError(f"{folder} prunes by the prompt (its vision component reads text_embeds); give "
                                "--prompt TEXT")
        feeds[TEXT_INPUT] = token_embeddings(folder, manifest, prompt_ids(folder, manifest, prompt), threads)
    dynamic = image_tokens is not None and BUDGET_INPUT in inputs
    if dynamic:
        assert image_tokens is not None
        if not 1 <= image_tokens <= tokens:
            raise EdgeAttnError(f"--image-tokens must be from 1 to {tokens} for {folder} (got {image_tokens})")
        feeds[BUDGET_INPUT] = np.array(image_tokens, np.int64)
    if VALID_INPUT in inputs:  # images are resized to the square input, never letterboxed: no padding patches
        feeds[VALID_INPUT] = np.ones((pixels.shape[0], tokens), bool)
    return feeds, guided, dynamic


def _checked(kept: np.ndarray, tokens: int, folder: str | Path) -> tuple[int, ...]:
    """Row 0 of kept_indices [B, k] as ints; refuses positions that are not unique, ascending candidates."""
    kept = np.asarray(kept)
    row = kept[0] if kept.ndim == 2 and kept.shape[0] >= 1 else np.zeros(0, np.int64)
    if row.size == 0 or row.min() < 0 or row.max() >= tokens or (row.size > 1 and (np.diff(row) <= 0).any()):
        raise GraphError(f"{folder}'s kept_indices {row[:8].tolist()}... are not ascending positions below {tokens}; "
                         "re-export the folder")
    return tuple(int(i) for i in row)
