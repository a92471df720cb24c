"""Each pruning method, inserted by the graph pass into a hand-written encoder (not an edgeattn export)
and run by onnxruntime, against a direct NumPy implementation of its paper's rule on the same weights."""

from __future__ import annotations

import json

import numpy as np
import onnx_ir as ir
import pytest

from edgeattn.errors import PruningError
from edgeattn.graphs.pruning import make_spec, parse_prune, prune, pruning_nodes, read_report
from edgeattn.graphs.pruning.baselines import uniform_scores
from edgeattn.graphs.pruning.debias import fit_recency_weights, padding_valid_mask
from tests.models.tiny_encoders import TinyEncoder, tiny_encoder

K = 5


def run_pruned(encoder: TinyEncoder, spec: str, tokens: np.ndarray, **feeds) -> tuple[list[np.ndarray], object]:
    import onnxruntime as ort

    model, report = prune(ir.serde.deserialize_model(encoder.model), spec)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(ir.serde.serialize_model(model).SerializeToString(), options)
    return session.run(None, {"tokens": tokens, **feeds}), report


def tokens_for(encoder: TinyEncoder, batch: int = 2, seed: int = 1) -> np.ndarray:
    seq = 16 + (1 if encoder.has_cls else 0)
    return np.random.default_rng(seed).standard_normal((batch, seq, 16)).astype(np.float32)


def top(scores: np.ndarray, k: int) -> list[int]:
    return sorted(np.argsort(-scores, kind="stable")[:k].tolist())


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def minmax(x: np.ndarray) -> np.ndarray:
    return (x - x.min()) / max(x.max() - x.min(), 1e-12)


# -- the papers' rules, written directly -----------------------------------------------------------
def fastervlm_rule(probs: np.ndarray, k: int) -> list[int]:
    return top(probs[:, 0, 1:].mean(0), k)  # [CLS] row over the patch keys, mean over heads


def mean_received_rule(probs: np.ndarray, k: int) -> list[int]:
    return top(probs.mean(1).mean(0), k)  # column mean over queries, then heads


def holov_rule(a: np.ndarray, z: np.ndarray, k: int, parts: int = 16, alpha: float = 0.09) -> list[int]:
    n = len(a)
    parts = min(parts, n)
    sizes = [n // parts + (1 if p < n % parts else 0) for p in range(parts)]
    chunks = np.split(np.arange(n), np.cumsum(sizes)[:-1])
    zn = unit(z)
    variance = np.zeros(n)
    for chunk in chunks:
        for i in chunk:
            sims = [zn[i] @ zn[j] for j in chunk if j != i]
            variance[i] = np.var(sims, ddof=1) if len(sims) > 1 else 0.0
    scaled = 1000 * a
    s = scaled + alpha * variance * np.abs(scaled).mean() / np.abs(variance).mean()
    weight = np.array([s[c].mean() for c in chunks])
    budget = [min(int(np.floor(k * w / weight.sum() + 1e-3)), size) for w, size in zip(weight, sizes)]
    while sum(budget) < k:  # leftovers: one each to the heaviest chunks with room, round after round
        for p in np.argsort(-weight, kind="stable"):
            if sum(budget) < k and budget[p] < sizes[p]:
                budget[p] += 1
    return sorted(int(c[i]) for c, b in zip(chunks, budget) for i in np.argsort(-a[c], kind="stable")[:b])


def flashvlm_rule(a: np.ndarray, z: np.ndarray, e: np.ndarray, f: np.ndarray, k: int) -> list[int]:
    # In float32, as the graph runs: at temperature 0.01 and power 2.5 most relevances underflow to exactly 0,
    # and those tokens then tie (broken by position) — float64 would order them by e^-100-sized differences.
    a, z, e = a.astype(np.float32), z.astype(np.float32), e.astype(np.float32)
    sim = unit(z) @ unit(e).T
    w = np.exp(sim / 0.05)
    relevance = (w / w.sum(1, keepdims=True) * sim).sum(1)
    p = np.exp((relevance - relevance.max()) / np.float32(0.01))
    t = minmax((p / p.sum()) ** np.float32(2.5))
    t = minmax(np.where(t < np.quantile(t, 0.995), t * 0.1, t))
    fused = minmax(minmax(a) ** 0.5 * t**0.5)
    order = np.argsort(-fused, kind="stable")
    kept, rest = list(order[: k // 2]), list(order[k // 2 :])
    fn = unit(f)
    while len(rest) > k - k // 2:  # VisPruner's bipartite de-duplication
        r = min(8, len(rest) - (k - k // 2))
        even, odd = rest[0::2], rest[1::2]
        best = (fn[even] @ fn[odd].T).max(1)
        rest = [even[i] for i in np.argsort(-best, kind="stable")[r:]] + odd
    return sorted(int(i) for i in kept + rest)


def zoo_rule(encoder: TinyEncoder, x: np.ndarray, z: np.ndarray, k: int, m: int = 64, h: float = 0.01) -> list[int]:
    u = np.random.default_rng(0).standard_normal((m, x.shape[-1]))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    plus = encoder.project(x[:, None] + h * u)
    minus = encoder.project(x[:, None] - h * u)
    s = (np.linalg.norm(plus - minus, axis=-1) / (2 * h)).mean(1)
    weight = (s - s.min()) / (s.max() - s.min() + 1e-8)
    dist = 1 - unit(z) @ unit(z).T
    chosen = [int(np.argmax(weight))]
    while len(chosen) < k:
        gain = dist[chosen].min(0) * weight
        gain[chosen] = -np.inf
        chosen.append(int(np.argmax(gain)))
    return sorted(chosen)


# -- the methods through the pass ------------------------------------------------------------------
@pytest.mark.parametrize("style", ["decomposed", "fused"])
def test_fastervlm_is_the_cls_row_at_the_layer(style):
    encoder = tiny_encoder(style=style)
    x = tokens_for(encoder)
    (features, kept), report = run_pruned(encoder, f"fastervlm:{K}", x)
    probs = encoder.probs(x)
    assert [fastervlm_rule(p, K) for p in probs] == kept.tolist()
    assert report.prefix == 1 and report.layer == 0 and features.shape == (2, K, 16)
    want = np.take_along_axis(encoder.hidden(x)[:, 1:], kept[..., None], axis=1)
    np.testing.assert_allclose(features, want, rtol=1e-5, atol=1e-5)


def test_a_negative_layer_counts_from_the_last():
    encoder = tiny_encoder()
    x = tokens_for(encoder)
    (_, kept), report = run_pruned(encoder, f"fastervlm:{K},layer=-1", x)
    (_, want), _ = run_pruned(encoder, f"fastervlm:{K}", x)
    assert report.layer == 0 and kept.tolist() == want.tolist()


def test_mean_received_on_an_encoder_without_cls():
    encoder = tiny_encoder(has_cls=False)
    x = tokens_for(encoder)
    (_, kept), report = run_pruned(encoder, f"mean-received:{K}", x)
    assert [mean_received_rule(p, K) for p in encoder.probs(x)] == kept.tolist()
    assert not report.has_cls and report.prefix == 0


def test_holov_budgets_per_region():
    encoder = tiny_encoder(projector=True)
    x = tokens_for(encoder)
    (_, kept), _ = run_pruned(encoder, "holov:7,regions=3", x)
    probs, z = encoder.probs(x), encoder.features(x)
    assert [holov_rule(p[:, 0, 1:].mean(0), zi, 7, parts=3) for p, zi in zip(probs, z)] == kept.tolist()


def test_flashvlm_uses_the_prompt_and_the_pre_projector_features():
    encoder = tiny_encoder(projector=True)
    x = tokens_for(encoder)
    text = np.random.default_rng(2).standard_normal((2, 4, 16)).astype(np.float32)
    (_, kept), report = run_pruned(encoder, "flashvlm:6", x, text_embeds=text)
    probs, z, f = encoder.probs(x), encoder.features(x), encoder.hidden(x)[:, 1:]
    want = [flashvlm_rule(p[:, 0, 1:].mean(0), zi, ei, fi, 6) for p, zi, ei, fi in zip(probs, z, text, f)]
    assert want == kept.tolist()
    assert report.inputs_added == ("text_embeds",) and report.similarity == "pre-projector"


def test_zeroth_order_clones_the_projector():
    encoder = tiny_encoder(projector=True)
    x = tokens_for(encoder)
    (_, kept), report = run_pruned(encoder, f"zeroth-order:{K}", x)
    pre, z = encoder.hidden(x)[:, 1:], encoder.features(x)
    assert [zoo_rule(encoder, xi, zi, K) for xi, zi in zip(pre, z)] == kept.tolist()
    assert report.layer is None


def test_random_is_seeded_and_uniform_is_a_grid():
    encoder = tiny_encoder()
    x = tokens_for(encoder)
    (_, first), _ = run_pruned(encoder, "random:4,seed=3", x)
    (_, again), _ = run_pruned(encoder, "random:4,seed=3", x[::-1].copy())
    (_, other), _ = run_pruned(encoder, "random:4,seed=4", x)
    assert first.tolist() == again.tolist() and first[0].tolist() == first[1].tolist() != other[0].tolist()
    (_, grid), _ = run_pruned(encoder, "uniform:4", x)
    assert grid[0].tolist() == [5, 7, 13, 15]  # the 2x2 lattice of patch centres on the 4x4 grid
    assert sorted(np.argsort(-uniform_scores(64, 16))[:16].tolist()) == [9, 11, 13, 15, 25, 27, 29, 31, 41, 43, 45,
                                                                         47, 57, 59, 61, 63]


def test_debias_weights_and_padding_mask(tmp_path):
    encoder = tiny_encoder()
    x = tokens_for(encoder)
    weights = np.linspace(1.0, 0.2, 16).astype(np.float32)
    np.save(tmp_path / "w.npy", weights)
    (_, kept), _ = run_pruned(encoder, f"fastervlm:{K},debias={tmp_path / 'w.npy'}", x)
    probs = encoder.probs(x)
    assert [top(p[:, 0, 1:].mean(0) * weights, K) for p in probs] == kept.tolist()
    valid = np.ones((2, 16), bool)
    valid[:, :8] = False
    (_, kept), report = run_pruned(encoder, f"fastervlm:{K},padding=1", x, patch_valid=valid)
    assert (kept >= 8).all() and report.inputs_added == ("patch_valid",)


def test_debias_helpers():
    scores = np.exp(0.01 * np.arange(50))[None].repeat(3, 0)
    weights = fit_recency_weights(scores)
    np.testing.assert_allclose(weights, np.exp(-0.01 * np.arange(50)), rtol=1e-4)
    mask = padding_valid_mask(width=100, height=50, image_size=28, patch_size=7)  # a wide image: rows 0 and 3 pad
    assert mask.reshape(4, 4).tolist() == [[False] * 4, [True] * 4, [True] * 4, [False] * 4]


@pytest.mark.parametrize("dynamic", [0, 1])
def test_static_and_run_time_budgets(dynamic):
    encoder = tiny_encoder()
    x = tokens_for(encoder)
    feeds = {"num_tokens": np.array(3, np.int64)} if dynamic else {}
    (features, kept), _ = run_pruned(encoder, f"fastervlm:{K},dynamic={dynamic}", x, **feeds)
    k = 3 if dynamic else K
    assert kept.shape == (2, k) and features.shape == (2, k, 16)
    assert [fastervlm_rule(p, k) for p in encoder.probs(x)] == kept.tolist()


def test_keep_cls_and_the_report_in_the_model():
    encoder = tiny_encoder()
    x = tokens_for(encoder)
    model, report = prune(ir.serde.deserialize_model(encoder.model), f"fastervlm:{K},keep_cls=1,dynamic=1")
    assert [o.name for o in model.graph.outputs] == ["image_features", "kept_indices"]
    assert read_report(model)["method"] == "fastervlm"
    rows = pruning_nodes(model)
    assert [r["op"] for r in rows] == ["TokenScore", "TokenSelect"]
    assert rows[1]["k"] == K and rows[1]["k_input"] == "num_tokens" and rows[1]["k_default"] == K
    assert report.manifest_entry()["keeps_original_positions"] is False
    (features, _), _ = run_pruned(encoder, f"fastervlm:{K},keep_cls=1", x)
    np.testing.assert_allclose(features[:, 0], encoder.hidden(x)[:, 0], rtol=1e-5, atol=1e-5)
    json.dumps(report.to_json())


# -- refusals --------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, message", [
    ("fastervlm", "gives no budget"),
    ("fastervlm:0", "at least 1 token"),
    ("fastervlm:-3", "at least 1 token"),
    ("fastervlm:sixty", "not a whole number"),
    ("sparsevlm:64", "unknown pruning method"),
    ("holov:64,regoins=4", "takes no parameter 'regoins'"),
    ("holov:64,regions=four", "is not a int"),
    ("fastervlm:64,head_reduce=median", "takes one of"),
])
def test_bad_specs_are_one_sentence(text, message):
    with pytest.raises(PruningError, match=message) as err:
        parse_prune(text)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("spec, message", [
    ("fastervlm:17", "k = 17 is out of range: .* has 16 candidate tokens"),
    ("fastervlm:4,layer=3", "layer 3 is out of range"),
    ("fastervlm:4,layer=-2", "layer -2 is out of range"),
    ("random:4,debias=w.npy", "debias and padding modify attention scores"),
    ("zeroth-order:4", "needs the projector M"),
])
def test_refusals_name_what_exists(spec, message):
    encoder = tiny_encoder()
    with pytest.raises(PruningError, match=message):
        prune(ir.serde.deserialize_model(encoder.model), spec)


@pytest.mark.parametrize("method", ["fastervlm", "holov", "flashvlm"])
def test_cls_methods_refuse_an_encoder_without_cls(method):
    encoder = tiny_encoder(has_cls=False)
    with pytest.raises(PruningError, match="has no \\[CLS\\] token .* use mean-received"):
        prune(ir.serde.deserialize_model(encoder.model), make_spec(method, 4))


def test_an_already_pruned_graph_is_refused():
    encoder = tiny_encoder()
    model, _ = prune(ir.serde.deserialize_model(encoder.model), "fastervlm:4")
    with pytest.raises(PruningError, match="already pruned"):
        prune(model, "fastervlm:4")


def test_tensorrt_form_needs_a_static_budget():
    from edgeattn.errors import GraphError

    encoder = tiny_encoder()
    model, _ = prune(ir.serde.deserialize_model(encoder.model), "holov:4,regions=4", target="trt")
    select = next(n for n in model.graph if n.op_type == "EdgeTokenSelect")  # the TensorRT form's name
    assert select.attributes["k"].value == 4 and select.attributes["mode"].value == "regions"
    assert len(select.inputs) == 2  # scores, features: no run-time budget
    with pytest.raises(GraphError, match="TensorRT plugins need it as an attribute"):
        prune(ir.serde.deserialize_model(encoder.model), "holov:4,dynamic=1", target="trt")


def test_a_run_time_budget_folds_into_the_attribute():
    from edgeattn.graphs.pruning import fold_budget

    encoder = tiny_encoder()
    x = tokens_for(encoder)
    model, _ = prune(ir.serde.deserialize_model(encoder.model), f"fastervlm:{K},dynamic=1")
    model = fold_budget(model, 3, target="trt")
    assert [v.name for v in model.graph.inputs] == ["tokens"]
    select = next(n for n in model.graph if n.op_type == "EdgeTokenSelect")  # the TensorRT form's name
    assert select.attributes["k"].value == 3 and len(select.inputs) == 2
    assert read_report(model)["k"] == 3
    import onnxruntime as ort

    session = ort.InferenceSession(ir.serde.serialize_model(model).SerializeToString())
    kept = session.run(["kept_indices"], {"tokens": x})[0]
    assert [fastervlm_rule(p, 3) for p in encoder.probs(x)] == kept.tolist()
