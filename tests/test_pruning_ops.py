"""edgeattn.TokenScore and edgeattn.TokenSelect: registry entries, and each function body (run by
onnxruntime) against its PyTorch reference, on random and adversarial inputs, at opsets 17 and 23."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from edgeattn.ops.registry import default_registry
from edgeattn.ops.schema import onnx_schema
from edgeattn.ops.token_score import token_score_reference
from edgeattn.ops.token_select import token_select_reference
from tests.pruning_cases import run_node, single_node_model

RNG = np.random.default_rng(0)
# float32 bodies vs float32 references: different summation orders only (a few ulps of the largest value).
ATOL, RTOL = 1e-6, 2e-6
# FlashVLM's relevance goes through a softmax at temperature 0.01 and a power 2.5: the ~1e-7 relative
# noise of the cosines is amplified about 250 times.
TEXT_RTOL = 1e-4


def close(got: np.ndarray, want: torch.Tensor, rtol: float = RTOL) -> None:
    want = want.numpy()
    scale = float(np.abs(want).max()) if want.size else 0.0
    assert got.shape == want.shape and np.isfinite(got).all()
    assert float(np.abs(got - want).max()) <= ATOL + rtol * scale


def t(array: np.ndarray | None) -> torch.Tensor | None:
    return None if array is None else torch.from_numpy(array)


def test_registry_declares_pruning_ops():
    registry = default_registry()
    for name in ("TokenScore", "TokenSelect"):
        op = registry.get(name)
        assert op.kind == "pruning" and op.domain == "edgeattn"
        assert onnx_schema(op).name == name
    select = registry.get("TokenSelect")
    assert select.attribute("k").tunable and select.tunable_input_index("k") == 2
    assert select.infer_shapes([[2, 16], [2, 17, 8]], {"k": 4, "prefix": 1, "keep_prefix": 1}) == [[2, 5, 8], [2, 4]]
    assert registry.get("TokenScore").infer_shapes([[2, 4, 17, 8]], {"source": "cls", "skip": 1}) == [[2, 16]]


def test_function_bodies_pass_the_onnx_checker():
    model = single_node_model("TokenSelect", [("scores", RNG.random((2, 9), dtype=np.float32)),
                                              ("features", RNG.random((2, 9, 4), dtype=np.float32))],
                              {"k": 3, "mode": "diversity"}, ["selected", "kept_indices"])
    import onnx_ir as ir

    onnx.checker.check_model(ir.serde.serialize_model(model), full_check=True)


# -- TokenScore -----------------------------------------------------------------------------------
def qk(batch=2, heads=4, kv_heads=4, seq=17, size=8, scale=1.0):
    return ((RNG.standard_normal((batch, heads, seq, size)) * scale).astype(np.float32),
            (RNG.standard_normal((batch, kv_heads, seq, size)) * scale).astype(np.float32))


@pytest.mark.parametrize("opset", [17, 23])
@pytest.mark.parametrize("source", ["cls", "mean_received"])
@pytest.mark.parametrize("head_reduce", ["mean", "max"])
@pytest.mark.parametrize("kv_heads", [4, 2])
def test_attention_scores_from_qk(opset, source, head_reduce, kv_heads):
    q, k = qk(kv_heads=kv_heads)
    attrs = {"source": source, "head_reduce": head_reduce, "scale": 0.3, "skip": 1}
    got = run_node("TokenScore", [("X", q), ("Y", k)], attrs, ["scores"], opset)[0]
    close(got, token_score_reference(t(q), t(k), **attrs))


def test_attention_scores_from_three_dim_qk_and_default_scale():
    q, k = qk(heads=4, kv_heads=2)
    q3 = q.transpose(0, 2, 1, 3).reshape(2, 17, 32)
    k3 = k.transpose(0, 2, 1, 3).reshape(2, 17, 16)
    attrs = {"source": "cls", "q_num_heads": 4, "kv_num_heads": 2, "skip": 0}
    got = run_node("TokenScore", [("X", q3), ("Y", k3)], attrs, ["scores"])[0]
    close(got, token_score_reference(t(q), t(k), source="cls", skip=0))


@pytest.mark.parametrize("source", ["cls", "mean_received"])
def test_attention_scores_from_probabilities(source):
    probs = torch.softmax(torch.randn(2, 3, 10, 10), -1).numpy()
    got = run_node("TokenScore", [("X", probs)], {"source": source, "query": 0, "skip": 1}, ["scores"])[0]
    close(got, token_score_reference(t(probs), source=source))


@pytest.mark.parametrize("case", ["equal", "huge", "one_hot"])
def test_attention_scores_adversarial(case):
    q, k = qk()
    if case == "equal":  # every logit equal: uniform attention
        q[:] = 0.0
    elif case == "huge":  # logits of 1e4: a NaN-free softmax must saturate, not overflow
        q, k = q * 100.0, k * 100.0
    else:
        q[:] = 0.0
        q[:, :, 0, 0], k[:, :, 5, 0] = 50.0, 50.0
    got = run_node("TokenScore", [("X", q), ("Y", k)], {"source": "cls"}, ["scores"])[0]
    close(got, token_score_reference(t(q), t(k)))


@pytest.mark.parametrize("prior", [True, False])
@pytest.mark.parametrize("opset", [17, 23])
def test_text_relevance(prior, opset):
    z = RNG.standard_normal((2, 24, 12)).astype(np.float32)
    e = RNG.standard_normal((2, 5, 12)).astype(np.float32)
    a = RNG.random((2, 24), dtype=np.float32) if prior else None
    got = run_node("TokenScore", [("X", z), ("Y", e), ("prior", a)], {"source": "text"}, ["scores"], opset)[0]
    close(got, token_score_reference(t(z), t(e), t(a), source="text"), TEXT_RTOL)


def test_text_relevance_with_identical_tokens_is_zero_not_nan():
    z = np.ones((1, 8, 4), np.float32)
    e = RNG.standard_normal((1, 3, 4)).astype(np.float32)
    got = run_node("TokenScore", [("X", z), ("Y", e)], {"source": "text"}, ["scores"])[0]
    close(got, token_score_reference(t(z), t(e), source="text"))
    assert (got == 0).all()


def test_sensitivity_with_debias_weights_and_padding_mask():
    plus = RNG.standard_normal((2, 16, 6, 12)).astype(np.float32)
    minus = plus + RNG.standard_normal(plus.shape).astype(np.float32) * 1e-2
    weights = RNG.random(16, dtype=np.float32)
    valid = RNG.random((2, 16)) > 0.3
    inputs = [("X", plus), ("Y", minus), ("prior", None), ("weights", weights), ("valid", valid)]
    got = run_node("TokenScore", inputs, {"source": "sensitivity", "step": 0.01}, ["scores"])[0]
    close(got, token_score_reference(t(plus), t(minus), None, t(weights), t(valid), source="sensitivity", step=0.01))
    assert (got[~valid] == 0).all()


# -- TokenSelect ----------------------------------------------------------------------------------
def select(scores, features, k, mode, *, dynamic=False, keys=None, opset=23, **attrs):
    attrs = {"mode": mode, **attrs}
    inputs = [("scores", scores), ("features", features), ("num_tokens", np.array(k) if dynamic else None),
              ("keys", keys)]
    if not dynamic:
        attrs["k"] = k
    got = run_node("TokenSelect", inputs, attrs, ["selected", "kept_indices"], opset)
    want = token_select_reference(t(scores), t(features), k, t(keys), **{a: v for a, v in attrs.items() if a != "k"})
    return got, want


MODES = ["topk", "regions", "diversity", "maxmin"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("k", [1, 2, 7, 23])
@pytest.mark.parametrize("dynamic", [False, True])
def test_select_matches_reference(mode, k, dynamic):
    scores = RNG.random((2, 23), dtype=np.float32)
    features = RNG.standard_normal((2, 24, 6)).astype(np.float32)
    got, want = select(scores, features, k, mode, dynamic=dynamic, prefix=1, regions=5)
    assert (got[1] == want[1].numpy()).all()
    assert (np.diff(got[1], axis=1) > 0).all()
    np.testing.assert_array_equal(got[0], want[0].numpy())


@pytest.mark.parametrize("mode", MODES)
def test_select_at_opset_17_with_keys_and_kept_prefix(mode):
    scores = RNG.random((3, 40), dtype=np.float32)
    features = RNG.standard_normal((3, 41, 6)).astype(np.float32)
    keys = RNG.standard_normal((3, 40, 5)).astype(np.float32)
    got, want = select(scores, features, 12, mode, keys=keys, opset=17, prefix=1, keep_prefix=1, regions=16)
    assert got[0].shape == (3, 13, 6) and (got[0][:, 0] == features[:, 0]).all()
    assert (got[1] == want[1].numpy()).all()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", ["all_equal", "ties", "extremes", "same_keys"])
def test_select_adversarial(mode, case):
    n = 20
    scores = RNG.random((2, n), dtype=np.float32)
    features = RNG.standard_normal((2, n, 4)).astype(np.float32)
    if case == "all_equal":  # every score equal: the lowest positions win every tie
        scores[:] = 0.5
    elif case == "ties":
        scores = np.round(scores * 3) / 3
    elif case == "extremes":  # extremes that stay finite through each rule's own arithmetic (x1000, ranges)
        scores = np.where(scores > 0.5, 1e30, -1e30).astype(np.float32)
        scores[:, ::7] = 1e-30
    else:  # duplicated tokens: similarity-aware modes see exact ties
        features[:] = features[:, :1]
    got, want = select(scores, features, 6, mode, regions=4)
    assert (got[1] == want[1].numpy()).all(), (got[1], want[1])
    if case == "all_equal" and mode == "topk":
        assert got[1].tolist() == [[0, 1, 2, 3, 4, 5]] * 2


def test_select_keeps_the_feature_dtype():
    scores = RNG.random((1, 10), dtype=np.float32)
    features = RNG.standard_normal((1, 10, 4)).astype(np.float16)
    got, _ = select(scores, features, 3, "topk")
    assert got[0].dtype == np.float16


def test_select_refuses_k_beyond_the_tokens_in_the_reference():
    with pytest.raises(ValueError, match="outside 1..5"):
        token_select_reference(torch.rand(1, 5), torch.rand(1, 5, 2), k=6)
