"""The block layout a block-sparse decoder layer chooses for a prompt: `block_layout(folder, text, layer, head)`.

How it is obtained, exactly as the op chooses it:

1. The decoder is copied in memory; the site's Q and K (and a run-time keep or threshold, or the block_mask
   input of layout "mask") become extra graph outputs of the copy (`show.sites` finds them in either form of
   the site), which is written to a temporary folder and run for one prefill of the prompt (the user's file is
   only read).
2. Layout "select": the captured Q and K go through a small graph built from BlockSelect's own node builders
   (`edgeattn.ops.block_select.function.select`, the body of BlockSelect and of BlockSparseAttention, which
   the onnxruntime lowering is tested to equal), giving the selected blocks and the block probabilities.
   Layout "mask": the captured block_mask. Layout "window": the documented window/sink rule
   (`ops.block_sparse_attention.reference`) on the prompt's positions; no run is needed.
3. `heads` (only some key/value heads sparse): a head outside the list keeps every available block.

The layout is per key/value head: `head` names a query head and the layout drawn is its key/value head's,
which the query heads of that group share. One prefill has as many query rows as keys, so with the causal
rule a key block is available to a query block iff it is not after it.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import onnx_ir as ir

from edgeattn.errors import EdgeAttnError
from edgeattn.graphs.io import MIN_IR_VERSION, load, save
from edgeattn.graphs.session import session_from_onnx
from edgeattn.manifest import Manifest, read_manifest
from edgeattn.ops.block_select.function import geometry, select
from edgeattn.ops.bodies import Nodes
from edgeattn.ops.spec import standard_opset
from edgeattn.runtime.precision import check_runnable_dtype, float_array_type
from edgeattn.show.prompt import prompt_ids, token_embeddings
from edgeattn.show.sites import Site, attention_sites

# Query or key blocks per side beyond this do not make a readable heat map (nor a reasonable picture).
MAX_BLOCKS = 1024
_ONNX_TYPES = {np.dtype(np.float32): ir.DataType.FLOAT, np.dtype(np.float16): ir.DataType.FLOAT16}
_SUMMARY_ATTRIBUTES = ("block_size", "causal", "mode", "keep", "keep_blocks", "threshold", "cum_prob", "local_blocks",
                       "sink_blocks", "dense_last_rows", "query_pool", "key_pool", "group_reduce", "window", "sinks",
                       "heads")


@dataclass(frozen=True)
class BlockLayout:
    """Which key blocks each query block of one prefill attends, for one layer and key/value head."""

    folder: str
    layer: int
    head: int  # the query head asked for
    kv_head: int  # the key/value head whose layout it follows
    query_heads: tuple[int, int]  # first and last query head of that key/value head
    layout: str  # select, mask or window
    attributes: Mapping[str, Any]  # the site's layout attributes (block_size, mode, keep, ...)
    tokens: int  # prompt tokens: query rows and keys of the prefill
    kept: np.ndarray  # bool [query blocks, key blocks]
    available: np.ndarray  # bool [query blocks, key blocks]: blocks the causal rule leaves visible
    scores: np.ndarray | None  # float [query blocks, key blocks]: what "select" ranks (NaN where unavailable)
    dense_head: bool = False  # the key/value head is outside the site's `heads`: every available block kept

    @property
    def block_size(self) -> int:
        return int(self.attributes["block_size"])

    def to_json(self) -> dict[str, Any]:
        kept, available = int(self.kept.sum()), int(self.available.sum())
        scores = None if self.scores is None else [[None if math.isnan(v) else round(float(v), 6) for v in row]
                                                    for row in self.scores]
        return {"folder": self.folder, "layer": self.layer, "head": self.head, "kv_head": self.kv_head,
                "query_heads": list(self.query_heads), "layout": self.layout,
                "attributes": {k: list(v) if isinstance(v, tuple) else v for k, v in self.attributes.items()},
                "tokens": self.tokens, "query_blocks": int(self.kept.shape[0]), "key_blocks": int(self.kept.shape[1]),
                "kept_blocks": kept, "available_blocks": available,
                "density": round(kept / available, 6) if available else 0.0, "dense_head": self.dense_head,
                "kept": self.kept.astype(int).tolist(), "available": self.available.astype(int).tolist(),
                "scores": scores}


def block_layout(folder: str | Path, prompt: str, layer: int, head: int, threads: int | None = None) -> BlockLayout:
    """The blocks layer `layer` keeps for query head `head`'s key/value head on one prefill of `prompt`."""
    path = Path(folder)
    manifest = read_manifest(path)
    if "decoder" not in manifest.components or manifest.decoder is None:
        raise EdgeAttnError(f"{folder} holds a {manifest.family} export without a decoder; --layer/--head draw a "
                            "block-sparse decoder's layout: export a language model with "
                            "--sparse block:keep=0.5,block=64")
    check_runnable_dtype(manifest, path)
    model = load(path / manifest.file_of("decoder"))
    site = _site(model, manifest, folder, layer)
    attrs = dict(site.attributes)
    q_heads, kv_heads = _head_counts(manifest, attrs)
    if not 0 <= head < q_heads:
        raise EdgeAttnError(f"--head {head} is out of range: layer {layer} has {q_heads} query heads "
                            f"(0-{q_heads - 1})")
    group = q_heads // kv_heads
    kv_head = head // group
    ids = prompt_ids(path, manifest, prompt)
    blocks = -(-len(ids) // int(attrs["block_size"]))
    if blocks > MAX_BLOCKS:
        raise EdgeAttnError(f"the prompt's {len(ids)} tokens make {blocks} blocks of {attrs['block_size']}, more than "
                            f"the {MAX_BLOCKS} a heat map draws; shorten the prompt")
    layout = str(attrs["layout"])
    scores = None
    if layout == "window":
        kept, available = window_blocks(len(ids), attrs)
    else:
        captured = _capture(path, manifest, model, site, ids, threads)
        if layout == "mask":
            available = available_blocks(len(ids), int(attrs["block_size"]), int(attrs["causal"]))
            mask = np.asarray(captured["block_mask"], bool)
            kept = mask[0, kv_head if mask.shape[1] > 1 else 0] & available
        else:
            kept, available, scores = _select(captured, attrs, model, kv_head)
    dense = bool(attrs["heads"]) and kv_head not in tuple(attrs["heads"])
    if dense:
        kept = available.copy()
    summary = {k: attrs[k] for k in _SUMMARY_ATTRIBUTES if k in attrs}
    return BlockLayout(str(folder), layer, head, kv_head, (kv_head * group, kv_head * group + group - 1), layout,
                       summary, len(ids), kept, available, scores, dense)


def _site(model: ir.Model, manifest: Manifest, folder: str | Path, layer: int) -> Site:
    """The block-sparse site of `layer`, or a one-line refusal naming what exists."""
    assert manifest.decoder is not None
    layers = manifest.decoder.num_layers
    sites = attention_sites(model)
    sparse = [n for n, s in sites.items() if s.block_sparse]
    if not sparse:
        raise EdgeAttnError(f"{folder}'s decoder has no block-sparse attention (edgeattn.BlockSparseAttention); "
                            "--layer/--head draw its block layout: export with --sparse block:keep=0.5,block=64")
    if not 0 <= layer < layers:
        raise EdgeAttnError(f"--layer {layer} is out of range: {folder}'s decoder has {layers} layers (0-{layers - 1})")
    site = sites.get(layer)
    if site is None or not site.block_sparse:
        runs = f"runs {site.op}" if site is not None else "was not rewritten"
        raise EdgeAttnError(f"layer {layer} of {folder} {runs}, not block-sparse attention; its block-sparse layers "
                            f"are {', '.join(map(str, sparse))}")
    if str(site.attributes.get("layout")) != "window" and site.query is None:
        raise EdgeAttnError(f"layer {layer}'s onnxruntime lowering ({site.form}) has no dense decode step, so show "
                            "cannot find its Q and K; export with decode=dense (the default) to draw it")
    return site


def _head_counts(manifest: Manifest, attrs: Mapping[str, Any]) -> tuple[int, int]:
    assert manifest.decoder is not None
    q_heads = int(attrs.get("q_num_heads") or 0) or manifest.decoder.num_heads or manifest.decoder.num_kv_heads
    kv_heads = int(attrs.get("kv_num_heads") or 0) or manifest.decoder.num_kv_heads
    if q_heads % kv_heads:
        raise EdgeAttnError(f"the decoder has {q_heads} query heads and {kv_heads} key/value heads, which do not group")
    return q_heads, kv_heads


# -- the layout rules ------------------------------------------------------------------------------------


def available_blocks(tokens: int, block: int, causal: int) -> np.ndarray:
    """bool [nQB, nKB] of one prefill (as many query rows as keys, query row 0 at position 0): with the causal
    rule key block j is available to query block T iff j <= T."""
    count = -(-tokens // block)
    if not causal:
        return np.ones((count, count), bool)
    return np.arange(count)[None, :] <= np.arange(count)[:, None]


def window_blocks(tokens: int, attrs: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(kept, available) of layout "window" on one prefill: a block is kept when any of its (row p, key j) pairs
    is visible: p - window < j <= p (|p - j| < window without causal) or j < sinks (and j <= p with causal).
    Worked out on the blocks' position intervals, so memory grows with the blocks, not with tokens²."""
    block, window, sinks, causal = (int(attrs[k]) for k in ("block_size", "window", "sinks", "causal"))
    count = -(-tokens // block)
    first = np.arange(count) * block
    last = np.minimum(first + block, tokens) - 1
    p_lo, p_hi = first[:, None], last[:, None]  # the query rows of block T
    k_lo, k_hi = first[None, :], last[None, :]  # the keys of block j
    if causal:  # some p in [p_lo, p_hi] with p - window < j <= p for some j in [k_lo, k_hi]
        near = np.maximum(p_lo, k_lo) <= np.minimum(p_hi, k_hi + window - 1)
        sink = (k_lo < sinks) & (k_lo <= p_hi)
    else:  # the intervals are less than `window` apart
        near = np.maximum(0, np.maximum(k_lo - p_hi, p_lo - k_hi)) < window
        sink = np.broadcast_to(k_lo < sinks, near.shape)
    available = available_blocks(tokens, block, causal)
    return (near | sink) & available, available


def _select(captured: Mapping[str, np.ndarray], attrs: Mapping[str, Any], model: ir.Model,
            kv_head: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(kept, available, scores) of layout "select": BlockSelect's body on the captured Q and K."""
    query, key = _four_d(captured["Q"], attrs, "q"), _four_d(captured["K"], attrs, "kv")
    opset = standard_opset(model.opset_imports, 0) or 0
    session = _selector_session(attrs, query.dtype, max(opset, Nodes.min_opset), "keep" in captured,
                                "threshold" in captured)
    feeds = {"Q": query, "K": key, **{k: np.asarray(captured[k], np.float32) for k in ("keep", "threshold")
                                      if k in captured}}
    selected, probs, available = session.run(None, feeds)
    grouped = probs[0, kv_head].mean(0) if attrs["group_reduce"] == "mean" else probs[0, kv_head].max(0)
    available = np.asarray(available, bool)
    scores = np.where(available, grouped.astype(np.float64), np.nan)
    return np.asarray(selected, bool)[0, kv_head], available, scores


def _four_d(x: np.ndarray, attrs: Mapping[str, Any], which: str) -> np.ndarray:
    """Q or K as [B, H, S, d] (a 3-D [B, S, H·d] site input is split into its heads)."""
    if x.ndim == 4:
        return x
    heads = int(attrs["q_num_heads"]) if which == "q" else int(attrs["kv_num_heads"] or attrs["q_num_heads"])
    return x.reshape(x.shape[0], x.shape[1], heads, -1).transpose(0, 2, 1, 3).copy()


def _selector_session(attrs: Mapping[str, Any], dtype: np.dtype, opset: int, keep: bool, threshold: bool) -> Any:
    """An onnxruntime session on Q, K (and keep, threshold) -> (selected, per-head probabilities, available),
    made of BlockSelect's own node builders."""
    import onnxruntime as ort

    float_type = _ONNX_TYPES.get(np.dtype(dtype))
    if float_type is None:
        raise EdgeAttnError(f"the decoder's Q is {dtype}; show reads float32 and float16 decoders")
    b = Nodes(opset, "show")
    query = b.input("Q", float_type, ir.Shape([None] * 4))
    key = b.input("K", float_type, ir.Shape([None] * 4))
    keep_input = b.input("keep", ir.DataType.FLOAT, ir.Shape([])) if keep else None
    threshold_input = b.input("threshold", ir.DataType.FLOAT, ir.Shape([])) if threshold else None
    geo = geometry(b, query, key, int(attrs["block_size"]), int(attrs["causal"]))
    selected, probs, available = select(b, query, key, attrs, geo, keep_input, threshold_input)
    outputs = [b.op("Identity", v) for v in (selected, probs, available)]
    for value, kind in zip(outputs, (ir.DataType.BOOL, float_type, ir.DataType.BOOL)):
        value.dtype = kind
    model = ir.Model(b.graph(outputs, "show_block_select"), ir_version=MIN_IR_VERSION)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(ir.to_proto(model).SerializeToString(), sess_options=options,
                                providers=["CPUExecutionProvider"])


# -- capture ---------------------------------------------------------------------------------------------


def _capture(folder: Path, manifest: Manifest, model: ir.Model, site: Site, ids: list[int],
             threads: int | None) -> dict[str, np.ndarray]:
    """Q, K (and keep, threshold, block_mask where the site reads them) of one prefill of `ids`, from a
    temporary copy of the decoder that outputs them."""
    wanted = {"Q": site.query, "K": site.key, "keep": site.keep, "threshold": site.threshold}
    if site.attributes.get("layout") == "mask":
        wanted = {"block_mask": site.block_mask}
    found: dict[str, np.ndarray] = {}
    fetch: dict[str, str] = {}
    for label, value in wanted.items():
        if value is None:
            continue
        if value.const_value is not None:  # a folded value or an input's default: known without a run
            found[label] = value.const_value.numpy()
            continue
        if value.is_graph_input():
            raise EdgeAttnError(f"layer {site.layer}'s {label} is the decoder input {value.name!r}, which show cannot "
                                "feed; fold it into the graph (calibrate) to draw the layout")
        if not value.is_graph_output():
            model.graph.outputs.append(value)
        fetch[label] = str(value.name)
    if fetch:
        found.update(_prefill(folder, manifest, model, ids, fetch, threads))
    return found


def _prefill(folder: Path, manifest: Manifest, model: ir.Model, ids: list[int], fetch: Mapping[str, str],
             threads: int | None) -> dict[str, np.ndarray]:
    """Run the modified decoder copy once over the prompt (empty KV cache) and return the fetched values."""
    assert manifest.decoder is not None
    embeds = token_embeddings(folder, manifest, ids, threads)
    geo, length = manifest.decoder, len(ids)
    with tempfile.TemporaryDirectory(prefix="edgeattn-show-") as scratch:
        copy = save(model, Path(scratch) / "decoder.onnx")
        session = session_from_onnx(copy, threads=threads)
        feeds: dict[str, np.ndarray] = {}
        for item in session.get_inputs():
            if item.name == "inputs_embeds":
                feeds[item.name] = embeds
            elif item.name == "attention_mask":
                feeds[item.name] = np.ones((1, length), np.int64)
            elif item.name == "position_ids":
                feeds[item.name] = np.arange(length, dtype=np.int64)[None]
            elif item.name.startswith("past_key_values."):
                feeds[item.name] = np.zeros((1, geo.num_kv_heads, 0, geo.head_size), float_array_type(manifest))
            else:
                raise EdgeAttnError(f"{folder}'s decoder takes an input {item.name!r} that a prefill does not feed; "
                                    "show reads decoders as `edgeattn run` runs them")
        values = session.run(list(fetch.values()), feeds)
    return dict(zip(fetch, values))
