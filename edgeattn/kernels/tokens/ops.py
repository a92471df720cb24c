"""Torch-facing calls of the token-pruning kernels (``edgeattn.TokenScore``, ``edgeattn.TokenSelect``).

CUDA tensors run the compiled kernels; CPU tensors run them in the Triton interpreter (needs
``TRITON_INTERPRET=1`` before triton is first imported). Attribute names and meanings are those of
the registry references (``plugins/token_score/reference.py``, ``plugins/token_select/reference.py``):

- :func:`token_scores` — TokenScore, sources "cls" (FasterVLM) and "mean_received", from Q/K
  (4-D, or 3-D with head counts) or from attention probabilities; head mean/max; weights; valid.
- :func:`select_topk` — the k best scores as ascending positions (ties to the lower position).
- :func:`select_regions` — HoloV's per-chunk budgets (TokenSelect mode "regions").
- :func:`gather_tokens` — the kept rows of the features (with the prefix rows when asked).
- :func:`token_select` — the whole TokenSelect op for modes "topk" and "regions".

Differences from the references: sources "text" and "sensitivity" and modes "diversity" and
"maxmin" have no kernel (``EdgeAttnError``); scores are computed in fp32 (the reference's default;
its float64 ``compute_dtype`` agrees to ~1e-6 relative); HoloV's similarity variance comes from a
Gram matrix on tensor cores, so chunk quotas can differ from the reference only when a quota's
``k·c/Σc + 0.001`` lies within ~1e-5 of an integer or two chunk weights within ~1e-6 of each other.
At most :data:`MAX_TOKENS` candidates per row; a tensor ``num_tokens`` is read on the host (one
synchronisation; pass an int inside CUDA graphs).

Imports torch, triton and the standard library only (plus ``edgeattn.errors`` and ``..triton_aot``).
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from types import ModuleType
from typing import Any

import torch

from ...errors import EdgeAttnError
from ..triton_aot import check_interpreter, check_kernel_device, check_tile, last_dim_contiguous, upcast_dot

__all__ = ["chunk_variance", "gather_tokens", "select_regions", "select_topk", "token_scores", "token_select"]

MAX_TOKENS = 16384
"""Most candidates per row: the selection kernels hold a row in registers, and top-k keys keep 14
bits for the position."""


def _next_p2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def _kernels(device: torch.device) -> tuple[ModuleType, ModuleType]:
    check_kernel_device(device, "token kernels run")
    from . import scoring, selection

    check_interpreter(device, selection.token_topk_fwd)
    return scoring, selection


def _ctx(x: torch.Tensor) -> Any:
    return torch.cuda.device(x.device) if x.device.type == "cuda" else nullcontext()


def _four_dims(x: torch.Tensor, heads: int, name: str) -> torch.Tensor:
    if x.dim() == 4:
        return x
    if x.dim() != 3 or heads <= 0 or x.shape[-1] % heads:
        raise EdgeAttnError(f"{name} must be [B, H, S, d], or [B, S, H·d] with its head count; got {tuple(x.shape)}")
    return x.reshape(x.shape[0], x.shape[1], heads, -1).transpose(1, 2)


# -------------------------------------------------------------------------------------- scoring


def token_scores(
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
    valid: torch.Tensor | None = None,
    *,
    source: str = "cls",
    scale: float = 0.0,
    q_num_heads: int = 0,
    kv_num_heads: int = 0,
    query: int = 0,
    skip: int = 1,
    head_reduce: str = "mean",
) -> torch.Tensor:
    """TokenScore sources "cls" / "mean_received": scores fp32 ``[B, S - skip]``.

    ``x``, ``y`` = Q, K of the layer (fp16/bf16/fp32), or ``x`` = probabilities ``[B, H, S, S]``
    with ``y`` None. ``weights`` ``[N]``, ``valid`` ``[B, N]`` (nonzero keeps the score).
    """
    if source not in ("cls", "mean_received"):
        raise EdgeAttnError(f"token_scores has kernels for sources cls and mean_received; got {source!r}")
    if head_reduce not in ("mean", "max"):
        raise EdgeAttnError(f"head_reduce must be mean or max, got {head_reduce!r}")
    from_probs = y is None
    if from_probs:
        if x.dim() != 4 or x.shape[-1] != x.shape[-2]:
            raise EdgeAttnError(f"probabilities must be [B, H, S, S]; got {tuple(x.shape)}")
        probs = last_dim_contiguous(x)
        batch, heads, seq = x.shape[0], x.shape[1], x.shape[-1]
        q = k = probs
    else:
        q = last_dim_contiguous(_four_dims(x, q_num_heads, "Q"))
        k = last_dim_contiguous(_four_dims(y, kv_num_heads or q_num_heads, "K"))
        batch, heads, seq, head_dim = q.shape
        if k.shape[0] != batch or k.shape[2] != seq or k.shape[3] != head_dim or heads % k.shape[1]:
            raise EdgeAttnError(f"Q {tuple(q.shape)} and K {tuple(k.shape)} do not form self-attention heads")
        check_tile("head size", head_dim, "")
        if q.dtype != k.dtype or q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
            raise EdgeAttnError(f"Q and K must share one dtype of fp16/bf16/fp32; got {q.dtype}, {k.dtype}")
    n = seq - skip
    if n < 1 or skip < 0 or not 0 <= query < seq:
        raise EdgeAttnError(f"skip={skip} and query={query} leave no candidate among {seq} tokens")
    dev = x.device
    f32 = dict(dtype=torch.float32, device=dev)
    scores = torch.empty(batch, n, **f32)
    w = weights.to(**f32).contiguous() if weights is not None else scores
    if weights is not None and w.shape != (n,):
        raise EdgeAttnError(f"weights must be [{n}]; got {tuple(weights.shape)}")
    ok = (valid != 0).to(**f32).contiguous() if valid is not None else scores
    if valid is not None and ok.shape != (batch, n):
        raise EdgeAttnError(f"valid must be [{batch}, {n}]; got {tuple(valid.shape)}")
    row0, n_rows = (query, 1) if source == "cls" else (0, seq)
    scoring, _ = _kernels(dev)
    block_m = 16 if source == "cls" else 64
    block_n = 64
    with _ctx(x):
        if from_probs:
            stats, head_dim, sm_scale, upcast = scores, 16, 1.0, False
            qs = ks = (0, 0, 0)
            xs = (probs.stride(0), probs.stride(1), probs.stride(2))
        else:
            head_dim = q.shape[-1]
            sm_scale = float(scale) if scale > 0 else 1.0 / math.sqrt(head_dim)
            upcast = upcast_dot(q.dtype, scoring.token_score_fwd)
            qs, ks, xs = (q.stride(0), q.stride(1), q.stride(2)), (k.stride(0), k.stride(1), k.stride(2)), (0, 0, 0)
            stats = torch.empty(batch * heads, n_rows, 2, **f32)
            scoring.token_row_stats_fwd[(-(-n_rows // block_m), batch * heads)](
                q, k, sm_scale, *qs, *ks, heads, heads // k.shape[1], seq, row0, n_rows, stats,
                HEAD_DIM=head_dim, BLOCK_M=block_m, BLOCK_N=block_n, UPCAST_DOT=upcast, num_warps=4,
            )  # fmt: skip
        kv_group = 1 if from_probs else heads // k.shape[1]
        scoring.token_score_fwd[(-(-n // block_n), batch)](
            q, k, stats, probs if from_probs else scores, w, ok,
            sm_scale, *qs, *ks, *xs,
            heads, kv_group, seq, row0, n_rows, skip, n,
            scores,
            HEAD_DIM=head_dim, BLOCK_M=block_m, BLOCK_N=block_n, FROM_PROBS=from_probs,
            HEAD_REDUCE=0 if head_reduce == "mean" else 1, USE_WEIGHTS=weights is not None,
            USE_VALID=valid is not None, UPCAST_DOT=upcast, num_warps=8 if from_probs else 4,
        )  # fmt: skip
    return scores


# ------------------------------------------------------------------------------------ selection


def _check_scores(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, int]:
    if scores.dim() != 2:
        raise EdgeAttnError(f"scores must be [B, N]; got {tuple(scores.shape)}")
    n = scores.shape[1]
    if not 1 <= k <= n:
        raise EdgeAttnError(f"k = {k} is outside 1..{n}")
    if n > MAX_TOKENS:
        raise EdgeAttnError(f"{n} candidates exceed the selection kernels' {MAX_TOKENS}")
    return scores.to(torch.float32).contiguous(), n


def _warps(n_p2: int) -> int:
    return min(16, max(4, n_p2 // 512))


def select_topk(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The k highest scores per row as ascending positions, int64 ``[B, k]`` (ties: lower position)."""
    scores, n = _check_scores(scores, k)
    _, selection = _kernels(scores.device)
    out = torch.empty(scores.shape[0], k, dtype=torch.int64, device=scores.device)
    n_p2 = max(16, _next_p2(n))
    with _ctx(scores):
        selection.token_topk_fwd[(scores.shape[0],)](scores, n, k, out, N_P2=n_p2, num_warps=_warps(n_p2))
    return out


def chunk_variance(scores: torch.Tensor, keys: torch.Tensor, regions: int) -> tuple[torch.Tensor, torch.Tensor]:
    """HoloV's per-token terms: the variance of its cosine similarities inside its chunk (fp32
    ``[B, N]``) and its rank by score inside its chunk (int32 ``[B, N]``, ties to the lower position)."""
    keys = last_dim_contiguous(keys)
    scores = scores.to(torch.float32).contiguous()
    batch, n, dim = keys.shape
    parts = min(regions, n)
    chunk_p2 = max(16, _next_p2(-(-n // parts)))
    _, selection = _kernels(keys.device)
    var = torch.empty(batch, n, dtype=torch.float32, device=keys.device)
    rank = torch.empty(batch, n, dtype=torch.int32, device=keys.device)
    upcast = upcast_dot(keys.dtype, selection.token_topk_fwd)
    block_r = min(64, chunk_p2)
    with _ctx(keys):
        selection.token_chunk_variance_fwd[(parts, batch)](
            keys, scores, keys.stride(0), keys.stride(1), n, parts, dim, var, rank,
            CHUNK_P2=chunk_p2, BLOCK_R=block_r, BLOCK_C=32 if chunk_p2 >= 256 else 64, UPCAST_DOT=upcast,
            num_warps=8 if block_r * chunk_p2 >= 8192 else 4,
        )  # fmt: skip
    return var, rank


def select_regions(
    scores: torch.Tensor,
    keys: torch.Tensor,
    k: int,
    *,
    regions: int = 16,
    alpha: float = 0.09,
    attention_scale: float = 1000.0,
) -> torch.Tensor:
    """HoloV (TokenSelect mode "regions"): ascending kept positions, int64 ``[B, k]``.

    ``scores`` ``[B, N]`` is the attention a; ``keys`` ``[B, N, C]`` the vectors of the similarities.
    """
    scores, n = _check_scores(scores, k)
    if keys.dim() != 3 or keys.shape[:2] != scores.shape:
        raise EdgeAttnError(f"keys must be [B, N, C] with N = {n}; got {tuple(keys.shape)}")
    if regions < 1:
        raise EdgeAttnError(f"regions must be >= 1, got {regions}")
    var, rank = chunk_variance(scores, keys, regions)
    parts = min(regions, n)
    n_p2 = max(16, _next_p2(n))
    _, selection = _kernels(scores.device)
    out = torch.empty(scores.shape[0], k, dtype=torch.int64, device=scores.device)
    with _ctx(scores):
        selection.token_regions_fwd[(scores.shape[0],)](
            scores, var, rank, float(alpha), float(attention_scale), n, parts, k, out,
            N_P2=n_p2, PARTS_P2=max(2, _next_p2(parts)), num_warps=_warps(n_p2),
        )  # fmt: skip
    return out


def gather_tokens(
    features: torch.Tensor, indices: torch.Tensor, *, prefix: int = 0, keep_prefix: int = 0
) -> torch.Tensor:
    """``features`` ``[B, prefix + N, D]``, ``indices`` int64 ``[B, k]`` (candidate positions) ->
    ``[B, k, D]``, or ``[B, prefix + k, D]`` with the prefix rows first when ``keep_prefix``."""
    if features.dim() != 3 or indices.dim() != 2 or indices.shape[0] != features.shape[0]:
        raise EdgeAttnError(f"features [B, P + N, D] and indices [B, k] expected; got {tuple(features.shape)}, "
                            f"{tuple(indices.shape)}")  # fmt: skip
    features = last_dim_contiguous(features)
    indices = indices.to(torch.int64).contiguous()
    batch, _, dim = features.shape
    k = indices.shape[1]
    out_prefix = prefix if keep_prefix else 0
    out = torch.empty(batch, out_prefix + k, dim, dtype=features.dtype, device=features.device)
    _, selection = _kernels(features.device)
    block_r, block_d = 16, min(256, max(16, _next_p2(dim)))
    with _ctx(features):
        selection.token_gather_fwd[(-(-(out_prefix + k) // block_r), -(-dim // block_d), batch)](
            features, indices, features.stride(0), features.stride(1), out.stride(0), out.stride(1),
            prefix, k, out_prefix, dim, out, BLOCK_R=block_r, BLOCK_D=block_d, num_warps=8,
        )  # fmt: skip
    return out


def token_select(
    scores: torch.Tensor,
    features: torch.Tensor,
    num_tokens: torch.Tensor | int | None = None,
    keys: torch.Tensor | None = None,
    *,
    k: int = 64,
    mode: str = "topk",
    prefix: int = 0,
    keep_prefix: int = 0,
    regions: int = 16,
    alpha: float = 0.09,
    attention_scale: float = 1000.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """TokenSelect modes "topk" and "regions": (selected ``[B, k, D]``, kept_indices int64 ``[B, k]``)."""
    if mode not in ("topk", "regions"):
        raise EdgeAttnError(f"token_select has kernels for modes topk and regions; got {mode!r}")
    count = int(num_tokens) if num_tokens is not None else int(k)
    if mode == "topk":
        indices = select_topk(scores, count)
    else:
        indices = select_regions(scores, features[:, prefix:] if keys is None else keys, count, regions=regions,
                                 alpha=alpha, attention_scale=attention_scale)  # fmt: skip
    return gather_tokens(features, indices, prefix=prefix, keep_prefix=keep_prefix), indices
