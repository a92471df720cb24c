"""TensorRT plugins, checked without a GPU.

- Each plugin's output shapes (dim expressions TensorRT evaluates) agree with the op's own shape rule.
- Plugin fields round-trip the op's attributes exactly as the ONNX parser passes them.
- Launch formulas are parsed, never evaluated as Python.
- The very launch a plugin's `enqueue` makes (`ops.trt_plugin.launch_node`: symbols from the input dims, the
  kernels of the AOT build record, grids, int32 scalars, buffer bindings, workspace carving) runs here through
  the Triton interpreter on CPU tensors and equals the op's reference. The records are compiled ahead of time
  for sm_89 in a child process (what `edgeattn compile` does), so what is checked is what an engine carries.

Tolerances: fp16 kernels accumulate in fp32 and round the output to fp16 (relative step 2**-11 ~ 4.9e-4);
against a float64 reference 2e-3 absolute/relative leaves room for the fp16 rounding of inputs and output.
Float32 scores are checked at 1e-5 relative (fp32 accumulation of a few dozen terms).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch

from edgeattn.errors import EdgeAttnError
from edgeattn.kernels.aot_bundle import compile_records
from edgeattn.kernels.launch import evaluate
from edgeattn.ops import trt_plugin as tp
from edgeattn.ops.registry import get_op

ARCH = 89


# -- formulas --------------------------------------------------------------------------------------------


def test_launch_formulas_are_parsed_not_run() -> None:
    assert evaluate("cdiv(cdiv(Lkv,64),S)", {"Lkv": 130, "S": 2}) == 2
    assert evaluate("(P+N)*Dm", {"P": 1, "N": 16, "Dm": 8}) == 136
    assert evaluate("B*Hq/Hkv - 1", {"B": 2, "Hq": 8, "Hkv": 2}) == 7
    for bad in ("__import__('os').system('true')", "Hq/3", "Unknown*2", "1+", "2**3", "cdiv(4,0)", "x" * 300):
        with pytest.raises(EdgeAttnError):
            evaluate(bad, {"Hq": 8})


# -- shapes and fields -------------------------------------------------------------------------------------

# (op, attributes, present inputs, input shapes, outputs)
SHAPE_CASES = [
    ("Attention", {"causal": 2}, (0, 1, 2, 3), [(2, 4, 5, 16), (2, 2, 7, 16), (2, 2, 7, 32), (1, 1, 1, 1)], 1),
    ("SkipSoftmaxAttention", {"scale_factor": 4.0}, (0, 1, 2), [(1, 8, 33, 64), (1, 2, 40, 64), (1, 2, 40, 64)], 1),
    ("TokenScore", {"source": "cls", "skip": 1}, (0, 1), [(2, 4, 17, 16), (2, 2, 17, 16)], 1),
    ("TokenScore", {"source": "mean_received", "skip": 5}, (0, 3), [(2, 4, 21, 21), (16,)], 1),
    ("TokenSelect", {"k": 5, "prefix": 1, "keep_prefix": 1}, (0, 1), [(2, 16), (2, 17, 8)], 2),
    ("TokenSelect", {"k": 3, "mode": "regions", "regions": 4}, (0, 1), [(3, 16), (3, 16, 8)], 2),
]


@pytest.mark.parametrize("case", SHAPE_CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(SHAPE_CASES)])
def test_plugin_output_shapes_follow_the_op_shape_rule(case: tuple) -> None:
    op, given, present, shapes, outputs = case
    spec = get_op(op)
    definition = spec.plugin_def()
    attrs = spec.resolve(given)
    full: list[Any] = [None] * len(spec.inputs)
    for position, shape in zip(present, shapes):
        full[position] = list(shape)
    expected = spec.infer_shapes(full, attrs)[:outputs]
    got = [[tp.concrete(d, shapes) for d in dims] for dims in definition.output_dims(attrs, present)[:outputs]]
    assert got == expected


@pytest.mark.parametrize("op", ["Attention", "SkipSoftmaxAttention", "TokenScore", "TokenSelect"])
def test_plugin_fields_round_trip_the_attributes(op: str) -> None:
    spec = get_op(op)
    changed = {"SkipSoftmaxAttention": {"scale_factor": 2.5, "block_m": 64, "causal": 2},
               "Attention": {"scale": 0.125, "causal": 1}, "TokenScore": {"source": "mean_received", "skip": 3},
               "TokenSelect": {"mode": "regions", "k": 7, "alpha": 0.5}}[op]  # fmt: skip
    attrs = spec.resolve(changed)
    kernels = tp.Bundle((0, 1), 1, {ARCH: [{"kernels": []}]}).to_bytes()
    fields = {name: data for name, data, _ in tp.encode_fields(spec, attrs, kernels)}
    decoded, bundle_bytes = tp.decode_fields(spec, fields)
    assert bundle_bytes == kernels and tp.Bundle.from_bytes(bundle_bytes).present == (0, 1)
    for attr in spec.attributes:  # float32 fields: compare at float32
        want, got = attrs[attr.name], decoded[attr.name]
        if attr.kind == "float":
            assert np.float32(want) == np.float32(got), attr.name
        else:
            assert want == got, attr.name


def test_a_bundle_bomb_is_refused() -> None:
    import zlib

    with pytest.raises(ValueError, match="larger than"):
        tp.Bundle.from_bytes(zlib.compress(b" " * (tp.MAX_KERNELS_BYTES + 10)))


def test_builds_for_the_device_architecture() -> None:
    assert tp.pick_arch([87, 89, 90], 89) == 89
    assert tp.pick_arch([80, 86], 89) == 86  # plain PTX runs on newer GPUs
    assert tp.pick_arch([90], 120) is None  # sm_90a PTX is tied to Hopper


# -- the enqueue launch, through the Triton interpreter ----------------------------------------------------


def _jit(name: str) -> Any:
    from edgeattn.kernels.block_sparse import attention as bs_attention
    from edgeattn.kernels.block_sparse import selection as bs_selection
    from edgeattn.kernels.skip_softmax import kernel as skip
    from edgeattn.kernels.tokens import scoring, selection

    for module in (skip, scoring, selection, bs_selection, bs_attention):
        if hasattr(module, name):
            return getattr(module, name)
    raise KeyError(name)


def interpreter(step: Any, values: list[Any]) -> None:
    """Launch one planned step with the kernel's Triton function in the interpreter (CPU tensors)."""
    kwargs = {arg.name: value for arg, value in zip(step.args, values)} | dict(step.constexprs)
    _jit(step.kernel)[step.grid](**kwargs, num_warps=step.num_warps)


TORCH = {"fp16": torch.float16, "fp32": torch.float32, "i32": torch.int32, "u8": torch.uint8, "i64": torch.int64}


def _view(op: str, attrs: dict[str, Any], tensors: list[torch.Tensor | None], outputs: int) -> tp.NodeView:
    names = {torch.float16: "fp16", torch.float32: "fp32", torch.bfloat16: "bf16"}
    present = tuple(i for i, t in enumerate(tensors) if t is not None)
    views = tuple(tp.InputView(names[t.dtype], tuple(t.shape)) for t in tensors if t is not None)
    return tp.NodeView(get_op(op).resolve(attrs), views, present, outputs)


def run_plugin(op: str, attrs: dict[str, Any], tensors: list[torch.Tensor | None], outputs: list[torch.Tensor]) -> str:
    """What a plugin of `op` computes for these inputs (written into `outputs`); returns the kernel variant."""
    spec = get_op(op)
    definition = spec.plugin_def()
    view = _view(op, attrs, tensors, len(outputs))
    choice = definition.choose(view)
    assert not isinstance(choice, str), choice
    (record,) = compile_records([{"family": choice.family, "build_class": choice.build_class,
                                  "build": dict(choice.builds[0]), "arch": ARCH}])  # fmt: skip
    bundle = tp.Bundle(view.present, len(outputs), {ARCH: [record]})
    present = [t for t in tensors if t is not None]
    workspace = torch.zeros(1 << 20, dtype=torch.uint8)

    def scratch(name: str, offset: int, size: int, dtype: str) -> torch.Tensor:
        return workspace[offset: offset + size].view(TORCH[dtype])

    def shift(tensor: torch.Tensor, nbytes: int) -> torch.Tensor:
        return tensor.reshape(-1)[nbytes // tensor.element_size():]

    tp.launch_node(definition, view.attributes, bundle, record, [tuple(t.shape) for t in present], present, outputs,
                   scratch, interpreter, shift)  # fmt: skip
    return record["variant"]


def _rand(*shape: int, dtype: torch.dtype = torch.float16, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


@pytest.mark.parametrize("causal", [0, 2])
def test_the_attention_plugin_launch_equals_the_reference(causal: int) -> None:
    q, k, v = _rand(1, 4, 40, 16, seed=1), _rand(1, 2, 40, 16, seed=2), _rand(1, 2, 40, 16, seed=3)
    zero_mask = torch.zeros(1, 1, 1, 1, dtype=torch.float16)
    out = torch.empty_like(q)
    view_mask = tp.InputView("fp16", (1, 1, 1, 1), np.zeros((1, 1, 1, 1), np.float16))
    spec = get_op("Attention")
    view = _view("Attention", {"causal": causal}, [q, k, v, zero_mask], 1)
    view = tp.NodeView(view.attributes, (*view.inputs[:3], view_mask), view.present, 1)
    assert not isinstance(spec.plugin_def().choose(view), str)
    run_plugin_with_view("Attention", view, [q, k, v, zero_mask], [out])
    ref = spec.reference(q.double(), k.double(), v.double(), causal=causal)
    torch.testing.assert_close(out.double(), ref, atol=2e-3, rtol=2e-3)


def run_plugin_with_view(op: str, view: tp.NodeView, tensors: list[torch.Tensor], outputs: list[torch.Tensor]) -> None:
    definition = get_op(op).plugin_def()
    choice = definition.choose(view)
    (record,) = compile_records([{"family": choice.family, "build_class": choice.build_class,
                                  "build": dict(choice.builds[0]), "arch": ARCH}])  # fmt: skip
    bundle = tp.Bundle(view.present, len(outputs), {ARCH: [record]})
    tp.launch_node(definition, view.attributes, bundle, record, [tuple(t.shape) for t in tensors], tensors, outputs,
                   lambda *a: None, interpreter)  # fmt: skip


def test_the_skip_softmax_plugin_launch_equals_the_reference() -> None:
    attrs = {"scale_factor": 3.0, "causal": 2, "block_m": 16, "block_n": 16}
    q, k, v = _rand(1, 2, 48, 16, seed=4), _rand(1, 2, 48, 16, seed=5), _rand(1, 2, 48, 16, seed=6)
    out = torch.empty_like(q)
    run_plugin("SkipSoftmaxAttention", attrs, [q, k, v], [out])
    ref = get_op("SkipSoftmaxAttention").reference(q.double(), k.double(), v.double(), **attrs)
    ref = ref[0] if isinstance(ref, tuple) else ref
    torch.testing.assert_close(out.double(), ref, atol=2e-3, rtol=2e-3)


def test_the_token_score_plugin_launches_equal_the_reference() -> None:
    q, k = _rand(2, 4, 17, 16, seed=7), _rand(2, 2, 17, 16, seed=8)
    weights = torch.rand(16, generator=torch.Generator().manual_seed(9))
    scores = torch.empty(2, 16)
    assert run_plugin("TokenScore", {"source": "cls"}, [q, k, None, weights], [scores]).startswith("score_cls_qk_d16")
    ref = get_op("TokenScore").reference(q.double(), k.double(), weights=weights.double(), source="cls")
    torch.testing.assert_close(scores.double(), ref.double(), atol=2e-3, rtol=2e-3)

    probs = torch.softmax(torch.randn(2, 4, 21, 21, generator=torch.Generator().manual_seed(10)), -1)
    scores = torch.empty(2, 20)
    run_plugin("TokenScore", {"source": "mean_received", "head_reduce": "max"}, [probs], [scores])
    ref = get_op("TokenScore").reference(probs.double(), source="mean_received", head_reduce="max")
    torch.testing.assert_close(scores.double(), ref.double(), atol=0, rtol=1e-5)


@pytest.mark.parametrize("mode", ["topk", "regions"])
def test_the_token_select_plugin_launch_equals_the_reference(mode: str) -> None:
    attrs = {"k": 6, "mode": mode, "prefix": 1, "keep_prefix": 1, "regions": 4}
    scores = torch.rand(2, 24, generator=torch.Generator().manual_seed(11))
    features = _rand(2, 25, 32, seed=12)
    selected, indices = torch.empty(2, 7, 32, dtype=torch.float16), torch.empty(2, 6, dtype=torch.int64)
    run_plugin("TokenSelect", attrs, [scores, features], [selected, indices])
    ref_selected, ref_indices = get_op("TokenSelect").reference(scores, features, **attrs)
    assert torch.equal(indices, ref_indices) and torch.equal(selected, ref_selected)


def test_nodes_without_a_kernel_say_why() -> None:
    f32 = tp.InputView("fp32", (1, 2, 8, 16))
    view = tp.NodeView(get_op("Attention").resolve({}), (f32, f32, f32), (0, 1, 2), 1)
    assert "fp32" in get_op("Attention").plugin_def().choose(view)
    h8 = tp.InputView("fp16", (1, 2, 8, 8))
    view = tp.NodeView(get_op("Attention").resolve({}), (h8, h8, h8), (0, 1, 2), 1)
    assert "head size 8" in get_op("Attention").plugin_def().choose(view)
    h16 = tp.InputView("fp16", (1, 2, 8, 16))
    mask = tp.InputView("fp16", (1, 1, 8, 8), np.ones((1, 1, 8, 8), np.float16))
    view = tp.NodeView(get_op("Attention").resolve({}), (h16, h16, h16, mask), (0, 1, 2, 3), 1)
    assert "mask" in get_op("Attention").plugin_def().choose(view)
    view = tp.NodeView(get_op("SkipSoftmaxAttention").resolve({}), (h16, h16, h16), (0, 1, 2), 2)
    assert "skip_ratio" in get_op("SkipSoftmaxAttention").plugin_def().choose(view)
    scores, feats = tp.InputView("fp32", (1, 16)), tp.InputView("fp16", (1, 16, 8))
    view = tp.NodeView(get_op("TokenSelect").resolve({"mode": "diversity", "k": 4}), (scores, feats), (0, 1), 2)
    assert "diversity" in get_op("TokenSelect").plugin_def().choose(view)
    view = tp.NodeView(get_op("BlockSelect").resolve({"causal": 1}), (h16, h16), (0, 1), 1)
    assert "upper-left" in get_op("BlockSelect").plugin_def().choose(view)


# -- every architecture `compile` accepts ------------------------------------------------------------------

PLUGIN_BUILDS = [  # the largest tiles the plugins compile: a 128-wide flash kernel and a 64-wide score pass
    ("skip_softmax", "SkipSoftmaxBuild", {"head_dim": 128, "dtype": "fp16", "causal": True, "scale_factor": 0.0,
                                          "block_m": 64}),  # the Attention plugin's build for 128-wide heads
    ("tokens", "TokenScoreBuild", {"source": "cls", "head_dim": 64, "dtype": "fp16", "weights": True}),
]


def test_plugin_kernels_build_for_every_target_within_its_shared_memory() -> None:
    from edgeattn.kernels.triton_aot import TARGETS

    requests = [{"family": f, "build_class": c, "build": b, "arch": arch} for arch in sorted(TARGETS)
                for f, c, b in PLUGIN_BUILDS]  # fmt: skip
    records = compile_records(requests)
    for request, record in zip(requests, records):
        for kernel in record["kernels"]:
            target = TARGETS[request["arch"]]
            assert kernel["ptx_target"] == target.ptx_target
            assert 0 <= kernel["shared_bytes"] <= target.max_shared_bytes, (request, kernel["kernel"])
            assert f".target {target.ptx_target}" in kernel["ptx"]


def test_a_tile_too_large_for_an_architecture_is_one_line() -> None:
    from edgeattn.kernels.triton_aot import AotBuildError

    big = {"head_dim": 128, "dtype": "fp16", "causal": True, "scale_factor": 10.0, "block_m": 128}
    with pytest.raises(AotBuildError, match="sm_75 allows 65536 per block"):
        compile_records([{"family": "skip_softmax", "build_class": "SkipSoftmaxBuild", "build": big, "arch": 75}])


@pytest.mark.parametrize("layout", ["select", "window"])
def test_the_block_sparse_plugin_launch_equals_the_reference(layout: str) -> None:
    attrs = {"layout": layout, "block_size": 16, "keep": 0.5, "causal": 2, "window": 24, "sinks": 4}
    q, k, v = _rand(1, 4, 40, 16, seed=13), _rand(1, 2, 72, 16, seed=14), _rand(1, 2, 72, 16, seed=15)
    out = torch.empty_like(q)
    run_plugin("BlockSparseAttention", attrs, [q, k, v], [out])
    ref = get_op("BlockSparseAttention").reference(q.double(), k.double(), v.double(), **attrs)
    ref = ref[0] if isinstance(ref, tuple) else ref
    torch.testing.assert_close(out.double(), ref.double(), atol=2e-3, rtol=2e-3)


# -- the key mask: what a decoder's mask is once its causal part is the `causal` attribute --------------------


def _padding_bias(batch: int, kv_len: int, hidden: dict[int, slice]) -> torch.Tensor:
    """An additive key mask [batch, 1, 1, kv_len] in fp16: -inf on the `hidden` keys of each batch entry."""
    bias = torch.zeros(batch, 1, 1, kv_len, dtype=torch.float16)
    for entry, keys in hidden.items():
        bias[entry, ..., keys] = -math.inf
    return bias


def _with_mask(op: str, attrs: dict[str, Any], q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               mask: torch.Tensor) -> torch.Tensor:
    out = torch.empty_like(q)
    variant = run_plugin(op, attrs, [q, k, v, mask], [out])
    assert variant.endswith("kbias"), variant  # the build adds the mask; it is not dropped
    return out


# (op, attributes): left padding in a batch of two, the second entry padded after a shared prefix
KEY_MASK_CASES = [
    ("Attention", {"causal": 2}),
    ("Attention", {"causal": 0}),
    ("SkipSoftmaxAttention", {"scale_factor": 3.0, "causal": 2, "block_m": 16, "block_n": 16}),
    ("BlockSparseAttention", {"layout": "select", "block_size": 16, "keep": 0.5, "causal": 2}),
    ("BlockSparseAttention", {"layout": "select", "block_size": 16, "keep": 0.5, "causal": 2, "rectify": 1}),
    ("BlockSparseAttention", {"layout": "window", "block_size": 16, "causal": 2, "window": 24, "sinks": 4}),
]


@pytest.mark.parametrize("case", KEY_MASK_CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(KEY_MASK_CASES)])
def test_the_attention_plugins_apply_a_key_mask_as_the_reference(case: tuple) -> None:
    op, attrs = case
    q, k, v = _rand(2, 4, 40, 16, seed=21), _rand(2, 2, 72, 16, seed=22), _rand(2, 2, 72, 16, seed=23)
    if attrs.get("causal") == 0:
        k, v = k[:, :, :40].contiguous(), v[:, :, :40].contiguous()  # the plugin reads contiguous tensors
    kv_len = k.shape[2]
    mask = _padding_bias(2, kv_len, {0: slice(0, 7), 1: slice(kv_len - 50, kv_len - 45)})
    out = _with_mask(op, attrs, q, k, v, mask)
    ref = get_op(op).reference(q.double(), k.double(), v.double(), mask.double(), **attrs)
    ref = ref[0] if isinstance(ref, tuple) else ref
    torch.testing.assert_close(out.double(), ref.double(), atol=2e-3, rtol=2e-3)
    unmasked = get_op(op).reference(q.double(), k.double(), v.double(), **attrs)
    unmasked = unmasked[0] if isinstance(unmasked, tuple) else unmasked
    assert (out.double() - unmasked.double()).abs().max() > 0.05  # the mask changed the result: it was applied


def test_one_mask_row_is_shared_by_the_batch() -> None:
    """A mask [1, 1, 1, Lkv] broadcasts over the batch (batch stride 0)."""
    q, k, v = _rand(2, 4, 32, 16, seed=24), _rand(2, 2, 32, 16, seed=25), _rand(2, 2, 32, 16, seed=26)
    mask = _padding_bias(1, 32, {0: slice(3, 9)})
    out = _with_mask("Attention", {"causal": 2}, q, k, v, mask)
    ref = get_op("Attention").reference(q.double(), k.double(), v.double(), mask.double(), causal=2)
    torch.testing.assert_close(out.double(), ref, atol=2e-3, rtol=2e-3)


def test_masks_the_kernels_cannot_apply_keep_their_bodies() -> None:
    h16 = tp.InputView("fp16", (1, 2, 8, 16))
    cases = [(tp.InputView("fp16", (1, 1, 8, 8)), "varies per query row"),  # a full [Sq, Skv] mask
             (tp.InputView("fp16", (1, 2, 1, 8)), "varies per query row or head"),  # per head
             (tp.InputView("bool", (1, 1, 1, 8)), "bool mask"),  # the TensorRT form makes masks additive first
             (tp.InputView("fp16", None), "varies per query row")]  # shape unknown
    for op in ("Attention", "SkipSoftmaxAttention", "BlockSparseAttention"):
        attrs = get_op(op).resolve({"block_size": 16} if op == "BlockSparseAttention" else {})
        for mask, needle in cases:
            reason = get_op(op).plugin_def().choose(tp.NodeView(attrs, (h16, h16, h16, mask), (0, 1, 2, 3), 1))
            assert isinstance(reason, str) and needle in reason, (op, reason)


def test_a_mask_that_does_not_broadcast_is_refused_at_launch() -> None:
    from edgeattn.ops.attention.trt import key_bias_symbols

    q, kv = (2, 4, 8, 16), (2, 2, 12, 16)
    assert key_bias_symbols((0, 1, 2, 3), [q, kv, kv, (2, 1, 1, 12)]) == {"KBS": 12, "KNS": 1}
    assert key_bias_symbols((0, 1, 2, 3), [q, kv, kv, (1, 1, 1, 1)]) == {"KBS": 0, "KNS": 0}
    assert key_bias_symbols((0, 1, 2), [q, kv, kv]) == {"KBS": 0, "KNS": 0}
    for bad in ((2, 1, 1, 11), (3, 1, 1, 12), (2, 1, 12)):
        with pytest.raises(ValueError, match="does not broadcast"):
            key_bias_symbols((0, 1, 2, 3), [q, kv, kv, bad])


# -- BlockSelect: the selection kernels with the block mask as the output ----------------------------------------

# (q_len, kv_len, attributes): a KV cache that starts mid-block, a prefill, no causal rule, a decode step
BLOCK_SELECT_CASES = [
    (40, 72, {"causal": 2, "block_size": 16, "keep": 0.5}),
    (48, 48, {"causal": 2, "block_size": 16, "mode": "threshold", "threshold": 0.05, "key_pool": "max"}),
    (33, 33, {"causal": 0, "block_size": 16, "mode": "cumprob", "cum_prob": 0.7, "group_reduce": "max"}),
    (1, 50, {"causal": 2, "block_size": 16, "keep": 0.5, "dense_decode": 0}),
]


@pytest.mark.parametrize("case", BLOCK_SELECT_CASES, ids=[str(i) for i in range(len(BLOCK_SELECT_CASES))])
def test_the_block_select_plugin_launch_equals_the_reference(case: tuple) -> None:
    q_len, kv_len, attrs = case
    q, k = _rand(2, 4, q_len, 16, seed=31), _rand(2, 2, kv_len, 16, seed=32)
    ref = get_op("BlockSelect").reference(q.double(), k.double(), **attrs)
    definition = get_op("BlockSelect").plugin_def()
    resolved = get_op("BlockSelect").resolve(attrs)
    (dims,) = definition.output_dims(resolved, (0, 1))
    shape = [tp.concrete(d, [tuple(q.shape), tuple(k.shape)]) for d in dims]
    assert shape == list(ref.shape)  # the plugin's output dims are the reference's block geometry
    mask = torch.zeros(shape, dtype=torch.bool)
    assert run_plugin("BlockSelect", attrs, [q, k], [mask]).endswith("maskout")
    assert torch.equal(mask, ref)
    if q_len > 1:  # some blocks dropped, some kept: a selection, not a constant
        assert 0 < int(mask.sum()) < mask.numel()
