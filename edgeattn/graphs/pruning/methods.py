"""Pruning methods by name: `METHOD:K[,param=value...]` -> a validated `PruneSpec`.

    fastervlm:64                  [CLS] attention at the feature layer, top-k (FasterVLM)
    mean-received:64              mean attention received, top-k (encoders without [CLS])
    holov:64                      [CLS] attention, per-region budgets with similarity variance (HoloV)
    flashvlm:64                   [CLS] attention x prompt relevance, half top-k, half de-duplicated (FlashVLM)
    zeroth-order:64               projector sensitivity (central differences), greedy max-min (ZOO-Prune)
    random:64,seed=0              a fixed seeded random subset (baseline)
    uniform:64                    a spatial grid of patches (baseline)

Common parameters: layer (attention layer index as `inspect` numbers them; negative counts from the
last; default: the last layer in the graph, i.e. the layer the features come from — LLaVA's
feature layer, the penultimate encoder layer, in a LLaVA vision.onnx), head_reduce (mean|max),
cls (auto|0|1: whether token 0 is a [CLS]), keep_cls (0|1), dynamic (0|1: k also from the
`num_tokens` input), output (the graph output to prune), debias (a file of N positional weights) and
padding (0|1: a `patch_valid` [B, N] input zeroes the score of padding patches). Method parameters
are listed in `METHODS`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from edgeattn.errors import PruningError
from edgeattn.ranges import MAX_LAYERS, check_number, flag_items

MAX_TOKENS = 1 << 20  # a budget k beyond any image's token count (checked against the encoder later)


@dataclass(frozen=True)
class Param:
    default: Any
    doc: str
    choices: tuple[Any, ...] | None = None
    bounds: tuple[float, float] | None = None  # inclusive range of a number (every number must be finite)


COMMON: dict[str, Param] = {
    "layer": Param(None, "attention layer to score at (negative: from the last; default: the last one)",
                   bounds=(-MAX_LAYERS, MAX_LAYERS - 1)),
    "head_reduce": Param("mean", "how heads are combined", ("mean", "max")),
    "cls": Param("auto", "whether token 0 of the encoder is a [CLS] token", ("auto", 0, 1)),
    "keep_cls": Param(0, "1: the [CLS] token stays first in the pruned output", (0, 1)),
    "dynamic": Param(0, "1: k may also be given at run time through the num_tokens input", (0, 1)),
    "output": Param(None, "graph output holding the tokens (default image_features, or the only output)"),
    "debias": Param(None, "file with N positional weights (.npy, .json or .txt) multiplied into the score"),
    "padding": Param(0, "1: a patch_valid [B, N] input zeroes the score of padding patches", (0, 1)),
}


@dataclass(frozen=True)
class Method:
    name: str
    doc: str
    score: str  # "cls", "mean_received", "text", "sensitivity", "constant"
    select: str  # a TokenSelect mode
    params: Mapping[str, Param] = field(default_factory=dict)

    @property
    def uses_attention(self) -> bool:
        return self.score in ("cls", "mean_received", "text")

    @property
    def needs_cls(self) -> bool:
        return self.score in ("cls", "text")


_FLASH = {
    "eta": Param(0.5, "weight of the prompt relevance against the attention", bounds=(0.0, 1.0)),
    "text_temperature": Param(0.05, "softmax temperature over prompt tokens", bounds=(1e-6, 1e6)),
    "relevance_temperature": Param(0.01, "softmax temperature over image tokens", bounds=(1e-6, 1e6)),
    "power": Param(2.5, "sharpening exponent", bounds=(0.0, 100.0)),
    "quantile": Param(0.995, "relevance below this quantile is damped", bounds=(0.0, 1.0)),
    "damping": Param(0.1, "factor on damped relevance", bounds=(0.0, 1.0)),
    "important_ratio": Param(0.5, "share of k kept by score before the diversity fill", bounds=(0.0, 1.0)),
    "dedup_step": Param(8, "tokens dropped per de-duplication round", bounds=(1, 1 << 20)),
    "projector": Param("*projector*", "glob naming the projector nodes (their input is the de-dup feature)"),
}

METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("fastervlm", "[CLS] attention row at the feature layer, head mean, top-k (FasterVLM)", "cls", "topk"),
        Method("mean-received", "mean attention each token receives over all queries and heads, top-k", "mean_received",
               "topk"),
        Method("holov", "[CLS] attention, per-region budgets from attention and similarity variance (HoloV)", "cls",
               "regions", {"regions": Param(16, "contiguous chunks of the raster sequence", bounds=(1, 1 << 16)),
                           "alpha": Param(0.09, "weight of the similarity variance", bounds=(-1e6, 1e6)),
                           "attention_scale": Param(1000.0, "factor on the attention score", bounds=(-1e9, 1e9))}),
        Method("flashvlm", "[CLS] attention fused with prompt relevance; half top-k, half diversity fill (FlashVLM)",
               "text", "diversity", _FLASH),
        Method("zeroth-order", "projector sensitivity by central differences, greedy max-min (ZOO-Prune)", "sensitivity",
               "maxmin", {"directions": Param(64, "random unit directions m", bounds=(1, 4096)),
                          "step": Param(0.01, "finite-difference step h", bounds=(1e-9, 1e3)),
                          "seed": Param(0, "seed of the directions", bounds=(0, 2**31 - 1)),
                          "projector": Param("*projector*", "glob naming the projector nodes (M)")}),
        Method("random", "a fixed seeded random subset of positions (baseline)", "constant", "topk",
               {"seed": Param(0, "seed of the subset", bounds=(0, 2**31 - 1))}),
        Method("uniform", "a spatial grid of patches (baseline)", "constant", "topk"),
    )
}


@dataclass(frozen=True)
class PruneSpec:
    """A method, a budget k and the method's parameters (every parameter resolved to its default)."""

    method: str
    k: int
    params: Mapping[str, Any]

    @property
    def info(self) -> Method:
        return METHODS[self.method]

    def text(self) -> str:
        given = ",".join(f"{k}={v}" for k, v in self.params.items() if v != _defaults(self.method).get(k))
        return f"{self.method}:{self.k}" + (f",{given}" if given else "")

    def to_json(self) -> dict[str, Any]:
        return {"method": self.method, "k": self.k, "params": dict(self.params)}


def _defaults(method: str) -> dict[str, Any]:
    return {name: p.default for name, p in {**COMMON, **METHODS[method].params}.items()}


def parse_prune(text: str) -> PruneSpec:
    """`METHOD:K[,param=value...]` -> PruneSpec; PruningError with one sentence on a bad spec."""
    head, _, rest = text.strip().partition(",")
    method, colon, budget = head.partition(":")
    method = method.strip().lower()
    if method not in METHODS:
        raise PruningError(f"unknown pruning method {method!r}; choose one of: {', '.join(METHODS)}")
    if not colon or not budget.strip():
        raise PruningError(f"--prune {text!r} gives no budget; write {method}:K, e.g. {method}:64")
    try:
        k = int(budget)
    except ValueError:
        raise PruningError(f"the budget in --prune {text!r} is {budget!r}, not a whole number of tokens") from None
    try:
        params = dict(flag_items(rest, "--prune", text))
    except ValueError as err:
        raise PruningError(str(err)) from None
    return make_spec(method, k, params)


def make_spec(method: str, k: int, params: Mapping[str, Any] | None = None) -> PruneSpec:
    """A PruneSpec from values (strings are converted to each parameter's type)."""
    if method not in METHODS:
        raise PruningError(f"unknown pruning method {method!r}; choose one of: {', '.join(METHODS)}")
    if not 1 <= k <= MAX_TOKENS:
        raise PruningError(f"the pruning budget k must be at least 1 token and at most {MAX_TOKENS} (got {k})")
    known = {**COMMON, **METHODS[method].params}
    resolved = {name: p.default for name, p in known.items()}
    for name, value in (params or {}).items():
        if name not in known:
            raise PruningError(f"{method} takes no parameter {name!r}; it takes: {', '.join(known)}")
        resolved[name] = _convert(method, name, known[name], value)
    return PruneSpec(method, int(k), resolved)


def _convert(method: str, name: str, param: Param, value: Any) -> Any:
    default = param.default
    if isinstance(value, str):
        kind = type(default) if default is not None else (int if name == "layer" else str)
        if param.choices is not None and value in [str(c) for c in param.choices]:
            kind = type(next(c for c in param.choices if str(c) == value))
        try:
            value = kind(value) if kind is not bool else value not in ("0", "false", "no")
        except ValueError:
            raise PruningError(f"{method} parameter {name}={value!r} is not a {kind.__name__}") from None
    elif isinstance(default, float) and isinstance(value, int):
        value = float(value)
    if param.choices is not None and value not in param.choices:
        raise PruningError(f"{method} parameter {name} takes one of {list(param.choices)}, got {value!r}")
    try:
        check_number(name, value, param.bounds)
    except ValueError as err:
        raise PruningError(f"{method} parameter {err}") from None
    return value


def describe_methods() -> list[dict[str, Any]]:
    """Every method with its parameters and defaults (for help texts and the README)."""
    return [{"name": m.name, "doc": m.doc, "params": {n: p.default for n, p in m.params.items()}}
            for m in METHODS.values()]
