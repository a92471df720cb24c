"""Sparse attention on SmolLM2-135M: perplexity, density and onnxruntime CPU prefill time.

    python benchmarks/sparse_quality_speed.py [--export DIR] [--lengths 1024,2048,4096]

Text: CPython's `pydoc_data.topics` (real English documentation), tokenized with the model's tokenizer;
one window of L tokens from its start per length. Each variant is the exported decoder rewritten by
`edgeattn.graphs.sparse.sparsify`; perplexity is computed from the onnxruntime logits of that decoder
at every position of the window (the same run the first timing round makes). Prefill times are
medians of interleaved rounds (every variant once per round, after one warm-up round), so a change of
machine load hits all variants alike; speedups are the median over rounds of the ratio within a round
(robust to load that drifts during the run). Skip-softmax (BLASST) has no tile-skipping onnxruntime
kernel: its graph computes every score, so its time is reported, not claimed; its skip ratio is
measured on the real attention of each layer (statistics outputs). An attention-only microbenchmark
times the attention of a graph of 6 layers (random Q/K/V, the export's mask structure, per-graph
pieces built once as in the model) in each form, per layer.

Writes benchmarks/results/sparse_quality_speed.json and prints markdown tables.
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import float_list, int_list, machine, run_benchmark, write_json  # noqa: E402

THREADS = 2
VARIANTS: dict[str, list[str]] = {  # name -> --sparse flags ("plain": the export as it is)
    "plain": [],
    "dense": [],
    "block keep=0.5": ["block:keep=0.5,block=64"],
    "block keep=0.25": ["block:keep=0.25,block=64"],
    "window 1024 + 64 sinks": ["window:size=1024,sinks=64"],
}
DENSITY_ATTRS = {
    "plain": None,
    "dense": None,
    "block keep=0.5": {"layout": "select", "keep": 0.5, "block_size": 64},
    "block keep=0.25": {"layout": "select", "keep": 0.25, "block_size": 64},
    "window 1024 + 64 sinks": {"layout": "window", "window": 1024, "sinks": 64, "block_size": 64},
}


def session(path: Path) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def load_text_ids(folder: Path) -> list[int]:
    import pydoc_data.topics as topics
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer")
    text = "\n\n".join(topics.topics[key] for key in sorted(topics.topics))
    return list(tokenizer(text)["input_ids"])


def prefill_feeds(folder: Path, ids: list[int], length: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    window = np.asarray(ids[:length], np.int64)[None]
    embeds = session(folder / "embed.onnx").run(None, {"input_ids": window})[0]
    feeds = {"inputs_embeds": embeds, "attention_mask": np.ones((1, length), np.int64),
             "position_ids": np.arange(length, dtype=np.int64)[None]}
    for layer in range(30):
        for kind in ("key", "value"):
            feeds[f"past_key_values.{layer}.{kind}"] = np.zeros((1, 3, 0, 64), np.float32)
    return feeds, window[0]


def perplexity(logits: np.ndarray, tokens: np.ndarray) -> float:
    """exp(mean NLL of token t+1 given the logits at t), over every position of the window."""
    logits = logits[0, :-1].astype(np.float64)
    top = logits.max(-1, keepdims=True)
    lse = np.log(np.exp(logits - top).sum(-1)) + top[:, 0]
    nll = lse - logits[np.arange(len(tokens) - 1), tokens[1:]]
    return float(math.exp(nll.mean()))


def build_variants(folder: Path, work: Path) -> dict[str, Path]:
    from edgeattn.graphs import save
    from edgeattn.graphs.sparse.api import sparsify

    paths = {"plain": folder / "decoder.onnx"}
    for name, flags in VARIANTS.items():
        if name == "plain":
            continue
        model, report = sparsify(folder / "decoder.onnx", flags, component="decoder")
        kinds = sorted({item.lowering for item in report.lowered})
        print(f"  {name}: {', '.join(kinds)}", flush=True)
        paths[name] = save(model, work / f"{name.replace(' ', '_').replace('=', '')}.onnx")
        del model
        gc.collect()
    return paths


def time_prefill(paths: dict[str, Path], feeds: dict[str, np.ndarray], tokens: np.ndarray, repeats: int) -> dict:
    sessions = {name: session(path) for name, path in paths.items()}
    results: dict[str, dict[str, Any]] = {name: {"times_ms": []} for name in sessions}
    reference = None
    for name, sess in sessions.items():  # warm-up round: its logits give the perplexity
        logits = sess.run(["logits"], feeds)[0]
        results[name]["perplexity"] = perplexity(logits, tokens)
        if name == "plain":
            reference = logits
        elif name == "dense" and reference is not None:
            results[name]["max_rel_diff_vs_plain"] = float(np.abs(logits - reference).max() / np.abs(reference).max())
        del logits
    for _ in range(repeats):
        for name, sess in sessions.items():
            start = time.perf_counter()
            sess.run(["logits"], feeds)
            results[name]["times_ms"].append((time.perf_counter() - start) * 1e3)
    for name in results:
        results[name]["median_ms"] = statistics.median(results[name]["times_ms"])
        # Ratios taken within each round (every variant ran in it), then their median: robust to a
        # machine load that drifts during the run, which medians of times are not.
        for base in ("plain", "dense"):
            if base in results:
                ratios = [b / t for b, t in zip(results[base]["times_ms"], results[name]["times_ms"])]
                results[name][f"speedup_vs_{base}"] = statistics.median(ratios)
    return results


def skip_softmax(folder: Path, work: Path, factors: list[float], cases: list[tuple[int, dict, np.ndarray]]) -> list[dict]:
    """Perplexity, measured skip ratio and (one) time of the exact skip-softmax graph per factor."""
    from edgeattn.graphs import save
    from edgeattn.graphs.sparse.api import sparsify

    rows = []
    for factor in factors:
        model, _ = sparsify(folder / "decoder.onnx", [f"blasst:scale_factor={factor:g}"], component="decoder",
                            statistics=True)
        path = save(model, work / f"skip_{factor:g}.onnx")
        del model
        sess = session(path)
        names = [o.name for o in sess.get_outputs() if o.name.startswith("statistics.")]
        for length, feeds, tokens in cases:
            start = time.perf_counter()
            outputs = sess.run(["logits", *names], feeds)
            elapsed = (time.perf_counter() - start) * 1e3
            ratios = [float(x) for x in outputs[1:]]
            rows.append({"length": length, "scale_factor": factor, "perplexity": perplexity(outputs[0], tokens),
                         "skip_ratio_mean": float(np.mean(ratios)), "skip_ratio_min": min(ratios),
                         "skip_ratio_max": max(ratios), "time_ms_one_run": elapsed})
            print(f"  blasst sf={factor:g} L={length}: skip {np.mean(ratios):.3f}, ppl {rows[-1]['perplexity']:.3f}",
                  flush=True)
        del sess
        gc.collect()
        path.unlink()
    return rows


MICRO_LAYERS = 6


def attention_site(length: int | None = None, layers: int = MICRO_LAYERS, q_heads: int = 9, kv_heads: int = 3,
                   head: int = 64, batch: int | str = 1, indexed: bool = True) -> Any:
    """`layers` opset-23 Attention sites as the export writes them (default: SmolLM2's GQA 9/3, d = 64),
    one bool mask And(causal(positions), padding(attention_mask)) shared by every layer, each layer
    with its own Q, K, V inputs (`q0, k0, v0, ...`; `q, k, v` with `indexed=False` and one layer).
    `length` fixes the sequence dims (None: symbolic `sequence`/`total`)."""
    import onnx
    from onnx import TensorProto as T
    from onnx import helper as h

    seq: Any = length if length is not None else "sequence"
    total: Any = length if length is not None else "total"
    nodes = [
        h.make_node("Shape", ["q" + ("0" if indexed else "")], ["q_len_1d"], start=2, end=3),
        h.make_node("Shape", ["k" + ("0" if indexed else "")], ["k_len_1d"], start=2, end=3),
        h.make_node("Squeeze", ["q_len_1d"], ["q_len"]),
        h.make_node("Squeeze", ["k_len_1d"], ["k_len"]),
        h.make_node("Sub", ["k_len", "q_len"], ["past"]),
        h.make_node("Constant", [], ["zero"], value=h.make_tensor("zero", T.INT64, [], [0])),
        h.make_node("Constant", [], ["one"], value=h.make_tensor("one", T.INT64, [], [1])),
        h.make_node("Range", ["zero", "q_len", "one"], ["rows0"]),
        h.make_node("Add", ["rows0", "past"], ["rows"]),
        h.make_node("Range", ["zero", "k_len", "one"], ["cols"]),
        h.make_node("Constant", [], ["ax_r"], value=h.make_tensor("ax_r", T.INT64, [3], [0, 1, 3])),
        h.make_node("Constant", [], ["ax_c"], value=h.make_tensor("ax_c", T.INT64, [3], [0, 1, 2])),
        h.make_node("Unsqueeze", ["rows", "ax_r"], ["rows4"]),
        h.make_node("Unsqueeze", ["cols", "ax_c"], ["cols4"]),
        h.make_node("LessOrEqual", ["cols4", "rows4"], ["causal"]),
        h.make_node("Cast", ["attention_mask"], ["pad"], to=T.BOOL),
        h.make_node("Constant", [], ["ax_p"], value=h.make_tensor("ax_p", T.INT64, [2], [1, 2])),
        h.make_node("Unsqueeze", ["pad", "ax_p"], ["pad4"]),
        h.make_node("And", ["causal", "pad4"], ["mask"]),
    ]
    inputs, outputs = [], []
    for layer in range(layers):
        q, k, v, y = (f"{x}{layer}" if indexed else x for x in "qkvy")
        nodes.append(h.make_node("Attention", [q, k, v, "mask"], [y], scale=1.0 / math.sqrt(head),
                                 name=f"layers.{layer}.attn"))
        inputs += [h.make_tensor_value_info(q, T.FLOAT, [batch, q_heads, seq, head]),
                   h.make_tensor_value_info(k, T.FLOAT, [batch, kv_heads, total, head]),
                   h.make_tensor_value_info(v, T.FLOAT, [batch, kv_heads, total, head])]
        outputs.append(h.make_tensor_value_info(y, T.FLOAT, None))
    inputs.append(h.make_tensor_value_info("attention_mask", T.INT64, [batch, total]))
    # The dims an exporter records (dynamo writes symbolic shapes for every value).
    value_info = [h.make_tensor_value_info("causal", T.BOOL, [1, 1, seq, total]),
                  h.make_tensor_value_info("mask", T.BOOL, [batch, 1, seq, total])]
    graph = h.make_graph(nodes, "attention", inputs, outputs, value_info=value_info)
    return onnx.shape_inference.infer_shapes(h.make_model(graph, opset_imports=[h.make_opsetid("", 23)], ir_version=10))


def attention_micro(length: int, repeats: int, work: Path) -> dict:
    """Per-layer attention time: a graph of MICRO_LAYERS attention layers (per-graph pieces, such as
    masks, computed once as in the model), its time divided by the layer count."""
    from edgeattn.graphs import save
    from edgeattn.graphs.sparse.api import sparsify

    site = attention_site(length)
    paths = {"plain": work / "attention_plain.onnx"}
    paths["plain"].write_bytes(site.SerializeToString())
    for name, flags in VARIANTS.items():
        if name != "plain":
            model, _ = sparsify(site, flags, component="decoder")
            paths[name] = save(model, work / f"attention_{name.replace(' ', '_').replace('=', '')}.onnx")
    rng = np.random.default_rng(0)
    feeds = {"attention_mask": np.ones((1, length), np.int64)}
    for layer in range(MICRO_LAYERS):
        feeds[f"q{layer}"] = rng.standard_normal((1, 9, length, 64), np.float32)
        feeds[f"k{layer}"] = rng.standard_normal((1, 3, length, 64), np.float32)
        feeds[f"v{layer}"] = rng.standard_normal((1, 3, length, 64), np.float32)
    sessions = {name: session(path) for name, path in paths.items()}
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for sess in sessions.values():
        sess.run(None, feeds)
    for _ in range(repeats):
        for name, sess in sessions.items():
            start = time.perf_counter()
            sess.run(None, feeds)
            times[name].append((time.perf_counter() - start) * 1e3 / MICRO_LAYERS)
    return {name: {"median_ms": statistics.median(values),
                   "speedup_vs_plain": statistics.median(p / t for p, t in zip(times["plain"], values))}
            for name, values in times.items()}


def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export", type=Path, help="an existing `edgeattn export zoo:smollm2-135m` folder")
    parser.add_argument("--lengths", type=int_list, default=[1024, 2048, 4096], help="comma-separated")
    parser.add_argument("--repeats", type=int_list, default=[5, 3, 3], help="timed rounds per length (after a warm-up round)")
    parser.add_argument("--skip-factors", type=float_list, default=[100.0, 1000.0], help="BLASST scale factors ('' to skip)")
    parser.add_argument("--micro-repeats", type=int, default=5)
    parser.add_argument("--work", type=Path, help="folder for the rewritten decoders (default: a temp folder)")
    parser.add_argument("--output", default="sparse_quality_speed", help="results/<output>.json")
    args = parser.parse_args()
    lengths, repeats = args.lengths, args.repeats
    started = time.perf_counter()
    loads = {"start": load_average()}
    if args.work is not None:
        args.work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        work = Path(tmp)
        folder = args.export
        if folder is None:
            from edgeattn.exporter.api import export_model

            folder = work / "smollm2"
            print("exporting zoo:smollm2-135m ...", flush=True)
            export_model("zoo:smollm2-135m", folder)
        print("rewriting ...", flush=True)
        paths = build_variants(folder, work)
        ids = load_text_ids(folder)
        from edgeattn.graphs.sparse.density import layout_density

        rows, cases = [], []
        for length, repeat in zip(lengths, repeats + [repeats[-1]] * len(lengths)):
            feeds, tokens = prefill_feeds(folder, ids, length)
            cases.append((length, feeds, tokens))
            loads[f"L{length}"] = load_average()
            result = time_prefill(paths, feeds, tokens, repeat)
            for name, values in result.items():
                attrs = DENSITY_ATTRS[name]
                density = layout_density(attrs, length) if attrs else 1.0
                rows.append({"length": length, "variant": name, "flags": VARIANTS[name], "repeats": repeat,
                             "density_of_causal": density, **values})
            _print_length(rows, length)
            gc.collect()
        loads["micro"] = load_average()
        micro = attention_micro(lengths[-1], args.micro_repeats, work)
        print(f"attention only, L={lengths[-1]}: " + ", ".join(f"{k} {v['median_ms']:.0f} ms" for k, v in micro.items()),
              flush=True)
        factors = args.skip_factors
        skip_rows = skip_softmax(folder, work, factors, cases) if factors else []
    loads["end"] = load_average()
    payload = {"machine": machine(), "threads": THREADS, "load_average": loads,
               "total_seconds": round(time.perf_counter() - started, 1), "text": "pydoc_data.topics (CPython)",
               "prefill": rows, "attention_only": {"length": lengths[-1], "variants": micro}, "skip_softmax": skip_rows}
    path = write_json(args.output, payload)
    print(markdown(payload))
    print(f"\nwrote {path}")


def _print_length(rows: list[dict], length: int) -> None:
    for row in rows:
        if row["length"] == length:
            print(f"  L={length} {row['variant']}: {row['median_ms']:.0f} ms, ppl {row['perplexity']:.3f}", flush=True)


def markdown(payload: dict) -> str:
    out = [f"SmolLM2-135M, onnxruntime {payload['machine']['onnxruntime']} CPU ({payload['threads']} threads), "
           f"{payload['machine']['cpu']}, {payload['machine']['date']}; load average during the run: "
           f"{payload['load_average']}. Speedups are the median over the timed rounds of the ratio within a "
           "round (every variant runs once per round).", "",
           "| L | variant | density (of causal pairs) | perplexity | Δ ppl vs dense | prefill (median) | vs plain | vs dense |",
           "|---|---|---|---|---|---|---|---|"]
    rows = payload["prefill"]
    for row in rows:
        base = {r["variant"]: r for r in rows if r["length"] == row["length"]}
        plain, dense = base["plain"], base["dense"]
        delta = 100 * (row["perplexity"] / dense["perplexity"] - 1)
        vs_plain = row.get("speedup_vs_plain", plain["median_ms"] / row["median_ms"])
        vs_dense = row.get("speedup_vs_dense", dense["median_ms"] / row["median_ms"])
        out.append(f"| {row['length']} | {row['variant']} | {100 * row['density_of_causal']:.1f} % | "
                   f"{row['perplexity']:.3f} | {delta:+.2f} % | {row['median_ms'] / 1000:.2f} s | "
                   f"{vs_plain:.2f}x | {vs_dense:.2f}x |")
    micro = payload["attention_only"]
    out += ["", f"Attention only (per layer, L = {micro['length']}, random Q/K/V, {MICRO_LAYERS} layers in one graph):", "",
            "| variant | median | vs Attention op |",
            "|---|---|---|"]
    for name, value in micro["variants"].items():
        out.append(f"| {name} | {value['median_ms']:.0f} ms | {value['speedup_vs_plain']:.2f}x |")
    if payload["skip_softmax"]:
        out += ["", "Skip-softmax (BLASST), exact onnxruntime body (computes every score):", "",
                "| L | scale_factor | skip ratio (mean over layers, min-max) | perplexity | one run |", "|---|---|---|---|---|"]
        for row in payload["skip_softmax"]:
            out.append(f"| {row['length']} | {row['scale_factor']:g} | {row['skip_ratio_mean']:.3f} "
                       f"({row['skip_ratio_min']:.3f}-{row['skip_ratio_max']:.3f}) | {row['perplexity']:.3f} | "
                       f"{row['time_ms_one_run'] / 1000:.1f} s |")
    return "\n".join(out)


if __name__ == "__main__":
    run_benchmark(main)
