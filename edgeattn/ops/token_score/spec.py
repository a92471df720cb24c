"""edgeattn.TokenScore: one importance score per candidate visual token, [B, N] float32.

Sources (attribute `source`):

- "cls": the [CLS] query row of an encoder layer's attention over the candidate keys (FasterVLM,
  HoloV, FlashVLM's attention prior). X, Y = Q, K of the layer (4-D [B, H, S, d] or 3-D [B, S, H·d]
  with the head counts as attributes; grouped K heads are shared by H/Hkv query heads), or X = the
  layer's softmax probabilities [B, H, S, S] and Y absent. Row `query` of each head, keys from `skip`
  on (the [CLS] and any register tokens are not candidates): s = reduce_h attn[:, h, query, skip:].
- "mean_received": the mean attention each candidate key receives, over every query (encoders without
  [CLS]): s = reduce_h mean_i attn[:, h, i, skip:].
- "text": FlashVLM's text relevance of the projected tokens X = Z [B, N, D] to the prompt's token
  embeddings Y = E [B, T, D]: Ẑ, Ê L2-normalised, S = ẐÊᵀ, r_i = Σ_l softmax_l(S_i/text_temperature)·S_il,
  t = minmax(softmax_i(r/relevance_temperature)^power), entries below the `quantile` quantile (linear
  interpolation) times `damping`, minmax again; with a `prior` A (the attention score):
  minmax(minmax(A)^(1-eta) · t^eta).
- "sensitivity": ZOO-Prune's zeroth-order sensitivity through the projector M from the central
  differences X = M(x + h·u_j), Y = M(x - h·u_j) [B, N, m, D]: s = mean_j ||X - Y|| / (2h), h = `step`.

Then (attention debiasing) the score is multiplied by `weights` [N] (positional recency weights) and
by `valid` [B, N] (nonzero = a patch that is not mostly padding).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from edgeattn.ops.spec import AttrSpec, IOSpec, Shape

NAME = "TokenScore"
SOURCES = ("cls", "mean_received", "text", "sensitivity")
ATTENTION_SOURCES = ("cls", "mean_received")

DOC = (
    "Per-visual-token importance [B, N]: the [CLS] attention row or the mean attention received at an "
    "encoder layer (from Q/K or the softmax), text relevance (FlashVLM), or projector sensitivity (ZOO); "
    "head reduction, positional debias weights and a padding mask."
)

_VALID_TYPES = ("tensor(bool)", "tensor(float)", "tensor(float16)", "tensor(bfloat16)", "tensor(double)",
                "tensor(int64)")

INPUTS = (
    IOSpec("X", "Q [B, H, S, d] or [B, S, H·d]; attention probabilities [B, H, S, S]; Z [B, N, D]; or M(x + h·u) [B, N, m, D]"),
    IOSpec("Y", "K [B, Hkv, S, d] or [B, S, Hkv·d]; absent with probabilities; E [B, T, D]; or M(x - h·u)", optional=True),
    IOSpec("prior", "an attention score [B, N] fused with the text relevance (source text)", optional=True),
    IOSpec("weights", "positional debias weights [N] multiplied into the score", optional=True),
    IOSpec("valid", "[B, N], nonzero where the patch is an image patch (padding debias)", optional=True,
           types=_VALID_TYPES),
)

OUTPUTS = (IOSpec("scores", "[B, N] float32, larger = more important", types=("tensor(float)",)),)

ATTRIBUTES = (
    AttrSpec("source", "string", "cls", "what the score is computed from", choices=SOURCES),
    AttrSpec("scale", "float", 0.0, "factor on QKᵀ; 0 means 1/sqrt(d) (Q/K operands)", from_site=True),
    AttrSpec("q_num_heads", "int", 0, "query heads of a 3-D Q; 0 for 4-D", from_site=True),
    AttrSpec("kv_num_heads", "int", 0, "key heads of a 3-D K; 0 for 4-D", from_site=True),
    AttrSpec("query", "int", 0, "position of the [CLS] query row (source cls)"),
    AttrSpec("skip", "int", 1, "leading key tokens that are not candidates ([CLS], registers)"),
    AttrSpec("head_reduce", "string", "mean", "how heads are combined", choices=("mean", "max")),
    AttrSpec("eta", "float", 0.5, "weight of the text relevance against the attention prior (text)"),
    AttrSpec("text_temperature", "float", 0.05, "temperature of the softmax over prompt tokens (text)"),
    AttrSpec("relevance_temperature", "float", 0.01, "temperature of the softmax over image tokens (text)"),
    AttrSpec("power", "float", 2.5, "sharpening exponent of the relevance (text)"),
    AttrSpec("quantile", "float", 0.995, "relevance below this quantile is damped (text)"),
    AttrSpec("damping", "float", 0.1, "factor on relevance below the quantile (text)"),
    AttrSpec("step", "float", 0.01, "finite-difference step h of the perturbations (sensitivity)"),
)


def infer_shapes(shapes: Sequence[Shape | None], attributes: Mapping[str, Any]) -> list[Shape | None]:
    """[B, N]: N = S - skip for attention sources, the token axis of X otherwise."""
    x = shapes[0]
    if x is None:
        return [None]
    source = attributes.get("source", "cls")
    if source in ATTENTION_SOURCES:
        seq_axis = 1 if len(x) == 3 else 2
        seq = x[seq_axis] if len(x) in (3, 4) else None
        skip = int(attributes.get("skip", 1))
        return [[x[0], seq - skip if isinstance(seq, int) else None]]
    return [[x[0], x[1]]]
