"""onnxruntime's com.microsoft.GroupQueryAttention -> edgeattn.Attention (edgeattn/graphs/rules/gqa.py), and its
MultiHeadAttention with a past (edgeattn/graphs/rules/fused.py).

The graphs are built as onnxruntime's model builder writes them: seqlens_k = ReduceSum(attention_mask) - 1
and total_sequence_length = the mask's length, both int32; a BNSH past (empty at the prompt) and presents.
Parity: the rewritten graph and the original, both run by onnxruntime's CPU kernels, agree within float32
RTOL_FLOAT32 (relative error 1e-5: the same float32 operations in another order) on every output (float16:
RTOL_FLOAT16).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper

from edgeattn.graphs import find_sites, rewrite
from graphs_golden import RTOL_FLOAT32, relative_error, session

F32, I32, I64 = TensorProto.FLOAT, TensorProto.INT32, TensorProto.INT64
MS = "com.microsoft"


def gqa_model(heads: int = 8, kv_heads: int = 2, head_size: int = 16, packed: bool = False, past: bool = True,
              extra_inputs: dict[int, onnx.ValueInfoProto] | None = None, outputs: int = 3,
              lengths: tuple[str, str] | None = None, past_len: Any = "past_sequence_length",
              dtype: int = F32, **attrs: Any) -> onnx.ModelProto:
    """One GroupQueryAttention node fed as the model builder feeds it. `lengths` replaces the computed
    seqlens_k / total_sequence_length by the named initializers (added by the caller)."""
    hidden, kv_hidden = heads * head_size, kv_heads * head_size
    seq, batch = "sequence_length", "batch_size"
    if packed:
        inputs = [helper.make_tensor_value_info("qkv", dtype, [batch, seq, hidden + 2 * kv_hidden])]
        names = ["qkv", "", ""]
    else:
        inputs = [helper.make_tensor_value_info("q", dtype, [batch, seq, hidden]),
                  helper.make_tensor_value_info("k", dtype, [batch, seq, kv_hidden]),
                  helper.make_tensor_value_info("v", dtype, [batch, seq, kv_hidden])]
        names = ["q", "k", "v"]
    if past:
        inputs += [helper.make_tensor_value_info(name, dtype, [batch, kv_heads, past_len, head_size])
                   for name in ("past_key", "past_value")]
    names += ["past_key", "past_value"] if past else ["", ""]
    inputs.append(helper.make_tensor_value_info("attention_mask", I64, [batch, "total_sequence_length"]))
    nodes = [helper.make_node("ReduceSum", ["attention_mask", "axis1"], ["mask_sum"], keepdims=0),
             helper.make_node("Sub", ["mask_sum", "one"], ["last"]),
             helper.make_node("Cast", ["last"], ["seqlens_k"], to=I32),
             helper.make_node("Shape", ["attention_mask"], ["mask_shape"]),
             helper.make_node("Gather", ["mask_shape", "one"], ["total64"], axis=0),
             helper.make_node("Cast", ["total64"], ["total_sequence_length"], to=I32)]
    names += list(lengths or ("seqlens_k", "total_sequence_length"))
    for index, info in sorted((extra_inputs or {}).items()):
        names += [""] * (index - len(names)) + [info.name]
        inputs.append(info)
    present = [batch, kv_heads, "total_sequence_length", head_size]
    out_infos = [helper.make_tensor_value_info("y", dtype, [batch, seq, hidden]),
                 helper.make_tensor_value_info("present_key", dtype, present),
                 helper.make_tensor_value_info("present_value", dtype, present),
                 helper.make_tensor_value_info("qk", dtype, None)][:outputs]
    nodes.append(helper.make_node("GroupQueryAttention", names, [o.name for o in out_infos], domain=MS, name="gqa",
                                  num_heads=heads, kv_num_heads=kv_heads, **attrs))
    inits = [onnx.numpy_helper.from_array(np.array(1, np.int64), "one"),
             onnx.numpy_helper.from_array(np.array([1], np.int64), "axis1")]
    graph = helper.make_graph(nodes, "gqa", inputs, out_infos, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(MS, 1)],
                             ir_version=10)


def feeds(model: onnx.ModelProto, batch: int, new: int, past: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    sizes = {"batch_size": batch, "sequence_length": new, "past_sequence_length": past}
    out = {}
    for info in model.graph.input:
        if info.name == "attention_mask":
            out[info.name] = np.ones((batch, past + new), np.int64)
            continue
        shape = [sizes.get(d.dim_param, d.dim_value) for d in info.type.tensor_type.shape.dim]
        kind = helper.tensor_dtype_to_np_dtype(info.type.tensor_type.elem_type)
        out[info.name] = rng.standard_normal(shape).astype(kind)
    return out


VARIANTS: dict[str, dict[str, Any]] = {
    "gqa-8-2": {},
    "mqa-4-1": {"heads": 4, "kv_heads": 1},
    "mha-4-4": {"heads": 4, "kv_heads": 4, "head_size": 8},
    "packed-qkv": {"packed": True},
    "scale": {"scale": 0.3},
    "softcap": {"softcap": 2.0},
    "local-window": {"local_window_size": 3},
    "window-softcap-packed": {"packed": True, "local_window_size": 4, "softcap": 5.0},
    "no-past-inputs": {"past": False},
    "prompt-output-only": {"past": False, "outputs": 1},
}
# (batch, new tokens, past tokens): the prompt (empty past), a one-token decode, a chunk after a past
STEPS = [(1, 7, 0), (1, 1, 9), (2, 5, 0), (2, 1, 6), (1, 4, 5)]


@pytest.mark.parametrize("name", list(VARIANTS))
def test_group_query_attention_is_rewritten_with_parity(name: str) -> None:
    config = VARIANTS[name]
    model = gqa_model(**config)
    rewritten, report = rewrite(model)
    assert report.refused == () and [r.op for r in report.rewritten] == ["Attention"]
    assert not any(n.op_type == "GroupQueryAttention" for n in rewritten.graph)
    original, ours = session(model), session(ir.serde.serialize_model(rewritten))
    for batch, new, past in STEPS:
        if not config.get("past", True) and past:
            continue
        inputs = feeds(model, batch, new, past)
        expected, got = original.run(None, inputs), ours.run(None, inputs)
        assert [g.shape for g in got] == [e.shape for e in expected]
        assert relative_error(expected, got) < RTOL_FLOAT32, (batch, new, past)


# float16: both graphs round Q, K, V and Y to float16 but may round intermediates differently; two float16
# ulps (2 · 2^-10) relative to the largest output is that difference, not a wrong mask or scale.
RTOL_FLOAT16 = 2 * 2.0 ** -10


@pytest.mark.parametrize("config", [{}, {"packed": True, "softcap": 3.0, "local_window_size": 3}],
                         ids=["gqa-8-2", "packed-softcap-window"])
def test_float16_group_query_attention_is_rewritten_with_parity(config: dict[str, Any]) -> None:
    model = gqa_model(dtype=TensorProto.FLOAT16, **config)
    rewritten, report = rewrite(model)
    assert report.refused == () and [r.op for r in report.rewritten] == ["Attention"]
    original, ours = session(model), session(ir.serde.serialize_model(rewritten))
    for batch, new, past in STEPS:
        inputs = feeds(model, batch, new, past)
        assert relative_error(original.run(None, inputs), ours.run(None, inputs)) < RTOL_FLOAT16, (batch, new, past)


def test_inspect_reports_the_site_and_its_features() -> None:
    model = gqa_model(packed=True, softcap=2.0, local_window_size=3)
    (site,) = find_sites(ir.serde.deserialize_model(model)).sites
    assert (site.dialect, site.num_heads, site.kv_num_heads, site.head_size, site.causal) == (
        "ms-group-query-attention", 8, 2, 16, 2)
    assert site.details["packed_qkv"] is True
    # onnxruntime's window of W keys (the query's own included) is ONNX's left_window_size W - 1
    assert site.details["features"] == "past_key, past_value, present_key, present_value, softcap = 2, " \
                                       "left_window_size = 2"


def padded_feeds(model: onnx.ModelProto, new: int, past: int, valid: list[int], seed: int = 0) -> dict:
    """Right-padded sequences as onnxruntime's kernel reads them: sequence b holds `valid[b]` tokens (its past
    and new ones), the model builder's attention mask has ones there and zeros after."""
    inputs = feeds(model, len(valid), new, past, seed)
    inputs["attention_mask"] = (np.arange(past + new)[None, :] < np.array(valid)[:, None]).astype(np.int64)
    return inputs


def compare_padded(model: onnx.ModelProto, inputs: dict, rtol: float = RTOL_FLOAT32) -> None:
    """Every output of the rewritten graph equals onnxruntime's, Y on the rows it defines (a sequence's
    queries up to its last token; its kernel leaves the padding rows' scores unwritten)."""
    rewritten, report = rewrite(model)
    assert report.refused == () and [r.op for r in report.rewritten] == ["Attention"]
    expected = session(model).run(None, inputs)
    got = session(ir.serde.serialize_model(rewritten)).run(None, inputs)
    assert [g.shape for g in got] == [e.shape for e in expected]
    new = expected[0].shape[1]
    valid = inputs["attention_mask"].sum(1) if "attention_mask" in inputs else None
    first = new > 1 and valid is not None and inputs["attention_mask"].shape[1] == new
    for b in range(expected[0].shape[0]):
        rows = int(valid[b]) if first else new
        assert relative_error([expected[0][b, :rows]], [got[0][b, :rows]]) < rtol, b
    assert relative_error(expected[1:], got[1:]) < rtol


@pytest.mark.parametrize("config", [{}, {"packed": True, "softcap": 2.0}, {"local_window_size": 3},
                                    {"rotary": True}, {"rotary": True, "local_window_size": 2}],
                         ids=["gqa-8-2", "packed-softcap", "local-window", "rotary", "rotary-window"])
def test_padded_batches_follow_onnxruntime(config: dict[str, Any]) -> None:
    """A batch of right-padded sequences at the prompt and at decode steps: the new keys go to each sequence's
    own end of the cache, each query sees its own sequence (and rotary turns by its own positions)."""
    config = dict(config)
    if config.pop("rotary", False):
        config |= {"extra_inputs": _caches(8), "do_rotary": 1}
    model = gqa_model(**config)
    compare_padded(model, padded_feeds(model, 7, 0, [7, 5, 3]))  # the prompt
    compare_padded(model, padded_feeds(model, 1, 6, [7, 4, 2]))  # a decode step: new keys at 6, 3 and 1
    compare_padded(model, padded_feeds(model, 1, 6, [7, 7, 7]))  # nothing padded: present = Concat(past, new)


@pytest.mark.parametrize("seqlens,total,past_len", [([9], 10, 16), ([9, 3], 10, 16)],
                         ids=["static-cache", "static-cache-padded"])
def test_cache_buffers_longer_than_the_sequences_follow_onnxruntime(seqlens: list[int], total: int,
                                                                     past_len: int) -> None:
    """A static cache (a buffer longer than the sequences, as with a shared past/present buffer; onnxruntime
    takes total_sequence_length <= its length): present keeps the buffer's length, the new key at seqlens_k,
    zeros after it."""
    model = _shapes(_with_lengths(seqlens, total, past_len=past_len), sequence_length=1, batch_size=len(seqlens))
    compare_padded(model, feeds(model, len(seqlens), 1, past_len))  # (the unread attention_mask is fed too)


def test_a_chunk_ending_before_the_total_length_fails_at_run_time() -> None:
    """A chunk after a past (batch 1) whose last token is not the sequence's last: the one case the key mask
    and the lower-right causal mask cannot place; the rewritten graph stops with a broadcasting error."""
    model = gqa_model()
    ours = session(ir.serde.serialize_model(rewrite(model)[0]))
    inputs = padded_feeds(model, 3, 5, [7])  # seqlens_k + 1 = 7, total_sequence_length = 8
    session(model).run(None, inputs)  # onnxruntime's kernel takes it
    with pytest.raises(Exception, match="broadcast"):
        ours.run(None, inputs)
    compare_padded(model, padded_feeds(model, 3, 5, [8]))  # the same chunk ending at the total length


def _info(name: str, shape: list | None, dtype: int = F32) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, shape)


def _caches(pairs: int, dtype: int = F32) -> dict[int, onnx.ValueInfoProto]:
    """cos_cache and sin_cache inputs [32 positions, pairs] (random values: parity needs no real angles)."""
    return {7: _info("cos_cache", [32, pairs], dtype), 8: _info("sin_cache", [32, pairs], dtype)}


# rotary inside the op: halves (Llama), interleaved pairs (GPT-J), a partial rotary width (Phi), float16
ROTARY = {
    "halves": {"extra_inputs": _caches(8)},
    "interleaved": {"extra_inputs": _caches(8), "rotary_interleaved": 1},
    "partial-packed": {"extra_inputs": _caches(8), "packed": True, "head_size": 32},  # 16 of 32 channels turn
    "halves-no-past": {"extra_inputs": _caches(8), "past": False},
    "float16": {"extra_inputs": _caches(8, TensorProto.FLOAT16), "dtype": TensorProto.FLOAT16},
}


@pytest.mark.parametrize("name", list(ROTARY))
def test_rotary_inside_the_op_is_written_out_with_parity(name: str) -> None:
    """Every step (prompt, decode, a chunk after a past) turns Q and K by the angles of positions past .. past + new
    - 1, as onnxruntime's kernel does; float32 within RTOL_FLOAT32, float16 within RTOL_FLOAT16."""
    config = ROTARY[name]
    model = gqa_model(do_rotary=1, **config)
    rewritten, report = rewrite(model)
    assert report.refused == () and [r.op for r in report.rewritten] == ["Attention"]
    (site,) = find_sites(ir.serde.deserialize_model(model)).sites
    assert "rotary embedding" in site.details["features"]
    original, ours = session(model), session(ir.serde.serialize_model(rewritten))
    tolerance = RTOL_FLOAT16 if config.get("dtype") == TensorProto.FLOAT16 else RTOL_FLOAT32
    for batch, new, past in STEPS:
        if not config.get("past", True) and past:
            continue
        inputs = feeds(model, batch, new, past)
        expected, got = original.run(None, inputs), ours.run(None, inputs)
        assert relative_error(expected, got) < tolerance, (name, batch, new, past)
    # the rotation matters: the same graph without it differs
    plain = session(gqa_model(**{k: v for k, v in config.items() if k not in ("extra_inputs", "rotary_interleaved")}))
    inputs = feeds(model, *(STEPS[-1] if config.get("past", True) else STEPS[2]))
    assert relative_error(plain.run(None, {k: v for k, v in inputs.items() if "cache" not in k}),
                          ours.run(None, inputs)) > 1e-2


def _with_lengths(seqlens: list[int], total: int, **kwargs: Any) -> onnx.ModelProto:
    model = gqa_model(lengths=("seqlens_const", "total_const"), **kwargs)
    model.graph.initializer.extend([onnx.numpy_helper.from_array(np.array(seqlens, np.int32), "seqlens_const"),
                                    onnx.numpy_helper.from_array(np.array(total, np.int32), "total_const")])
    return model


def _shapes(model: onnx.ModelProto, **fixed: int) -> onnx.ModelProto:
    for info in model.graph.input:
        for dim in info.type.tensor_type.shape.dim:
            if dim.dim_param in fixed:
                dim.dim_value = fixed[dim.dim_param]
    return model


def _packed_width(width: int) -> onnx.ModelProto:
    model = gqa_model(packed=True)
    model.graph.input[0].type.tensor_type.shape.dim[2].dim_value = width
    return model


REFUSALS: dict[str, tuple[Any, str]] = {
    "rotary-position-ids": (lambda: gqa_model(do_rotary=1, extra_inputs={**_caches(8), 9: _info("pos", [1, 7], I64)}),
                            "the position_ids input of GroupQueryAttention is not supported"),
    "rotary-without-caches": (lambda: gqa_model(do_rotary=1), "do_rotary = 1 without the cos_cache and sin_cache"),
    "caches-without-rotary": (lambda: gqa_model(extra_inputs=_caches(8)), "a cos_cache input without do_rotary = 1"),
    "rotary-too-wide": (lambda: gqa_model(do_rotary=1, extra_inputs=_caches(9)), "rotary width 2·9 of"),
    "past-without-presents": (lambda: gqa_model(outputs=1), "past without present_key/present_value outputs"),
    "smooth-softmax": (lambda: gqa_model(smooth_softmax=1), "smooth_softmax of GroupQueryAttention is not supported"),
    "qk-output": (lambda: gqa_model(qk_output=1, outputs=4), "the output_qk output (qk_output)"),
    "attention-bias": (lambda: gqa_model(extra_inputs={10: _info("bias", [1, 8, "sequence_length", "total"])}),
                       "the attention_bias input of GroupQueryAttention is not supported"),
    "head-sink": (lambda: gqa_model(extra_inputs={11: _info("sink", [8])}), "the head_sink input"),
    "windowed-cache": (lambda: gqa_model(sliding_window_cache=1, local_window_size=4), "sliding_window_cache"),
    "quantized-cache": (lambda: gqa_model(k_quant_type="PER_TENSOR"), "a quantized key cache"),
    "unknown-attribute": (lambda: gqa_model(mystery=1), "the attribute mystery of GroupQueryAttention"),
    "bidirectional": (lambda: gqa_model(causal=0), "bidirectional GroupQueryAttention (causal = 0)"),
    "window-zero": (lambda: gqa_model(local_window_size=0), "local_window_size 0 is neither"),
    "packed-width": (lambda: _packed_width(150), "the packed QKV width 150 is unknown or not a multiple of"),
    "integer-query": (lambda: gqa_model(dtype=TensorProto.INT32), "the element type of the query is INT32"),
    "heads-not-grouped": (lambda: gqa_model(heads=6, kv_heads=4, head_size=8), "do not agree"),
}


@pytest.mark.parametrize("name", list(REFUSALS))
def test_each_refusal_names_the_feature(name: str) -> None:
    build, reason = REFUSALS[name]
    model = build()
    report = find_sites(ir.serde.deserialize_model(model))
    assert report.sites == ()
    reasons = [r for item in report.unmatched for r in item.reasons]
    assert any(reason in r for r in reasons), reasons
    rewritten, result = rewrite(model)
    assert result.rewritten == () and len(result.refused) == 1
    assert any(n.op_type == "GroupQueryAttention" for n in rewritten.graph)


# -- com.microsoft.MultiHeadAttention with a past: the KV cache of onnxruntime's older decoders --------------------


def mha_model(heads: int = 4, head_size: int = 8, mask: bool = False, bias: bool = False, outputs: int = 3,
              **attrs: Any) -> onnx.ModelProto:
    """One MultiHeadAttention node with 3-D Q, K, V, a BNSH past and its presents (optionally a key padding mask
    [B, past + new] and the Q/K/V bias)."""
    hidden = heads * head_size
    batch, seq, past = "batch_size", "sequence_length", "past_sequence_length"
    inputs = [_info(n, [batch, seq, hidden]) for n in ("q", "k", "v")]
    names = ["q", "k", "v", "bias" if bias else "", "key_padding_mask" if mask else "", "", "past_key", "past_value"]
    if bias:
        inputs.append(_info("bias", [3 * hidden]))
    if mask:
        inputs.append(_info("key_padding_mask", [batch, "total_sequence_length"], I32))
    inputs += [_info(n, [batch, heads, past, head_size]) for n in ("past_key", "past_value")]
    present = [batch, heads, "total_sequence_length", head_size]
    outs = [_info("y", [batch, seq, hidden]), _info("present_key", present), _info("present_value", present)][:outputs]
    node = helper.make_node("MultiHeadAttention", names, [o.name for o in outs], domain=MS, name="mha",
                            num_heads=heads, **attrs)
    graph = helper.make_graph([node], "mha", inputs, outs)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(MS, 1)],
                             ir_version=10)


MHA_VARIANTS: dict[str, dict[str, Any]] = {
    "bidirectional": {},
    "unidirectional": {"unidirectional": 1},
    "unidirectional-mask-bias": {"unidirectional": 1, "mask": True, "bias": True},
    "scale": {"scale": 0.2, "mask": True},
}


@pytest.mark.parametrize("name", list(MHA_VARIANTS))
def test_multihead_attention_with_a_past_is_rewritten_with_parity(name: str) -> None:
    """Against onnxruntime's own kernel (which computes a past correctly when the presents are declared), on the
    prompt with an empty past, decode steps and chunks; the key padding mask hides the first key of the last
    batch entry (every row keeps a key)."""
    config = MHA_VARIANTS[name]
    model = mha_model(**config)
    rewritten, report = rewrite(model)
    assert report.refused == () and [r.op for r in report.rewritten] == ["Attention"]
    (site,) = find_sites(ir.serde.deserialize_model(model)).sites
    assert site.causal == (2 if config.get("unidirectional") else 0) and "past_key" in site.details["features"]
    original, ours = session(model), session(ir.serde.serialize_model(rewritten))
    for batch, new, past in STEPS:
        inputs = feeds(model, batch, new, past)
        if config.get("mask"):
            inputs["key_padding_mask"] = np.ones((batch, past + new), np.int32)
            inputs["key_padding_mask"][-1, 0] = 0
        expected, got = original.run(None, inputs), ours.run(None, inputs)
        assert [g.shape for g in got] == [e.shape for e in expected]
        assert relative_error(expected, got) < RTOL_FLOAT32, (name, batch, new, past)


def test_multihead_attention_pasts_that_onnxruntime_does_not_compute_are_refused() -> None:
    for model, reason in ((mha_model(outputs=1), "past without present_key/present_value outputs"),
                          (mha_model(outputs=2), "present_key without present_value")):
        rewritten, result = rewrite(model)
        assert result.rewritten == () and any(reason in r for item in result.refused for r in item.reasons), \
            result.refused


@pytest.mark.parametrize("flag,op", [("block:keep=1.0,block=4", "BlockSparseAttention"),
                                     ("blasst:scale_factor=0.000001", "SkipSoftmaxAttention")])
def test_padded_group_query_attention_is_sparsified_end_to_end(flag: str, op: str) -> None:
    """The rewritten site (key mask + lower-right causal) is one the sparse ops take: with every block kept,
    or a threshold nothing reaches, the sparse graph equals onnxruntime's kernel on padded prompts and decode
    steps; with half the blocks kept it differs (the selection is applied, not dropped)."""
    from edgeattn.graphs.sparse.api import sparsify

    model = gqa_model(heads=4, kv_heads=2)
    sparse, report = sparsify(model, [flag])
    assert [n.op_type for n in sparse.graph if n.domain == "edgeattn"] == [op] and not report.rewrite.refused
    original, ours = session(model), session(ir.serde.serialize_model(sparse))
    for inputs in (padded_feeds(model, 9, 0, [9, 6]), padded_feeds(model, 1, 8, [9, 5])):
        expected, got = original.run(None, inputs), ours.run(None, inputs)
        rows = inputs["attention_mask"].sum(1) if inputs["attention_mask"].shape[1] == 9 and expected[0].shape[1] > 1 \
            else [1, 1]
        for b, n in enumerate(rows):
            assert relative_error([expected[0][b, :n]], [got[0][b, :n]]) < RTOL_FLOAT32
        assert relative_error(expected[1:], got[1:]) < RTOL_FLOAT32
    if op == "BlockSparseAttention":
        half, _ = sparsify(model, ["block:keep=0.5,block=4"])
        inputs = padded_feeds(model, 9, 0, [9, 9])
        assert relative_error(original.run(None, inputs), session(ir.serde.serialize_model(half)).run(None, inputs)) > 1e-2
