"""PyTorch reference of edgeattn.BlockSelect: which key blocks each query block attends.

Blocks and positions
    Query row i sits at position p_i = offset + i, with offset = Lkv - Lq when causal = 2 (a query
    block at the end of the keys: a KV cache), else 0. Blocks are aligned to positions: query block
    T holds the rows with p_i // b == T, key block j the keys [j·b, (j+1)·b) ∩ [0, Lkv). The output
    has one row per query block that holds a row (T = offset // b ... (offset + Lq - 1) // b, indexed
    t = T - offset // b) and one column per key block (nKB = ceil(Lkv / b)). With causal = 1 or 2,
    key block j is *available* to query block T iff j <= T (its first key is visible to the block's
    last row); without causal every block is available.

Scores
    q̄ = mean of the block's query rows; k̄ = mean, max or min (per channel, `key_pool`) of the
    block's keys; s = scale · q̄·k̄ (scale 0 means 1/sqrt(d)); per query head P = softmax of s over
    the available blocks (query_pool "rows": P = the mean over the block's rows r of the softmax of
    scale · q_r·k̄ over the blocks available to the block); the selection of a key/value head uses
    the mean (or max, `group_reduce`) of P over the query heads that read it. The mask input of the
    attention is not used here (it still applies inside the attention).

Selection (per key/value head and query block)
    Forced blocks: the `local_blocks` blocks ending at the diagonal (T - local < j <= T; without
    causal |j - T| < local) and the first `sink_blocks` blocks, when available.
    - topk: the forced blocks and the best of the others by P until the budget is met; budget =
      keep_blocks if > 0 else ceil(keep · nKB - 1e-4) (at least 1; the product in float32). Ties go
      to the lower block index.
    - threshold: the forced blocks and every available block with P > threshold.
    - cumprob: blocks in the topk order (forced first, then by P) while the mass of the blocks
      before them is < cum_prob (the smallest prefix that reaches it), and the forced blocks.
    The last `dense_last_rows` query blocks keep every available block, and with dense_decode a
    call with one query row (a decode step) keeps every available block.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from edgeattn.errors import EdgeAttnError

MODES = ("topk", "threshold", "cumprob")
KEY_POOLS = ("mean", "max", "min")
GROUP_REDUCES = ("mean", "max")


@dataclass(frozen=True)
class Geometry:
    q_len: int
    kv_len: int
    block: int
    causal: int
    offset: int  # position of query row 0
    first_block: int  # block index T of query row 0
    n_q_blocks: int
    n_kv_blocks: int

    @property
    def front(self) -> int:
        """Rows before query row 0 in its block (padding when the rows are laid out in blocks)."""
        return self.offset - self.first_block * self.block


def block_geometry(q_len: int, kv_len: int, block: int, causal: int) -> Geometry:
    if block < 1:
        raise EdgeAttnError(f"block_size must be >= 1, got {block}")
    if q_len < 1 or kv_len < 1:
        raise EdgeAttnError(f"block attention needs at least one query and one key (got {q_len} and {kv_len})")
    offset = kv_len - q_len if causal == 2 else 0
    if offset < 0:
        raise EdgeAttnError(f"causal attention with {q_len} queries over {kv_len} keys: more queries than keys")
    first = offset // block
    last = (offset + q_len - 1) // block
    return Geometry(q_len, kv_len, block, causal, offset, first, last - first + 1, -(-kv_len // block))


def row_blocks(geo: Geometry) -> torch.Tensor:
    """Block row t of each query row: [Lq] int64."""
    return (geo.offset + torch.arange(geo.q_len)) // geo.block - geo.first_block


def available_blocks(geo: Geometry) -> torch.Tensor:
    """[nQB, nKB] bool."""
    absolute = geo.first_block + torch.arange(geo.n_q_blocks)[:, None]
    cols = torch.arange(geo.n_kv_blocks)[None, :]
    if geo.causal:
        return cols <= absolute
    return torch.ones(geo.n_q_blocks, geo.n_kv_blocks, dtype=torch.bool)


def forced_blocks(geo: Geometry, local_blocks: int, sink_blocks: int) -> torch.Tensor:
    """[nQB, nKB] bool: local (diagonal) and sink blocks that are available."""
    absolute = geo.first_block + torch.arange(geo.n_q_blocks)[:, None]
    cols = torch.arange(geo.n_kv_blocks)[None, :]
    if geo.causal:
        local = (cols <= absolute) & (cols > absolute - local_blocks)
    else:
        local = (cols - absolute).abs() < local_blocks
    return (local | (cols < sink_blocks)) & available_blocks(geo)


def pooled_queries(q: torch.Tensor, geo: Geometry) -> torch.Tensor:
    """[B, H, nQB, d]: the mean of each query block's rows."""
    rows = row_blocks(geo)
    one_hot = torch.nn.functional.one_hot(rows, geo.n_q_blocks).to(q.dtype)  # [Lq, nQB]
    return torch.einsum("bhld,lt->bhtd", q, one_hot) / one_hot.sum(0)[:, None]


def pooled_keys(k: torch.Tensor, geo: Geometry, pool: str) -> torch.Tensor:
    """[B, H, nKB, d]: each key block pooled by mean, max or min over its keys."""
    if pool not in KEY_POOLS:
        raise EdgeAttnError(f"key_pool must be one of {', '.join(KEY_POOLS)}, got {pool!r}")
    batch, heads, length, dim = k.shape
    padded_len = geo.n_kv_blocks * geo.block
    fill = {"mean": 0.0, "max": -math.inf, "min": math.inf}[pool]
    padded = torch.full((batch, heads, padded_len, dim), fill, dtype=k.dtype)
    padded[:, :, :length] = k
    blocks = padded.view(batch, heads, geo.n_kv_blocks, geo.block, dim)
    if pool == "max":
        return blocks.amax(3)
    if pool == "min":
        return blocks.amin(3)
    counts = torch.clamp(length - torch.arange(geo.n_kv_blocks) * geo.block, max=geo.block).to(k.dtype)
    return blocks.sum(3) / counts[:, None]


def block_probabilities(q: torch.Tensor, k: torch.Tensor, geo: Geometry, scale: float, pool: str,
                        query_pool: str = "mean") -> torch.Tensor:
    """Per query head block probabilities [B, Hq, nQB, nKB]: softmax over the available blocks of
    scale·q̄·k̄ (query_pool mean), or the mean over each block's rows of softmax(scale·q·k̄) (rows)."""
    group = q.shape[1] // k.shape[1]
    factor = scale if scale > 0 else 1.0 / math.sqrt(q.shape[-1])
    k_bar = pooled_keys(k, geo, pool).repeat_interleave(group, dim=1)
    if query_pool == "mean":
        scores = torch.matmul(pooled_queries(q, geo), k_bar.transpose(-1, -2)) * factor
        return torch.softmax(scores.masked_fill(~available_blocks(geo), -math.inf), dim=-1)
    if query_pool != "rows":
        raise EdgeAttnError(f"query_pool must be mean or rows, got {query_pool!r}")
    rows = row_blocks(geo)
    scores = torch.matmul(q, k_bar.transpose(-1, -2)) * factor  # [B, Hq, Lq, nKB]
    probs = torch.softmax(scores.masked_fill(~available_blocks(geo)[rows], -math.inf), dim=-1)
    one_hot = torch.nn.functional.one_hot(rows, geo.n_q_blocks).to(q.dtype)  # [Lq, nQB]
    return torch.einsum("bhlk,lt->bhtk", probs, one_hot) / one_hot.sum(0)[:, None]


def group_probabilities(probs: torch.Tensor, kv_heads: int, reduce: str) -> torch.Tensor:
    """[B, Hq, ...] -> [B, Hkv, ...] by the mean or max over each key/value head's query heads."""
    if reduce not in GROUP_REDUCES:
        raise EdgeAttnError(f"group_reduce must be one of {', '.join(GROUP_REDUCES)}, got {reduce!r}")
    batch, heads = probs.shape[:2]
    grouped = probs.reshape(batch, kv_heads, heads // kv_heads, *probs.shape[2:])
    return grouped.mean(2) if reduce == "mean" else grouped.amax(2)


def budget(geo: Geometry, keep: float, keep_blocks: int) -> int:
    """Blocks per query block in topk mode."""
    if keep_blocks > 0:
        return keep_blocks
    if not 0.0 < keep <= 1.0:
        raise EdgeAttnError(f"keep must be in (0, 1], got {keep}")
    return budget_of(keep, geo.n_kv_blocks)


BUDGET_SLACK = 1e-4  # keep·nKB within this of an integer rounds down to it (float32 products)


def budget_of(keep: float, n_kv_blocks: int) -> int:
    """max(1, ceil(keep·nKB - 1e-4)), the product taken in float32 as the ONNX body takes it."""
    product = float(torch.tensor(keep, dtype=torch.float32) * torch.tensor(float(n_kv_blocks), dtype=torch.float32))
    return max(1, math.ceil(product - BUDGET_SLACK))


def select_blocks(
    probs: torch.Tensor, geo: Geometry, *, mode: str, keep: float, keep_blocks: int, threshold: float,
    cum_prob: float, local_blocks: int, sink_blocks: int, dense_last_rows: int, dense_decode: int,
) -> torch.Tensor:
    """The selection rule applied to grouped probabilities [B, H, nQB, nKB] -> bool of that shape."""
    if mode not in MODES:
        raise EdgeAttnError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    available = available_blocks(geo)
    forced = forced_blocks(geo, local_blocks, sink_blocks)
    priority = torch.where(available, probs + 2.0 * forced, torch.full_like(probs, -1.0))
    order = torch.sort(priority, dim=-1, descending=True, stable=True).indices
    rank = torch.empty_like(order).scatter_(-1, order, torch.arange(geo.n_kv_blocks).expand_as(order).contiguous())
    if mode == "topk":
        chosen = rank < budget(geo, keep, keep_blocks)
    elif mode == "threshold":
        chosen = probs > threshold
    else:
        sorted_probs = torch.gather(torch.where(available, probs, torch.zeros_like(probs)), -1, order)
        before_sorted = torch.cumsum(sorted_probs, -1) - sorted_probs
        before = torch.empty_like(before_sorted).scatter_(-1, order, before_sorted)
        chosen = before < cum_prob
    selected = (chosen | forced) & available
    dense_rows = torch.arange(geo.n_q_blocks) >= geo.n_q_blocks - dense_last_rows
    if dense_decode and geo.q_len == 1:
        dense_rows = torch.ones_like(dense_rows)
    return torch.where(dense_rows[:, None], available, selected)


def check_selection(attrs: dict[str, Any]) -> None:
    """EdgeAttnError sentences for selection parameters out of range."""
    if attrs["local_blocks"] < 0 or attrs["sink_blocks"] < 0 or attrs["dense_last_rows"] < 0:
        raise EdgeAttnError("local_blocks, sink_blocks and dense_last_rows must be >= 0")
    if attrs["keep_blocks"] < 0:
        raise EdgeAttnError(f"keep_blocks must be >= 0, got {attrs['keep_blocks']}")
    if attrs["mode"] == "topk" and attrs["keep_blocks"] == 0 and not 0.0 < attrs["keep"] <= 1.0:
        raise EdgeAttnError(f"keep must be in (0, 1], got {attrs['keep']}")
    if attrs["mode"] == "cumprob" and not 0.0 < attrs["cum_prob"] <= 1.0:
        raise EdgeAttnError(f"cum_prob must be in (0, 1], got {attrs['cum_prob']}")


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    return x.reshape(x.shape[0], x.shape[1], heads, -1).transpose(1, 2)


def block_select_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    *,
    scale: float = 0.0,
    causal: int = 0,
    q_num_heads: int = 0,
    kv_num_heads: int = 0,
    block_size: int = 64,
    mode: str = "topk",
    keep: float = 0.25,
    keep_blocks: int = 0,
    threshold: float = 0.01,
    cum_prob: float = 0.9,
    query_pool: str = "mean",
    key_pool: str = "mean",
    group_reduce: str = "mean",
    local_blocks: int = 1,
    sink_blocks: int = 1,
    dense_last_rows: int = 0,
    dense_decode: int = 1,
    compute_dtype: torch.dtype | None = torch.float64,
) -> torch.Tensor:
    """The selected blocks, bool [B, Hkv, nQB, nKB] (see the module docstring)."""
    if q.dim() == 3:
        q, k = split_heads(q, q_num_heads), split_heads(k, kv_num_heads or q_num_heads)
    if compute_dtype is not None:
        q, k = q.to(compute_dtype), k.to(compute_dtype)
    attrs = dict(mode=mode, keep=keep, keep_blocks=keep_blocks, threshold=threshold, cum_prob=cum_prob,
                 local_blocks=local_blocks, sink_blocks=sink_blocks, dense_last_rows=dense_last_rows)
    check_selection(attrs)
    geo = block_geometry(q.shape[2], k.shape[2], block_size, causal)
    probs = group_probabilities(block_probabilities(q, k, geo, scale, key_pool, query_pool), k.shape[1], group_reduce)
    return select_blocks(probs, geo, dense_decode=dense_decode, **attrs)
