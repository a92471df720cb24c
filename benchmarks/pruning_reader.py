"""Pruning quality where a model reads individual tokens: which digit is in the asked cell of a canvas?

Task. A canvas is a --grid N x N tiling of real 8x8 digits from scikit-learn (every cell a different
digit), upscaled as one image to DINOv2's 224x224 (16 x 16 = 256 patches of 14 px). The question names a
cell; the answer is its digit. The 1797 source digits are split (by --seed) into a training and a test
pool before any canvas is made, so no test digit image was ever seen in training.

Encoder and pruning. `zoo:dinov2-s14` is exported once (the validated vision.onnx a user gets from
`edgeattn export`); every method and budget is the same file pruned by the graph pass (`prune_file`, the
`export --prune` step), and the kept tokens and their positions are that graph's outputs
`image_features` and `kept_indices`. The ViT is the same in all 8 x 3 pruned graphs, so it is run once per
canvas: the pruned graph is split at the values its pruning nodes read (the tapped layer's Q and K,
the output tokens, zeroth-order's LayerNorm input): the encoder part runs once, the pruning part of each
graph (its own TokenScore/TokenSelect nodes and bodies, exactly as saved) runs on those values. On the
first test canvases every full pruned graph is run too and its outputs compared with the split ones
(`deployed_check` in the JSON: equal indices, tokens equal to 1e-5).

Reader. A small transformer (2 pre-norm layers, width 64, 4 heads): the image tokens (DINOv2's 384-d
output patch tokens through a fixed PCA to 64 dimensions fitted on the training tokens, a LayerNorm and a
linear projector, plus a learned embedding of each token's patch position), then one question token (a
learned embedding per cell) whose output is classified into 10 digits. The question token reads the image
tokens and itself. --reader chooses how the image tokens are read, the two layouts of VLMs:
`cross` (default; the layout of cross-attention VLMs such as Flamingo and Llama 3.2-Vision: image tokens do
not read each other, each is updated from itself only) and `self` (the layout of LLaVA-style VLMs, image
tokens in the language model's sequence: they read each other). It is trained once on all 256 tokens
and evaluated with the tokens each pruned graph keeps, at their original positions, as a VLM trained
without pruning is deployed with it. In the self layout pruning also changes what every kept token
carries (it read the dropped ones in training), so the score mixes which tokens a method keeps with how
the reader copes with a context it never saw; the cross layout scores the kept tokens alone. The README
shows both. (Several question tokens in one sequence see nothing of each other, so a canvas answers all
its questions in one pass, exactly as if asked one at a time.)

Methods, at k = 256/4, 256/9, 256/16 tokens (64, 28, 16): fastervlm, mean-received, holov, flashvlm,
zeroth-order (M = DINOv2's final LayerNorm, x its input), random (seeded by --seed), uniform, and
fastervlm+debias (recency weights fitted on the training canvases' [CLS] scores, from the fastervlm
graph's own TokenScore node). flashvlm's guidance: a question about cell q is mapped into the vision
space as one vector, g_q = (mean output patch token inside cell q) - (mean output patch token), both
over the training canvases: every digit appears in every cell there, so the digits average out and
what is left is the direction that marks cell q's tokens (DINOv2's tokens keep where they are). It is fed
as `text_embeds` [B, 1, 384]; a trained VLM's text embedding would have to learn this alignment.

Attention layer. The methods whose score reads attention (fastervlm, mean-received, holov, flashvlm's
[CLS] part, fastervlm+debias, whose recency weights are then fitted on that layer's scores) tap their
layer --layer N (`layer=N` in their recipe; a negative N counts from the last; default -2, the
penultimate layer, where FasterVLM reads LLaVA's encoder; -1 is the last, the methods' own default).
zeroth-order, random and uniform read no attention and are built as without --layer. The JSON's
config says which layer each graph tapped (`attention_layer`, from the pruning pass's report).

Reported: accuracy and its standard error per method and kept fraction (the canvases are the units:
the standard error is that of the per-canvas mean over its questions), the difference to random with
the standard error of the paired difference, the all-token ceiling, and diagnostics: the share of kept
tokens inside the asked cell (all tokens: 1/N^2) and the kept tokens' norm relative to the canvas's
mean token norm (DINOv2's high-norm artefact tokens are > 1.5); and the accuracy conditioned on how
many kept tokens lie inside the asked cell (questions binned 0, 1-3, 4-6, 7-10, 11+; `by_tokens_in_cell`,
and a table at 1/9): within a bin, methods differ by which tokens they keep; across bins, by how
unevenly they spread the budget over the cells (random's rows show what the reader makes of a count).

Time on the 2-core machine of the README (2026-12-07, `seconds` in the JSON): export and 24 pruned graphs
1 min, 1600 training canvases through the encoder 3-5 min, the reader 8 epochs 1.5-3 min, 400 test
canvases 4-10 min: 12-20 min a run;
the training canvases' tokens and the readers are cached under --cache (keyed by model, grid and seed:
they do not depend on the layer, so a run with another --layer reuses them), the training canvases'
[CLS] scores (the debias fit) by the layer tapped too: a new layer passes the training canvases through
the encoder once more for them.

    python -m benchmarks.pruning_reader [--grid 2|3] [--seed 0] [--train 1600] [--test 400] [--layer -2]
                                        [--reader cross|self] [--output FILE]
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeattn.errors import PruningError

from benchmarks.common import RESULTS, digit_pixels, machine, run_benchmark, write_json_at, write_text_at

MODEL = "zoo:dinov2-s14"
DIGIT = 8  # source digit size (pixels)
FRACTIONS = {"1/4": 4, "1/9": 9, "1/16": 16}
METHODS = ("fastervlm", "mean-received", "holov", "flashvlm", "zeroth-order", "random", "uniform",
           "fastervlm+debias")
TEST_SHARE = 0.3
CHECK_CANVASES = 4  # test canvases on which every full pruned graph is run too
BATCH = 16
TAIL_BATCH = 2  # canvases per run of a pruning part: zeroth-order perturbs every token 128 times ([2, 256, 128, 384])
DEFAULT_LAYER = -2
"""The [CLS]-attention layer the methods read by default here: the penultimate, where FasterVLM reads LLaVA's
encoder (LLaVA feeds that layer's tokens to its language model). On the README's setting (grid 2, seed 0, self
reader) it raised every attention-guided method over the last layer (fastervlm +0.05, holov +0.05, mean-received +0.19
at k = 1/9); layer 8 did no better (benchmarks/results/pruning_reader_layer*.json)."""
LAYOUTS = ("cross", "self")
DEFAULT_LAYOUT = "cross"
IN_CELL_BINS = ((0, 0), (1, 3), (4, 6), (7, 10), (11, None))  # kept tokens inside the asked cell (inclusive)


@dataclass(frozen=True)
class Geometry:
    """What the exported encoder makes of an image: side x side patch tokens of `width` after a [CLS]."""

    side: int
    width: int
    vision: dict[str, Any]  # image_size, mean, std: edgeattn's preprocessing

    @property
    def tokens(self) -> int:
        return self.side * self.side

    def budget(self, fraction: str) -> int:
        return max(1, round(self.tokens / FRACTIONS[fraction]))


def geometry(folder: Path) -> Geometry:
    """From an exported vision folder's manifest (image_features [batch, 1 + side², width])."""
    from edgeattn.manifest import read_manifest

    manifest = read_manifest(folder)
    shape = next(o["shape"] for o in manifest.components["vision"].outputs if o["name"] == "image_features")
    side = math.isqrt(shape[1] - 1)
    if side * side != shape[1] - 1:
        raise PruningError(f"{folder} makes {shape[1]} tokens, not a [CLS] and a square grid of patches")
    vision = {"image_size": manifest.vision.image_size, "mean": list(manifest.vision.mean),
              "std": list(manifest.vision.std)}
    return Geometry(side, int(shape[2]), vision)


# -- the task ---------------------------------------------------------------------------------------
def split_digits(labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the training and test source digits (a seeded split of the images, not the canvases)."""
    order = np.random.default_rng(seed).permutation(len(labels))
    cut = int(round(len(labels) * TEST_SHARE))
    return np.sort(order[cut:]), np.sort(order[:cut])


def make_canvases(labels: np.ndarray, pool: np.ndarray, grid: int, count: int,
                  rng: np.random.Generator) -> np.ndarray:
    """[count, grid * grid] source digit per cell (row-major): distinct classes, drawn from `pool`."""
    by_class = [pool[labels[pool] == c] for c in range(10)]
    cells = np.empty((count, grid * grid), np.int64)
    for row in cells:
        classes = rng.choice(10, grid * grid, replace=False)
        row[:] = [rng.choice(by_class[c]) for c in classes]
    return cells


def canvas_pixels(images: np.ndarray, cells: np.ndarray, grid: int, geo: Geometry) -> np.ndarray:
    """[n, 3, S, S]: each canvas tiled from its digits at 8 x 8 px and resized as one image."""
    tiles = images[cells].reshape(len(cells), grid, grid, DIGIT, DIGIT)
    canvas = tiles.transpose(0, 1, 3, 2, 4).reshape(len(cells), grid * DIGIT, grid * DIGIT)
    return digit_pixels(canvas, geo.vision)


def patch_cells(grid: int, side: int) -> np.ndarray:
    """[side²]: the cell (row-major) that holds each patch's centre."""
    rows = ((np.arange(side) + 0.5) * grid / side).astype(np.int64)
    return (rows[:, None] * grid + rows[None, :]).reshape(-1)


# -- the graphs -------------------------------------------------------------------------------------
def takes_layer(method: str) -> bool:
    """Whether the method's score reads attention, i.e. whether `layer=N` changes its graph."""
    from edgeattn.graphs.pruning.methods import METHODS as RECIPES

    return RECIPES["fastervlm" if method == "fastervlm+debias" else method].uses_attention


def spec_text(method: str, k: int, seed: int, final_norm: str, debias: Path | None, layer: int | None = None) -> str:
    """The pruning recipe of a method; `layer` (None: the method's default) only for methods that read attention."""
    tapped = f",layer={layer}" if layer is not None and takes_layer(method) else ""
    if method == "fastervlm+debias":
        return f"fastervlm:{k},debias={debias}{tapped}"
    if method == "zeroth-order":
        return f"zeroth-order:{k},projector={final_norm}"
    if method == "random":
        return f"random:{k},seed={seed}"
    return f"{method}:{k}{tapped}"


def graph_tail(pruned: Path, dest: Path, outputs: list[str]) -> list[str]:
    """The nodes the pruning pass added to `pruned` (tagged with its rule), saved as their own model
    from the values they read to `outputs`; returns those input names."""
    import onnx
    import onnx.utils

    from edgeattn.graphs.detect import RULE_TAG

    model = onnx.load(str(pruned))
    tail = [n for n in model.graph.node
            if any(p.key == RULE_TAG and p.value.startswith("prune:") for p in n.metadata_props)]
    produced = {name for node in tail for name in node.output}
    constants = {i.name for i in model.graph.initializer}
    boundary = sorted({name for node in tail for name in node.input
                       if name and name not in produced and name not in constants})
    tmp = dest.with_suffix(".tmp")
    onnx.utils.extract_model(str(pruned), str(tmp), boundary, outputs, check_model=False)
    extracted = onnx.load(str(tmp))
    del extracted.functions[:]  # onnx.utils keeps one function per name; TokenScore may have several overloads
    extracted.functions.extend(model.functions)
    onnx.save(extracted, str(tmp))
    tmp.replace(dest)
    return boundary


class Graphs:
    """The exported encoder, its pruned variants (split into encoder part and pruning part) and sessions."""

    def __init__(self, export: Path, folder: Path, threads: int) -> None:
        self.folder, self.threads = folder, threads
        folder.mkdir(parents=True, exist_ok=True)
        self.vision = export / "vision.onnx"
        self.geo = geometry(export)
        self.tails: dict[tuple[str, str], Any] = {}
        self.boundaries: dict[tuple[str, str], list[str]] = {}
        self.full: dict[tuple[str, str], Path] = {}
        self.layers: dict[tuple[str, str], int | None] = {}  # the attention layer each graph taps (None: none)
        self.trunks: dict[tuple[str, ...], tuple[Any, list[str]]] = {}
        self.group: dict[tuple[str, str], tuple[str, ...]] = {}

    def final_norm(self) -> str:
        """The node that makes the output tokens (DINOv2's final LayerNorm): zeroth-order's projector M."""
        import onnx

        model = onnx.load(str(self.vision), load_external_data=False)
        return next(n.name for n in model.graph.node if "image_features" in n.output)

    def session(self, path: Path) -> Any:
        from edgeattn.graphs.session import session_from_onnx

        return session_from_onnx(path, threads=self.threads)

    def add(self, method: str, fraction: str, spec: str) -> None:
        from edgeattn.graphs.pruning import prune_file

        full = self.folder / f"pruned_{method}_{self.geo.budget(fraction)}.onnx"
        tail = full.with_name(full.stem + "_tail.onnx")
        self.layers[method, fraction] = prune_file(self.vision, full, spec).layer
        self.boundaries[method, fraction] = graph_tail(full, tail, ["image_features", "kept_indices"])
        self.tails[method, fraction] = self.session(tail)
        self.full[method, fraction] = full

    def score_tail(self, spec: str) -> tuple[Any, list[str], int]:
        """The TokenScore node of a pruned graph as a model: [CLS] scores from the encoder's values (and
        the attention layer they are read at)."""
        import onnx

        from edgeattn.graphs.pruning import prune_file

        full, tail = self.folder / "score.onnx", self.folder / "score_tail.onnx"
        layer = prune_file(self.vision, full, spec).layer
        assert layer is not None, "a [CLS] score reads an attention layer"
        model = onnx.load(str(full), load_external_data=False)
        score = next(n.output[0] for n in model.graph.node if n.op_type == "TokenScore")
        boundary = graph_tail(full, tail, [score])
        full.unlink()
        return self.session(tail), boundary, layer

    def build_trunks(self, score: list[str]) -> None:
        """The encoder with the values a pruning part reads as extra outputs: one encoder per set of
        values, since exposing a value can change how onnxruntime fuses the nodes around it (zeroth-order's
        LayerNorm input), and each pruning part must see the values its deployed graph computes.
        Graphs that read only the output tokens (random, uniform) share the first set's encoder."""
        import onnx.utils

        sets = {key: _reads(names) for key, names in self.boundaries.items()}
        sets["score", ""] = _reads(score)
        first = min(v for v in sets.values() if v)
        self.group = {key: reads or first for key, reads in sets.items()}
        for index, reads in enumerate(sorted(set(self.group.values()))):
            path = self.folder / f"encoder_{index}.onnx"
            outputs = ["image_features", *reads]
            onnx.utils.extract_model(str(self.vision), str(path), ["pixel_values"], outputs, check_model=False)
            self.trunks[reads] = (self.session(path), outputs)

    def encode(self, pixels: np.ndarray, only: tuple[str, ...] | None = None) -> dict[tuple[str, ...], dict[str, np.ndarray]]:
        """{value set: {name: array}} for every encoder (or only the one for `only`)."""
        out = {}
        for reads, (session, outputs) in self.trunks.items():
            if only is None or reads == only:
                values = dict(zip(outputs, session.run(outputs, {"pixel_values": pixels})))
                values["image_features_unpruned"] = values["image_features"]
                out[reads] = values
        return out


def _reads(boundary: list[str]) -> tuple[str, ...]:
    """The encoder values a pruning part reads besides the output tokens and the prompt."""
    return tuple(sorted(set(boundary) - {"image_features_unpruned", "text_embeds"}))


def feeds_for(boundary: list[str], values: dict[str, np.ndarray], text: np.ndarray | None) -> dict[str, np.ndarray]:
    return {name: (text if name == "text_embeds" else values[name]) for name in boundary}


def run_tail(tail: Any, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """A pruning part on a batch, TAIL_BATCH canvases at a time (bounded memory; the ops are per canvas)."""
    count = len(next(iter(feeds.values())))
    parts = [tail.run(None, {name: value[i : i + TAIL_BATCH] for name, value in feeds.items()})
             for i in range(0, count, TAIL_BATCH)]
    return [np.concatenate(outputs) for outputs in zip(*parts)]


# -- features ---------------------------------------------------------------------------------------
def encode_training(graphs: Graphs, score: tuple[Any, list[str], int], images: np.ndarray, cells: np.ndarray,
                    grid: int) -> dict[str, np.ndarray]:
    """Output patch tokens (float16) and the fastervlm graph's [CLS] scores of the training canvases,
    cached apart in the run folder: the tokens for any layer, the scores per attention layer."""
    paths = {"tokens": graphs.folder / f"train_{len(cells)}.npz",
             "cls_scores": graphs.folder / f"train_{len(cells)}_cls_layer{score[2]}.npz"}
    out = {}
    for name, path in paths.items():
        if path.is_file():
            with np.load(path) as data:
                out[name] = data[name]
    parts: dict[str, list[np.ndarray]] = {name: [] for name in paths if name not in out}
    if not parts:
        return out
    reads = graphs.group["score", ""]
    for start in range(0, len(cells), BATCH):
        values = graphs.encode(canvas_pixels(images, cells[start : start + BATCH], grid, graphs.geo), reads)[reads]
        if "tokens" in parts:
            parts["tokens"].append(values["image_features"][:, 1:].astype(np.float16))
        if "cls_scores" in parts:
            parts["cls_scores"].append(run_tail(score[0], feeds_for(score[1], values, None))[0])
        if start % (BATCH * 25) == 0:
            print(f"  training canvases {min(start + BATCH, len(cells))}/{len(cells)} ({', '.join(parts)})", flush=True)
    for name, chunks in parts.items():
        out[name] = np.concatenate(chunks)
        tmp = paths[name].with_suffix(".tmp.npz")
        np.savez(tmp, **{name: out[name]})
        tmp.replace(paths[name])
    return out


def guidance(tokens: np.ndarray, grid: int) -> np.ndarray:
    """[grid², width]: question q in the vision space (mean token in cell q minus the mean token)."""
    cells = patch_cells(grid, math.isqrt(tokens.shape[1]))
    mean = tokens.astype(np.float32).mean(0)  # [side², width], over the training canvases
    return np.stack([mean[cells == q].mean(0) - mean.mean(0) for q in range(grid * grid)]).astype(np.float32)


def encode_test(graphs: Graphs, images: np.ndarray, cells: np.ndarray, grid: int,
                guide: np.ndarray) -> tuple[np.ndarray, dict[tuple[str, str], dict[str, np.ndarray]], dict[str, Any]]:
    """All-token features, and every pruned graph's kept tokens and indices ([questions or 1, n, k, ...])."""
    questions = grid * grid
    dense, kept = [], {key: {"tokens": [], "indices": []} for key in graphs.tails}
    check: dict[str, Any] = {}
    for start in range(0, len(cells), BATCH):
        pixels = canvas_pixels(images, cells[start : start + BATCH], grid, graphs.geo)
        encoded = graphs.encode(pixels)
        dense.append(encoded[graphs.group["score", ""]]["image_features"][:, 1:].astype(np.float16))
        for key, tail in graphs.tails.items():
            boundary, values = graphs.boundaries[key], encoded[graphs.group[key]]
            asks = range(questions) if "text_embeds" in boundary else [None]
            outs = [run_tail(tail, feeds_for(boundary, values, None if q is None else
                                             np.repeat(guide[q][None, None], len(pixels), 0))) for q in asks]
            kept[key]["tokens"].append(np.stack([o[0] for o in outs]).astype(np.float16))
            kept[key]["indices"].append(np.stack([o[1] for o in outs]))
            if start == 0:
                check[f"{key[0]} {key[1]}"] = deployed_check(graphs, key, pixels[:CHECK_CANVASES], outs,
                                                              None if asks == [None] else guide)
        if start % (BATCH * 5) == 0:
            print(f"  test canvases {start + len(pixels)}/{len(cells)}", flush=True)
    merged = {key: {name: np.concatenate(parts, 1) for name, parts in item.items()} for key, item in kept.items()}
    return np.concatenate(dense), merged, check


def deployed_check(graphs: Graphs, key: tuple[str, str], pixels: np.ndarray, outs: list[list[np.ndarray]],
                   guide: np.ndarray | None) -> dict[str, Any]:
    """Run the full pruned graph (the deployed file) and compare with its split run."""
    session = graphs.session(graphs.full[key])
    same, diff = 0, 0.0
    for q, (tokens, indices) in enumerate(outs):
        feeds = {"pixel_values": pixels}
        if guide is not None:
            feeds["text_embeds"] = np.repeat(guide[q][None, None], len(pixels), 0)
        want_tokens, want_indices = session.run(["image_features", "kept_indices"], feeds)
        same += int((want_indices == indices[: len(pixels)]).all(axis=1).sum())
        diff = max(diff, float(np.abs(want_tokens - tokens[: len(pixels)]).max()))
    total = len(pixels) * len(outs)
    if same != total or diff > 1e-5 * max(1.0, float(np.abs(want_tokens).max())):
        print(f"  warning: {key[0]} {key[1]}: the split graph differs from the deployed one on {total - same} of "
              f"{total} canvases (max token difference {diff:.3g})", flush=True)
    graphs.full[key].unlink()
    return {"canvases": total, "indices_equal": same, "max_abs_token_difference": diff}


# -- the reader -------------------------------------------------------------------------------------
READER = {"pca": 64, "width": 64, "layers": 2, "heads": 4, "mlp": 128, "epochs": 8, "batch": 32, "lr": 2e-3,
          "weight_decay": 0.01}


def make_reader(questions: int, positions: int, seed: int, basis: np.ndarray, center: np.ndarray,
                layout: str = DEFAULT_LAYOUT) -> Any:
    """The reader of `positions` patch tokens in `layout` (LAYOUTS); `basis` [width, pca] and `center` [width]
    are its fixed first projection (a PCA of the training tokens), so that training on 2 cores takes minutes."""
    import torch
    from torch import nn

    class Reader(nn.Module):
        """Image tokens (projected, plus their patch position) then question tokens; see the module doc."""

        def __init__(self) -> None:
            super().__init__()
            d, pca = READER["width"], basis.shape[1]
            self.register_buffer("basis", torch.from_numpy(basis.astype(np.float32)))
            self.register_buffer("center", torch.from_numpy(center.astype(np.float32)))
            self.project = nn.Sequential(nn.LayerNorm(pca), nn.Linear(pca, d))
            self.position = nn.Parameter(torch.randn(positions, d) * 0.02)
            self.question = nn.Embedding(questions, d)
            layer = nn.TransformerEncoderLayer(d, READER["heads"], READER["mlp"], 0.0, batch_first=True, norm_first=True)
            self.layers = nn.TransformerEncoder(layer, READER["layers"], enable_nested_tensor=False)
            self.head = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, 10))

        def reduce(self, tokens: Any) -> Any:
            """[B, n, width] output tokens -> [B, n, pca]."""
            return (tokens - self.center) @ self.basis

        def forward(self, reduced: Any, positions: Any, asked: Any) -> Any:
            """reduced [B, n, pca], positions [B, n] (patch index), asked [B, Q] (cell) -> logits [B, Q, 10]."""
            n, q = reduced.shape[1], asked.shape[1]
            x = torch.cat([self.project(reduced) + self.position[positions], self.question(asked)], 1)
            mask = torch.full((n + q, n + q), float("-inf"))
            mask[n:, :n] = 0.0  # a question token reads the image tokens
            if layout == "self":
                mask[:n, :n] = 0.0  # image tokens read each other
            else:
                mask[:n, :n].fill_diagonal_(0.0)  # an image token reads itself only
            mask[n:, n:].fill_diagonal_(0.0)  # a question token reads itself, not the other questions
            return self.head(self.layers(x, mask=mask)[:, n:])

    torch.manual_seed(seed)
    return Reader()


def fit_pca(tokens: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """([width, size] principal directions, [width] mean) of the training tokens (every 7th token)."""
    sample = tokens.reshape(-1, tokens.shape[-1])[::7].astype(np.float32)
    center = sample.mean(0)
    _, _, vt = np.linalg.svd(sample - center, full_matrices=False)
    return vt[:size].T.copy(), center


def train_reader(tokens: np.ndarray, answers: np.ndarray, grid: int, seed: int,
                 layout: str = DEFAULT_LAYOUT) -> tuple[Any, dict[str, Any]]:
    """Train on all tokens of the training canvases (every question of a canvas at once)."""
    import torch

    reader = make_reader(grid * grid, tokens.shape[1], seed, *fit_pca(tokens, min(READER["pca"], tokens.shape[-1])),
                         layout)
    with torch.no_grad():
        reduced = torch.cat([reader.reduce(torch.from_numpy(tokens[i : i + 256].astype(np.float32)))
                             for i in range(0, len(tokens), 256)])
    steps = READER["epochs"] * -(-len(tokens) // READER["batch"])
    optimiser = torch.optim.AdamW(reader.parameters(), lr=READER["lr"], weight_decay=READER["weight_decay"])
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, READER["lr"], total_steps=steps, pct_start=0.1)
    rng = np.random.default_rng(seed)
    positions, asked = torch.arange(tokens.shape[1])[None], torch.arange(grid * grid)[None]
    start, losses = time.perf_counter(), []
    reader.train()
    for epoch in range(READER["epochs"]):
        order, total = rng.permutation(len(tokens)), 0.0
        for first in range(0, len(order), READER["batch"]):
            rows = order[first : first + READER["batch"]]
            logits = reader(reduced[rows], positions.expand(len(rows), -1), asked.expand(len(rows), -1))
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 10), torch.from_numpy(answers[rows]).reshape(-1))
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            total += float(loss.detach()) * len(rows)
        losses.append(round(total / len(tokens), 4))
        print(f"  reader epoch {epoch + 1}: loss {losses[-1]:.4f}", flush=True)
    reader.eval()
    return reader, {**READER, "layout": layout, "train_loss": losses, "seconds": round(time.perf_counter() - start, 1)}


def predict(reader: Any, tokens: np.ndarray, positions: np.ndarray, asked: np.ndarray) -> np.ndarray:
    """[n, Q] predicted digits for tokens [n, k, 384] at positions [n, k], questions asked [n, Q]."""
    import torch

    out = []
    with torch.no_grad():
        for first in range(0, len(tokens), 64):
            part = slice(first, first + 64)
            reduced = reader.reduce(torch.from_numpy(tokens[part].astype(np.float32)))
            logits = reader(reduced, torch.from_numpy(positions[part]), torch.from_numpy(asked[part]))
            out.append(logits.argmax(-1).numpy())
    return np.concatenate(out)


# -- evaluation -------------------------------------------------------------------------------------
def answer_all(reader: Any, kept: dict[str, np.ndarray], grid: int) -> np.ndarray:
    """[n, Q] predictions: question-independent graphs answer every question from one token set; a
    graph that took the question (flashvlm) answers question q from the tokens it kept for q."""
    questions, count = grid * grid, kept["tokens"].shape[1]
    if kept["tokens"].shape[0] == 1:
        asked = np.repeat(np.arange(questions)[None], count, 0)
        return predict(reader, kept["tokens"][0], kept["indices"][0], asked)
    return np.stack([predict(reader, kept["tokens"][q], kept["indices"][q], np.full((count, 1), q))[:, 0]
                     for q in range(questions)], 1)


def accuracy(correct: np.ndarray) -> dict[str, float]:
    """Mean and standard error over canvases (each canvas: the mean over its questions)."""
    per_canvas = correct.mean(1)
    return {"accuracy": round(float(per_canvas.mean()), 4),
            "stderr": round(float(per_canvas.std(ddof=1) / np.sqrt(len(per_canvas))), 4)}


def paired(correct: np.ndarray, baseline: np.ndarray) -> dict[str, float]:
    diff = correct.mean(1) - baseline.mean(1)
    return {"difference": round(float(diff.mean()), 4), "stderr": round(float(diff.std(ddof=1) / np.sqrt(len(diff))), 4)}


def patch_strokes(images: np.ndarray, cells: np.ndarray, grid: int, side: int) -> np.ndarray:
    """[n, side²] bool: patches whose centre falls on a digit stroke (source pixel >= 8 of 16)."""
    tiles = images[cells].reshape(len(cells), grid, grid, DIGIT, DIGIT)
    canvas = tiles.transpose(0, 1, 3, 2, 4).reshape(len(cells), grid * DIGIT, grid * DIGIT)
    pixel = ((np.arange(side) + 0.5) * grid * DIGIT / side).astype(np.int64)
    return (canvas[:, pixel][:, :, pixel] >= 8).reshape(len(cells), -1)


def asked_hits(kept: dict[str, np.ndarray], grid: int, tokens: int) -> np.ndarray:
    """[n, Q, k] bool: which kept tokens lie inside the asked cell, for every canvas and question."""
    cells = patch_cells(grid, math.isqrt(tokens))
    asked = np.arange(grid * grid)
    where = cells[kept["indices"]]  # [1 or Q, n, k]
    if where.shape[0] == 1:
        return where[0][:, None, :] == asked[None, :, None]
    return (where == asked[:, None, None]).transpose(1, 0, 2)


def diagnostics(kept: dict[str, np.ndarray], dense: np.ndarray, strokes: np.ndarray, grid: int) -> dict[str, float]:
    """Where the kept tokens are: the share inside the asked cell (a method blind to the question keeps
    1/grid² there on average, so also: how often the asked cell keeps no token at all), the share on
    digit strokes, and their norm relative to the canvas's mean token norm (DINOv2's artefact tokens > 1.5)."""
    hits = asked_hits(kept, grid, dense.shape[1])
    norms = np.linalg.norm(dense.astype(np.float32), axis=-1)
    relative = norms / norms.mean(1, keepdims=True)
    kept_rel = np.stack([np.take_along_axis(relative, idx, 1) for idx in kept["indices"]])
    on_strokes = np.stack([np.take_along_axis(strokes, idx, 1) for idx in kept["indices"]])
    return {"in_cell_share": round(float(hits.mean()), 4), "asked_cell_empty": round(float((~hits.any(-1)).mean()), 4),
            "stroke_share": round(float(on_strokes.mean()), 4), "relative_norm": round(float(kept_rel.mean()), 3),
            "high_norm_share": round(float((kept_rel > 1.5).mean()), 4)}


def by_tokens_in_cell(kept: dict[str, np.ndarray], correct: np.ndarray, grid: int, tokens: int) -> list[dict[str, Any]]:
    """Accuracy of the questions binned by how many kept tokens lie inside the asked cell (IN_CELL_BINS):
    per bin the number of questions, their accuracy and its binomial standard error over those questions
    (questions of one canvas are counted as independent here)."""
    count = asked_hits(kept, grid, tokens).sum(-1)  # [n, Q]
    rows = []
    for low, high in IN_CELL_BINS:
        inside = (count >= low) & (count <= (count.max() if high is None else high))
        label = f"{low}+" if high is None else (f"{low}" if low == high else f"{low}-{high}")
        total = int(inside.sum())
        rate = float(correct[inside].mean()) if total else None
        rows.append({"tokens": label, "questions": total, "accuracy": None if rate is None else round(rate, 4),
                     "stderr": None if rate is None else round(math.sqrt(rate * (1 - rate) / total), 4)})
    return rows


# -- the run ----------------------------------------------------------------------------------------
def prepare(grid: int, seed: int, train_count: int, test_count: int) -> dict[str, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    train_pool, test_pool = split_digits(digits.target, seed)
    rng = np.random.default_rng(seed)
    train = make_canvases(digits.target, train_pool, grid, train_count, rng)
    test = make_canvases(digits.target, test_pool, grid, test_count, rng)
    return {"images": digits.images, "labels": digits.target, "train": train, "test": test}


def build_graphs(graphs: Graphs, seed: int, methods: tuple[str, ...], layer: int | None) -> tuple[Any, list[str], int]:
    """Every pruned graph but the debiased ones (their weights come from the training canvases), and
    the fastervlm graph's TokenScore part (at `layer`) that scores the training canvases for them."""
    final_norm = graphs.final_norm()
    for method in methods:
        if method != "fastervlm+debias":
            for fraction in FRACTIONS:
                graphs.add(method, fraction,
                           spec_text(method, graphs.geo.budget(fraction), seed, final_norm, None, layer))
    return graphs.score_tail(spec_text("fastervlm", graphs.geo.budget("1/16"), seed, final_norm, None, layer))


def build_debiased(graphs: Graphs, scores: np.ndarray, seed: int, layer: int | None) -> list[float]:
    from edgeattn.graphs.pruning.debias import fit_recency_weights

    weights = fit_recency_weights(scores)
    path = graphs.folder / "debias_weights.npy"
    np.save(path, weights)
    for fraction in FRACTIONS:
        graphs.add("fastervlm+debias", fraction,
                   spec_text("fastervlm+debias", graphs.geo.budget(fraction), seed, "", path, layer))
        graphs.group["fastervlm+debias", fraction] = _reads(graphs.boundaries["fastervlm+debias", fraction])
        assert graphs.group["fastervlm+debias", fraction] in graphs.trunks, "debias reads what fastervlm reads"
    return [round(float(w), 4) for w in weights[::32]]


def reader_for(data: dict[str, np.ndarray], train: dict[str, np.ndarray], grid: int, seed: int,
               folder: Path, layout: str) -> tuple[Any, dict[str, Any]]:
    import torch

    answers = data["labels"][data["train"]]
    key = json.dumps({**READER, "n": len(answers), "layout": layout}, sort_keys=True)  # the folder: model, grid, seed
    path = folder / f"reader_{layout}.pt"
    if path.is_file():
        saved = torch.load(path, weights_only=False)
        if saved["key"] == key:
            basis = saved["state"]["basis"].numpy()
            reader = make_reader(grid * grid, train["tokens"].shape[1], seed, basis, np.zeros(len(basis)), layout)
            reader.load_state_dict(saved["state"])
            reader.eval()
            return reader, saved["record"]
    reader, record = train_reader(train["tokens"], answers, grid, seed, layout)
    torch.save({"key": key, "state": reader.state_dict(), "record": record}, path)
    return reader, record


def export_encoder(model: str, cache: Path) -> Path:
    """The exported (validated) vision folder of `model`, made once under `cache`."""
    from edgeattn.exporter.api import ExportOptions, export_model

    folder = cache / model.replace(":", "-")
    if not (folder / "manifest.json").is_file():
        export_model(model, folder, ExportOptions(force=True))
    return folder


def collect(grid: int, seed: int, train_count: int, test_count: int, cache: Path, threads: int,
            methods: tuple[str, ...] = METHODS, model: str = MODEL, layer: int | None = DEFAULT_LAYER,
            layout: str = DEFAULT_LAYOUT) -> dict[str, Any]:
    """Graphs, training features, the reader, and every pruned graph's outputs on the test canvases;
    `layer`: the attention layer of the methods that read one (None: their default, the last)."""
    timings: dict[str, float] = {}
    clock = time.perf_counter()
    data = prepare(grid, seed, train_count, test_count)
    graphs = Graphs(export_encoder(model, cache), cache / "runs" / f"{model.replace(':', '-')}_grid{grid}_seed{seed}",
                    threads)
    score = build_graphs(graphs, seed, methods, layer)
    graphs.build_trunks(score[1])
    timings["export_and_prune"] = time.perf_counter() - clock
    clock = time.perf_counter()
    train = encode_training(graphs, score, data["images"], data["train"], grid)
    timings["encode_training"] = time.perf_counter() - clock
    weights = build_debiased(graphs, train["cls_scores"], seed, layer) if "fastervlm+debias" in methods else None
    guide = guidance(train["tokens"], grid)
    clock = time.perf_counter()
    reader, record = reader_for(data, train, grid, seed, graphs.folder, layout)
    timings["train_reader"] = time.perf_counter() - clock
    clock = time.perf_counter()
    dense, kept, check = encode_test(graphs, data["images"], data["test"], grid, guide)
    timings["encode_test"] = time.perf_counter() - clock
    config = {"model": model, "grid": grid, "seed": seed, "train_canvases": train_count, "test_canvases": test_count,
              "questions_per_canvas": grid * grid, "tokens": graphs.geo.tokens,
              "budgets": {f: graphs.geo.budget(f) for f in FRACTIONS}, "test_share_of_digits": TEST_SHARE,
              "debias_weights_every_32nd": weights, "layer": layer, "reader_layout": layout,
              "attention_layer": {method: graphs.layers[method, "1/9"] for method in methods},
              "layer_not_applied": {method: "reads no attention" for method in methods if not takes_layer(method)}}
    return {"config": config, "graphs": graphs, "data": data, "guide": guide, "reader": reader, "record": record,
            "dense": dense, "kept": kept, "check": check, "methods": methods, "timings": timings}


def summarise(run: dict[str, Any]) -> dict[str, Any]:
    """The JSON payload (without the machine) of a `collect`ed run."""
    result = score_all(run["reader"], run["data"], run["dense"], run["kept"], run["config"]["grid"], run["graphs"].geo,
                       run["methods"])
    timings = {name: round(seconds, 1) for name, seconds in run["timings"].items()}
    return {"config": run["config"], **result, "reader": run["record"], "deployed_check": run["check"],
            "seconds": timings}


def run(grid: int, seed: int, train_count: int, test_count: int, cache: Path, threads: int,
        methods: tuple[str, ...] = METHODS, model: str = MODEL, layer: int | None = DEFAULT_LAYER,
        layout: str = DEFAULT_LAYOUT) -> dict[str, Any]:
    """The whole benchmark: graphs, training features, the reader, the pruned test features, the scores."""
    return summarise(collect(grid, seed, train_count, test_count, cache, threads, methods, model, layer, layout))


def score_all(reader: Any, data: dict[str, np.ndarray], dense: np.ndarray,
              kept: dict[tuple[str, str], dict[str, np.ndarray]], grid: int, geo: Geometry,
              methods: tuple[str, ...]) -> dict[str, Any]:
    """{"all_tokens": {...}, method: {fraction: {accuracy, stderr, k, vs_random, diagnostics, by_tokens_in_cell}}}."""
    answers = data["labels"][data["test"]]
    everything = {"tokens": dense[None], "indices": np.repeat(np.arange(geo.tokens)[None, None], len(dense), 1)}
    ceiling = answer_all(reader, everything, grid) == answers
    correct = {key: answer_all(reader, item, grid) == answers for key, item in kept.items()}
    strokes = patch_strokes(data["images"], data["test"], grid, geo.side)
    result: dict[str, Any] = {"all_tokens": {**accuracy(ceiling), **diagnostics(everything, dense, strokes, grid)}}
    for method in methods:
        result[method] = {}
        for fraction in FRACTIONS:
            item = {"k": geo.budget(fraction), **accuracy(correct[method, fraction])}
            if method != "random" and "random" in methods:
                item["vs_random"] = paired(correct[method, fraction], correct["random", fraction])
            result[method][fraction] = {**item, **diagnostics(kept[method, fraction], dense, strokes, grid),
                                        "by_tokens_in_cell": by_tokens_in_cell(kept[method, fraction],
                                                                               correct[method, fraction], grid,
                                                                               geo.tokens)}
    return result


def markdown(result: dict[str, Any], info: dict[str, Any], methods: tuple[str, ...], focus: str = "1/9") -> str:
    """Three tables: accuracy per method and budget; where each method's kept tokens lie at `focus`; the
    accuracy at `focus` by the number of kept tokens inside the asked cell."""
    cfg, ceiling = result["config"], result["all_tokens"]
    head = " | ".join(f"{f} (k={k})" for f, k in cfg["budgets"].items())
    tapped = {method: layer for method, layer in cfg["attention_layer"].items() if layer is not None}
    indices = ", ".join(str(layer) for layer in sorted(set(tapped.values())))
    chosen = "the methods' default" if cfg["layer"] is None else f"--layer {cfg['layer']}"
    lines = [
        f"Reader accuracy ({cfg.get('reader_layout', 'self')} layout), {cfg['grid']}x{cfg['grid']} digit canvases (seed {cfg['seed']}, {cfg['test_canvases']} test "
        f"canvases x {cfg['questions_per_canvas']} questions; ± standard error over canvases); in brackets the share "
        f"of kept tokens inside the asked cell. Attention layer {indices} ({chosen}) for {', '.join(tapped)}; "
        f"{', '.join(cfg['layer_not_applied'])} read no attention. {info['date']}, {info['cpu']}, "
        f"{info['cores']} cores.",
        "",
        f"| method | {head} |",
        "|---|" + "---|" * len(cfg["budgets"]),
        f"| all {cfg['tokens']} tokens (ceiling) | {ceiling['accuracy']:.3f} ± {ceiling['stderr']:.3f} "
        f"[{ceiling['in_cell_share']:.2f}] |" + " |" * (len(cfg["budgets"]) - 1),
    ]
    for method in methods:
        cells = [f"{r['accuracy']:.3f} ± {r['stderr']:.3f} [{r['in_cell_share']:.2f}]" for r in result[method].values()]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    lines += ["", f"At {focus} (k={cfg['budgets'][focus]}):", "",
              "| method | vs random | asked cell empty | on strokes | relative norm | high-norm share |",
              "|---|---|---|---|---|---|",
              f"| all tokens | | {ceiling['asked_cell_empty']:.3f} | {ceiling['stroke_share']:.2f} | "
              f"{ceiling['relative_norm']:.2f} | {ceiling['high_norm_share']:.3f} |"]
    for method in methods:
        row = result[method][focus]
        versus = row.get("vs_random")
        text = f"{versus['difference']:+.3f} ± {versus['stderr']:.3f}" if versus else ""
        lines.append(f"| {method} | {text} | {row['asked_cell_empty']:.3f} | {row['stroke_share']:.2f} | "
                     f"{row['relative_norm']:.2f} | {row['high_norm_share']:.3f} |")
    bins = [b["tokens"] for b in result[methods[0]][focus]["by_tokens_in_cell"]]
    lines += ["", f"At {focus}, accuracy by the number of kept tokens inside the asked cell (in brackets: the "
              f"questions in that bin, of {cfg['test_canvases'] * cfg['questions_per_canvas']}):", "",
              "| method | " + " | ".join(bins) + " |", "|---|" + "---|" * len(bins)]
    for method in methods:
        cells = [f"{b['accuracy']:.3f} ({b['questions']})" if b["questions"] else "– (0)"
                 for b in result[method][focus]["by_tokens_in_cell"]]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--grid", type=int, choices=(2, 3), default=2, help="cells per side (each a different digit)")
    parser.add_argument("--seed", type=int, default=0, help="digit split, canvases, reader and the random baseline")
    parser.add_argument("--train", type=int, default=1600, help="training canvases")
    parser.add_argument("--test", type=int, default=400, help="test canvases")
    parser.add_argument("--layer", type=int, default=DEFAULT_LAYER, help="attention layer of the methods that read "
                        f"one (negative: from the last; default {DEFAULT_LAYER}, the penultimate, as FasterVLM reads "
                        "LLaVA's encoder)")
    parser.add_argument("--reader", choices=LAYOUTS, default=DEFAULT_LAYOUT, help="the reader's layout: cross "
                        "(the question reads the image tokens, which do not read each other) or self (image tokens "
                        f"read each other too); default {DEFAULT_LAYOUT}")
    parser.add_argument("--output", type=Path, help="JSON file, the markdown beside it "
                        "(default: benchmarks/results/pruning_reader*.json)")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/edgeattn-bench-cache/pruning_reader"))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    info = machine()
    result = run(args.grid, args.seed, args.train, args.test, args.cache, args.threads, layer=args.layer,
                 layout=args.reader)
    payload = {"machine": info, **result}
    default = "pruning_reader" if (args.grid, args.seed) == (2, 0) else f"pruning_reader_grid{args.grid}_seed{args.seed}"
    default += "" if args.layer == DEFAULT_LAYER else f"_layer{args.layer}"
    default += "" if args.reader == DEFAULT_LAYOUT else f"_{args.reader}"
    output = args.output or RESULTS / f"{default}.json"
    write_json_at(output, payload)
    text = markdown(result, info, METHODS)
    write_text_at(output.with_suffix(".md"), text)
    print(text)


if __name__ == "__main__":
    run_benchmark(main)
