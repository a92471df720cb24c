"""edgeattn.TokenSelect: keep k visual tokens, in raster order.

Inputs: `scores` [B, N] (from TokenScore or constant), `features` [B, P + N, D] whose first P =
`prefix` tokens are not candidates ([CLS]), optionally `num_tokens` (k at run time, int64 scalar) and
`keys` [B, N, C], the vectors whose cosine similarities drive the similarity-aware modes (default: the
candidate features). Outputs: `selected` [B, k, D] (with the prefix tokens first when `keep_prefix`)
and `kept_indices` [B, k] int64, ascending candidate positions (0 = first candidate). Every ordering
breaks ties by the lower position (the ONNX TopK rule).

Modes:

- "topk": the k highest scores.
- "regions" (HoloV): the N candidates are cut into R = min(`regions`, N) contiguous chunks, the first
  N mod R one token longer. a' = `attention_scale`·score; v_i = (unbiased) variance of token i's cosine
  similarities to the other tokens of its chunk; s_i = a'_i + `alpha`·v_i·mean|a'|/mean|v|; chunk
  weight c = mean of s over the chunk; quota q = min(⌊k·c/Σc + 0.001⌋, chunk size) (float64); the
  k - Σq leftover places go one per chunk per round, heaviest chunks first, to chunks with room. Inside a
  chunk its places go to its highest scores.
- "diversity" (VisPruner / FlashVLM): the ⌊k·`important_ratio`⌋ highest scores, then from the rest, in
  score order, repeated bipartite de-duplication: even/odd split, drop the r = min(`dedup_step`, excess)
  even tokens whose best cosine similarity to an odd token is highest (the survivors keep that
  similarity order, then the odd tokens follow), until k tokens remain.
- "maxmin" (ZOO-Prune's sensitivity-aware diverse selection): w = minmax(score) (ones when all equal),
  first the token of highest w, then repeatedly the unselected token maximising w_i·min_{j kept}(1 - cos(key_i, key_j)).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from edgeattn.ops.spec import AttrSpec, IOSpec, Shape

NAME = "TokenSelect"
MODES = ("topk", "regions", "diversity", "maxmin")
SIMILARITY_MODES = ("regions", "diversity", "maxmin")

DOC = (
    "Keep k tokens (top-k, HoloV per-region budgets, FlashVLM diversity fill, ZOO greedy max-min): "
    "gathered tokens [B, k, D] and ascending kept_indices [B, k]; k is an attribute or a run-time input."
)

INPUTS = (
    IOSpec("scores", "[B, N] importance of each candidate token"),
    IOSpec("features", "[B, prefix + N, D] the tokens to gather from"),
    IOSpec("num_tokens", "k at run time (int64 scalar), instead of the attribute", optional=True,
           types=("tensor(int64)",), tunable_for="k"),
    IOSpec("keys", "[B, N, C] vectors for cosine similarity (default: the candidate features)", optional=True),
)

OUTPUTS = (
    IOSpec("selected", "[B, k, D] kept tokens in raster order ([B, prefix + k, D] with keep_prefix)"),
    IOSpec("kept_indices", "[B, k] int64 ascending candidate positions", types=("tensor(int64)",)),
)

ATTRIBUTES = (
    AttrSpec("k", "int", 64, "tokens to keep (1 <= k <= N)", tunable=True),
    AttrSpec("mode", "string", "topk", "selection rule", choices=MODES),
    AttrSpec("prefix", "int", 0, "leading tokens of features that are not candidates ([CLS])"),
    AttrSpec("keep_prefix", "int", 0, "1: the prefix tokens are output before the kept ones", choices=(0, 1)),
    AttrSpec("regions", "int", 16, "contiguous chunks of the raster sequence (regions)"),
    AttrSpec("alpha", "float", 0.09, "weight of the similarity variance in the chunk score (regions)"),
    AttrSpec("attention_scale", "float", 1000.0, "factor on the attention score (regions)"),
    AttrSpec("important_ratio", "float", 0.5, "share of k taken by score before the diversity fill (diversity)"),
    AttrSpec("dedup_step", "int", 8, "tokens dropped per de-duplication round (diversity)"),
)


def infer_shapes(shapes: Sequence[Shape | None], attributes: Mapping[str, Any]) -> list[Shape | None]:
    scores, features = shapes[0], shapes[1]
    batch = scores[0] if scores is not None else features[0] if features is not None else None
    k = int(attributes["k"]) if "k" in attributes and attributes["k"] is not None else None
    width = features[-1] if features is not None else None
    prefix = int(attributes.get("prefix", 0)) if int(attributes.get("keep_prefix", 0)) else 0
    rows = k + prefix if k is not None else None
    return [[batch, rows, width], [batch, k]]
