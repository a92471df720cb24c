"""Sparse rewrites of graphs: the onnxruntime lowerings against the function bodies, causal masks made
explicit, flags and recipes, refusals, and generation with a sparse decoder."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeattn.errors import RecipeError
from edgeattn.graphs.sparse.api import sparsify
from edgeattn.graphs.sparse.density import layout_density
from edgeattn.graphs.sparse.flags import parse_sparse_flag
from edgeattn.ops.registry import get_op
from tests.models.sparse_graphs import (
    attention_feeds,
    attention_site,
    full_attrs,
    rel_err,
    run_body,
    run_fast,
    session,
)

TOL = 1e-5
SPARSE = get_op("BlockSparseAttention")
DENSE = get_op("Attention")


def _arrays(rng, batch, q_heads, kv_heads, q_len, kv_len, head=8, padded=0):
    q = rng.standard_normal((batch, q_heads, q_len, head), np.float32)
    k = rng.standard_normal((batch, kv_heads, kv_len, head), np.float32)
    v = rng.standard_normal((batch, kv_heads, kv_len, head), np.float32)
    mask = np.ones((batch, 1, 1, kv_len), bool)
    mask[-1, 0, 0, :padded] = False
    return q, k, v, mask


LOWERINGS = [
    (DENSE, {}, "causal-chunks"),
    (SPARSE, dict(layout="select", keep=0.3, block_size=8), "block-gather"),
    (SPARSE, dict(layout="select", keep=0.3, block_size=8, local_blocks=2, sink_blocks=2, dense_last_rows=1,
                  key_pool="max", group_reduce="max", query_pool="rows"), "block-gather"),
    (SPARSE, dict(layout="select", keep_blocks=2, block_size=8, dense_decode=0), "block-gather"),
    (SPARSE, dict(layout="window", window=11, sinks=3, block_size=8), "window-gather"),
    (SPARSE, dict(layout="window", window=50, sinks=0, block_size=8), "window-gather"),  # may hold every key
]


@pytest.mark.parametrize("spec,extra,kind", LOWERINGS)
@pytest.mark.parametrize("q_len,kv_len,padded", [(45, 45, 0), (45, 45, 6), (19, 60, 0), (1, 60, 4), (1040, 1040, 0)])
def test_fast_lowering_equals_function_body(spec, extra, kind, q_len, kv_len, padded):
    """Prefill, prefill after a cache, decode, padding (rows that see no key give zeros), long enough
    for the chunked path (>= 16·64 rows)."""
    rng = np.random.default_rng(q_len + kv_len + padded)
    arrays = _arrays(rng, 2, 6, 2, q_len, kv_len, padded=padded)
    attrs = full_attrs(spec, causal=2, q_num_heads=6, kv_num_heads=2, **extra)
    (body,) = run_body(spec, arrays, attrs)
    (fast,), report = run_fast(spec, arrays, attrs)
    assert [item.lowering for item in report] == [kind]
    assert rel_err(fast, body) <= TOL


@settings(max_examples=6, deadline=None)
@given(kv_heads=st.integers(1, 3), group=st.integers(1, 3), q_len=st.integers(1, 50), past=st.integers(0, 30),
       block=st.sampled_from([4, 8, 16]), keep=st.floats(0.05, 1.0), layout=st.sampled_from(["select", "window"]),
       window=st.integers(1, 40), sinks=st.integers(0, 9))
def test_fast_lowering_property(kv_heads, group, q_len, past, block, keep, layout, window, sinks):
    rng = np.random.default_rng(q_len * 7 + past)
    arrays = _arrays(rng, 1, kv_heads * group, kv_heads, q_len, q_len + past, padded=0)
    attrs = full_attrs(SPARSE, causal=2, q_num_heads=kv_heads * group, kv_num_heads=kv_heads, layout=layout,
                       block_size=block, keep=keep, window=window, sinks=sinks)
    (body,) = run_body(SPARSE, arrays, attrs)
    (fast,), _ = run_fast(SPARSE, arrays, attrs)
    assert rel_err(fast, body) <= TOL


@pytest.mark.parametrize("extra,reason", [
    (dict(causal=0), "causal"),
    (dict(mode="threshold"), "topk"),
    (dict(rectify=1), "rectify"),
    (dict(heads=(1,)), "heads"),
])
def test_nodes_the_fast_lowering_leaves_keep_their_body(extra, reason):
    rng = np.random.default_rng(0)
    arrays = _arrays(rng, 1, 4, 2, 20, 20)
    attrs = full_attrs(SPARSE, **{"causal": 2, "block_size": 8, "keep": 0.5, **extra})
    (fast,), report = run_fast(SPARSE, arrays, attrs)
    assert report[0].lowering == "function" and reason in report[0].reason
    (body,) = run_body(SPARSE, arrays, attrs)
    assert rel_err(fast, body) <= TOL


def test_skip_softmax_keeps_its_exact_body():
    rng = np.random.default_rng(0)
    spec = get_op("SkipSoftmaxAttention")
    arrays = _arrays(rng, 1, 4, 2, 30, 30)
    _, report = run_fast(spec, arrays, full_attrs(spec, causal=2, scale_factor=4.0))
    assert report[0].lowering == "function" and "computes every score" in report[0].reason


def _run_site(model, feeds):
    return session(ir.serde.serialize_model(model) if isinstance(model, ir.Model) else model).run(None, feeds)[0]


@pytest.mark.parametrize("q_len,kv_len,padded", [(40, 40, 0), (40, 40, 5), (9, 33, 0), (1, 33, 2)])
def test_sparsify_an_exported_site(q_len, kv_len, padded):
    """The export's causal-and-padding mask becomes causal = 2 plus a key mask; the dense lowering
    gives what the Attention op gives; the block lowering gives what its body gives."""
    site = attention_site()
    feeds = attention_feeds(np.random.default_rng(q_len), 2, 4, 2, q_len, kv_len, 8, padded)
    plain = _run_site(site, feeds)
    dense, report = sparsify(site, component="decoder")
    assert len(report.causal_sites) == 1 and [x.lowering for x in report.lowered] == ["causal-chunks"]
    assert rel_err(_run_site(dense, feeds), plain) <= TOL
    flags = ["block:keep=0.4,block=8"]
    fast, _ = sparsify(site, flags, component="decoder")
    body, _ = sparsify(site, flags, component="decoder", lowering="function")
    assert rel_err(_run_site(fast, feeds), _run_site(body, feeds)) <= TOL


def test_density_of_layouts_matches_the_density_output():
    rng = np.random.default_rng(1)
    arrays = _arrays(rng, 1, 4, 2, 50, 50)[:3]
    for extra in (dict(layout="select", keep=0.3), dict(layout="window", window=12, sinks=5)):
        attrs = full_attrs(SPARSE, causal=2, block_size=8, **extra)
        _, density = run_body(SPARSE, arrays, attrs, outputs=2)
        assert abs(layout_density({**extra, "block_size": 8}, 50) - float(density)) < 1e-6


# -- flags, recipes, refusals -------------------------------------------------------------------------------


def test_flags_become_recipe_entries():
    assert parse_sparse_flag("block:keep=0.25,block=64") == {
        "op": "BlockSparseAttention", "layout": "select", "keep": 0.25, "block_size": 64}
    assert parse_sparse_flag("window:size=512,sinks=4,layers=1-3") == {
        "op": "BlockSparseAttention", "layout": "window", "window": 512, "sinks": 4, "layers": "1-3"}
    assert parse_sparse_flag("blasst:scale_factor=4") == {"op": "SkipSoftmaxAttention", "scale_factor": 4.0}
    assert parse_sparse_flag("block:keep=0.5,heads=0-1+3,decode=sparse")["heads"] == [0, 1, 3]


@pytest.mark.parametrize("flag,words", [
    ("block:keep=1.5", "keep must be in (0, 1]"),
    ("block:keep=0", "keep must be in (0, 1]"),
    ("window:size=64,sinks=-1", "sinks must be >= 0"),
    ("block:block=0", "block_size must be >= 1"),
    ("blasst:scale_factor=-2", "scale_factor must be >= 0"),
    ("block:bogus=3", "unknown key 'bogus'"),
    ("sparse", "names no method"),
    ("block:heads=3-1", "reversed"),
])
def test_bad_flags_are_one_sentence_recipe_errors(flag, words):
    with pytest.raises(RecipeError) as caught:
        parse_sparse_flag(flag)
    message = str(caught.value)
    assert words in message and "\n" not in message and message.count(". ") == 0


@pytest.mark.parametrize("flags,words", [
    (["block:keep=0.25,block=16"], "block size 16 does not divide the static query length 40"),
    (["window:size=64,sinks=4,block=8"], "window 64 is larger than the sequence (40 keys)"),
    (["block:keep=0.5,block=8,heads=2"], "heads [2] name key/value heads the site lacks (it has 2)"),
    (["block:keep=0.5,block=8,layers=3"], "asks for layers 3"),
])
def test_parameters_checked_against_the_graph(flags, words):
    site = attention_site(static_len=40)
    with pytest.raises(RecipeError) as caught:
        sparsify(site, flags, component="decoder")
    assert words in str(caught.value) and "\n" not in str(caught.value)


def test_recipe_per_layer_and_head_range(exported):
    """Layer 1 of the tiny Llama block-sparse on key/value head 0 only, layer 0 windowed."""
    folder = exported("demo:tiny-llama")
    recipe = {"site": [
        {"layers": "1", "op": "BlockSparseAttention", "layout": "select", "keep": 0.5, "block_size": 4, "heads": [0]},
        {"layers": [0], "op": "BlockSparseAttention", "layout": "window", "window": 6, "sinks": 1, "block_size": 4},
    ]}
    model, report = sparsify(folder / "decoder.onnx", recipe=recipe, component="decoder", lowering="function")
    nodes = {n.metadata_props.get("edgeattn.layer"): n for n in model.graph if n.domain == "edgeattn"}
    assert list(nodes["1"].attributes["heads"].value) == [0] and nodes["0"].attributes["layout"].value == "window"
    assert len(report.causal_sites) == 2


def test_generation_with_a_sparse_decoder(exported, tmp_path):
    """`edgeattn run` reads a sparsified folder: prefill block-sparse (keep 1: the same tokens as the
    export), decode dense by default; a sparse decode (decode=sparse) runs too."""
    import shutil

    from edgeattn.manifest import read_manifest
    from edgeattn.exporter.rewrite_step import sparsify_decoder
    from edgeattn.runtime.generate import DecoderRunner

    folder = exported("demo:tiny-llama")
    prompt = list(range(5, 45))
    plain = DecoderRunner(folder, read_manifest(folder)).generate(prompt, 6).tokens
    cases = ((["block:keep=1.0,block=8"], True), (["block:keep=0.25,block=8,decode=sparse"], False),
             (["window:size=16,sinks=4,block=8"], False))
    for index, (flags, same) in enumerate(cases):
        out = tmp_path / f"sparse{index}"
        shutil.copytree(folder, out)
        report = sparsify_decoder(out, flags)
        manifest = read_manifest(out)
        assert manifest.sparse["flags"] == flags and {x.lowering for x in report.lowered} != {"function"}
        tokens = DecoderRunner(out, manifest).generate(prompt, 6).tokens
        assert 1 <= len(tokens) <= 6
        if same:
            assert tokens == plain


def test_cli_rewrite_sparse_and_inspect(tmp_path):
    """`rewrite --sparse` writes the lowered file and says what each site runs as; `inspect` lists the
    lowered sites (not the slices they run on as new sites)."""
    import json

    import onnx
    from click.testing import CliRunner

    from edgeattn.cli.main import cli

    source = tmp_path / "decoder.onnx"
    onnx.save(attention_site(), source)
    runner = CliRunner()
    result = runner.invoke(cli, ["rewrite", str(source), str(tmp_path / "out.onnx"), "--sparse",
                                 "block:keep=0.5,block=8", "--json"], catch_exceptions=False)
    data = json.loads(result.output)
    assert data["causal_from_mask"] and [x["lowering"] for x in data["lowered"]] == ["block-gather"]
    result = runner.invoke(cli, ["inspect", str(tmp_path / "out.onnx"), "--json"], catch_exceptions=False)
    data = json.loads(result.output)
    assert data["sites"] == [] and data["lowered"][0]["op"] == "BlockSparseAttention"
    assert data["lowered"][0]["attributes"]["keep"] == 0.5
    result = runner.invoke(cli, ["rewrite", str(source), str(tmp_path / "bad.onnx"), "--sparse", "block:keep=2"])
    assert result.exit_code != 0 and "keep must be in (0, 1]" in str(result.exception)


def test_sparsify_decoder_in_place(exported, tmp_path):
    """What `export --sparse` does after exporting: the folder's decoder rewritten where it is."""
    import shutil

    from edgeattn.manifest import read_manifest
    from edgeattn.exporter.rewrite_step import sparsify_decoder
    from edgeattn.runtime.generate import DecoderRunner

    folder = tmp_path / "copy"
    shutil.copytree(exported("demo:tiny-llama"), folder)
    report = sparsify_decoder(folder, ["window:size=8,sinks=2,block=4"])
    manifest = read_manifest(folder)
    assert manifest.sparse["sites"][0]["lowering"] == "window-gather" == report.lowered[0].lowering
    assert DecoderRunner(folder, manifest).generate(list(range(5, 30)), 3).tokens


def test_inspect_says_skip_softmax_computes_everything_in_onnxruntime(tmp_path):
    import json

    import onnx
    from click.testing import CliRunner

    from edgeattn.cli.main import cli

    source = tmp_path / "decoder.onnx"
    onnx.save(attention_site(), source)
    runner = CliRunner()
    runner.invoke(cli, ["rewrite", str(source), str(tmp_path / "out.onnx"), "--sparse", "blasst:sf=4"],
                  catch_exceptions=False)
    data = json.loads(runner.invoke(cli, ["inspect", str(tmp_path / "out.onnx"), "--json"]).output)
    assert data["edgeattn_ops"] == {"SkipSoftmaxAttention": 1} and "computes every score" in data["notes"][0]
    assert data["edgeattn_nodes"][0]["attributes"]["scale_factor"] == 4.0


def test_a_benchmark_given_a_bad_setting_says_so_in_one_line():
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "ms_sparse_attention.py"
    proc = subprocess.run([sys.executable, str(script), "--length", "100"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and "does not divide" in proc.stderr
    proc = subprocess.run([sys.executable, str(script), "--length", "x"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "invalid int value" in proc.stderr


def _float_mask_site(fill: float) -> ir.Model:
    """The exported site with its boolean mask turned into `Where(mask, 0, fill)`, as many exporters write it."""
    model = ir.serde.deserialize_model(attention_site())
    (node,) = [n for n in model.graph if n.op_type == "Attention"]
    zero = ir.node("Constant", [], attributes={"value": ir.tensor(np.array(0.0, np.float32))})
    hidden = ir.node("Constant", [], attributes={"value": ir.tensor(np.array(fill, np.float32))})
    where = ir.node("Where", [node.inputs[3], zero.outputs[0], hidden.outputs[0]], name="float_mask")
    where.outputs[0].name, where.outputs[0].dtype = "float_mask", ir.DataType.FLOAT
    model.graph.insert_before(node, [zero, hidden, where])
    node.replace_input_with(3, where.outputs[0])
    return model


@pytest.mark.parametrize("fill,causal", [(-np.inf, 2), (float(np.finfo(np.float32).min), 0)])
def test_a_float_mask_is_taken_apart_only_where_that_is_exact(fill, causal):
    """With -inf the causal part moves into `causal` (a hidden key is hidden either way); with finfo.min it stays
    in the mask, since a row that sees no key would average its finite scores where causal = 2 gives zeros."""
    rng = np.random.default_rng(3)
    feeds = attention_feeds(rng, 2, 4, 2, 24, 24, 8)
    feeds["attention_mask"][-1, -5:] = 0  # right padding: every row keeps a key
    site = _float_mask_site(fill)
    plain = _run_site(site, feeds)
    model, report = sparsify(site, component="decoder", lowering="function")
    (node,) = [n for n in model.graph if n.domain == "edgeattn"]
    assert node.attributes["causal"].value == causal and len(report.causal_sites) == (1 if causal else 0)
    if causal:
        assert list(node.inputs[3].shape)[1:3] == [1, 1]  # the padding mask alone, as a float key mask
    assert rel_err(_run_site(model, feeds), plain) <= TOL
