"""Calibration: BLASST's skip ratio across lengths and block keep under a perplexity bound on SmolLM2-135M;
the image-token budget of fastervlm under a KL bound on demo:dinov2-smollm2.

    python benchmarks/calibration.py [--export DIR] [--vlm-export DIR] [--parts blasst,block,prune]
                                     [--max-tokens 1024] [--eval-lengths 1024,2048,4096] [--eval-text FILE]
                                     [--prune-kl 0.1]

Calibration text: `builtin:text` (CPython's pydoc_data.topics). Evaluation text: a real text the
calibration never saw, by default the GNU GPL version 3 (`/usr/share/common-licenses/GPL-3`, English
legal prose, ~8k SmolLM2 tokens, shipped by Debian's base-files). DIR is a plain export of
`zoo:smollm2-135m`, the VLM DIR one of `demo:dinov2-smollm2` (each made here when absent: several minutes
on 2 cores).

(1) blasst, sparsity = 0.3 and 0.5: the skip ratio measured on the evaluation text at each evaluation
length with the calibrated length law, against the uncalibrated fixed scale factor (the law's value at
the middle calibration length, at every length); target ±0.05. (2) block, ppl=+2%: the evaluation
perplexity increase, the mean density against the best uniform keep that meets the same bound on the
calibration data, and the onnxruntime prefill time of the written decoder against the exact dense
lowering and the best uniform keep (median of interleaved rounds). (3) prune:fastervlm, kl=--prune-kl:
the chosen k, the KL on `builtin:images` and on photographs calibration never saw (scikit-image's
astronaut, chelsea, coffee and matplotlib's Grace Hopper), against random pruning at the same k.
(4) wall time of each calibration. Writes benchmarks/results/calibration.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import int_list, machine, write_json  # noqa: E402

THREADS = 2
GPL = "/usr/share/common-licenses/GPL-3"
EVAL_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png")  # + grace_hopper.jpg: --samples 4 by default


def export_if_missing(folder: Path, model: str = "zoo:smollm2-135m") -> None:
    if (folder / "manifest.json").is_file():
        return
    from edgeattn.exporter.api import ExportOptions, export_model

    print(f"exporting {model} to {folder} ...", flush=True)
    export_model(model, folder, ExportOptions(validate=False))


def blasst(folder: Path, work: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    from edgeattn.calibrate.api import CalibrationOptions, calibrate
    from edgeattn.calibrate.data import load_tokenizer, read_source, token_ids, windows
    from edgeattn.calibrate.goals import parse_method
    from edgeattn.calibrate.graph import CalibrationRunner
    from edgeattn.calibrate.metrics import Evaluator
    from edgeattn.manifest import read_manifest

    manifest = read_manifest(folder)
    method = parse_method("blasst")
    runner = CalibrationRunner(folder, manifest, method, THREADS)
    ids = token_ids(read_source(f"text:{args.eval_text}"), load_tokenizer(folder, manifest.tokenizer))
    lengths = tuple(args.eval_lengths)
    evaluator = Evaluator(runner, windows(ids, lengths, 1, 1, args.eval_text), 0.0, method.sparsity, False)
    rows = []
    for target in (0.3, 0.5):
        started = time.perf_counter()
        record = calibrate(folder, work / f"blasst_{target}", CalibrationOptions(
            "blasst", f"sparsity={target}", "builtin:text", per=args.per, samples=args.samples,
            max_tokens=args.max_tokens, threads=THREADS))
        seconds = time.perf_counter() - started
        laws = {site: (v["c"], v["p"]) for site, v in record["length_law"].items()}
        middle = sorted(record["data"]["lengths"])[len(record["data"]["lengths"]) // 2]
        fixed = {site: c * middle ** p for site, (c, p) in laws.items()}
        law = evaluator.measure(lambda length: {s: c * length ** p for s, (c, p) in laws.items()})
        base = evaluator.measure(lambda length: fixed)
        row = {"target": target, "calibration_seconds": round(seconds, 1), "runs": record["runs"],
               "calibration": record["calibration"], "length_law": record["length_law"],
               "eval_law": law.to_json(), "eval_fixed": base.to_json(), "eval_dense_ppl": evaluator.dense_ppl,
               "within_0.05": all(abs(v - target) <= 0.05 for v in law.by_length.values())}
        print(f"blasst sparsity={target}: {seconds:.0f} s; eval skip ratio law {law.to_json()['sparsity_by_length']} "
              f"fixed {base.to_json()['sparsity_by_length']}", flush=True)
        rows.append(row)
    return rows


def block(folder: Path, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    from edgeattn.calibrate.api import CalibrationOptions, calibrate

    started = time.perf_counter()
    out = work / "block"
    record = calibrate(folder, out, CalibrationOptions(
        "block:block=64", "ppl=+2%", "builtin:text", eval=f"text:{args.eval_text}", per=args.per,
        samples=args.samples, max_tokens=args.max_tokens, threads=THREADS))
    seconds = time.perf_counter() - started
    best = record["baseline"]["what"]
    print(f"block ppl=+2%: {seconds:.0f} s; chosen {record['chosen']}; baseline {best}", flush=True)
    timing = prefill_times(folder, out, record, args)
    return {"calibration_seconds": round(seconds, 1), "runs": record["runs"], "chosen": record["chosen"],
            "calibration": record["calibration"], "baseline": record["baseline"], "evaluation": record["evaluation"],
            "timing": timing}


def eval_images(work: Path) -> str:
    """images:DIR of real photographs calibration never sees: scikit-image's bundled ones (a dev dependency)
    and matplotlib's sample portrait."""
    import shutil

    import matplotlib
    import skimage

    folder = work / "eval_images"
    folder.mkdir()
    data = Path(skimage.__file__).parent / "data"
    for name in EVAL_PHOTOS:
        shutil.copy(data / name, folder / name)
    shutil.copy(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg", folder / "grace_hopper.jpg")
    return f"images:{folder}"


def prune(folder: Path, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """prune:fastervlm under a KL bound on builtin:images, evaluated on other photographs."""
    from edgeattn.calibrate.api import CalibrationOptions, calibrate

    started = time.perf_counter()
    record = calibrate(folder, work / "prune", CalibrationOptions(
        "prune:fastervlm", f"kl={args.prune_kl:g}", "builtin:images", eval=eval_images(work), threads=THREADS))
    seconds = time.perf_counter() - started
    k, tokens = record["chosen"]["k"], record["tokens"]
    print(f"prune:fastervlm kl={args.prune_kl:g}: {seconds:.0f} s; k = {k} of {tokens}; calibration kl "
          f"{record['calibration']['kl']:.4f} (random at k: {record['baseline']['calibration']['kl']:.4f}); "
          f"evaluation {record['evaluation']['chosen']['kl']:.4f} (random {record['evaluation']['baseline']['kl']:.4f})",
          flush=True)
    return {"target": record["target"], "calibration_seconds": round(seconds, 1), "runs": record["runs"],
            "k": k, "tokens": tokens, "calibration": record["calibration"], "baseline": record["baseline"],
            "curve": [{"k": m["k"], "kl": m["kl"]} for m in record["curve"]], "evaluation": record["evaluation"],
            "data": {key: record["data"][key] for key in ("source", "sha256", "samples") if key in record["data"]}}


def prefill_times(folder: Path, out: Path, record: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np

    from edgeattn.graphs import save
    from edgeattn.graphs.session import session_from_onnx
    from edgeattn.graphs.sparse.api import sparsify

    variants = {"calibrated": out / "decoder.onnx"}
    dense, _ = sparsify(folder / "decoder.onnx", [], component="decoder")
    variants["dense"] = save(dense, out.parent / "dense.onnx")
    keep = record["baseline"]["what"].rpartition("= ")[2]
    if keep.replace(".", "").isdigit():
        uniform, _ = sparsify(folder / "decoder.onnx", [f"block:block=64,keep={keep}"], component="decoder")
        variants[f"uniform keep={keep}"] = save(uniform, out.parent / "uniform.onnx")
    length = args.max_tokens
    sessions = {name: session_from_onnx(path, threads=THREADS) for name, path in variants.items()}
    embeds = np.random.default_rng(0).standard_normal((1, length, 576)).astype(np.float32) * 0.02
    feeds = {"inputs_embeds": embeds, "attention_mask": np.ones((1, length), np.int64),
             "position_ids": np.arange(length)[None]}
    for i in range(30):
        for kind in ("key", "value"):
            feeds[f"past_key_values.{i}.{kind}"] = np.zeros((1, 3, 0, 64), np.float32)
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for round_ in range(4):
        for name, session in sessions.items():
            start = time.perf_counter()
            session.run(["logits"], feeds)
            if round_:
                times[name].append(time.perf_counter() - start)
    median = {name: statistics.median(t) for name, t in times.items()}
    return {"length": length, "median_s": median,
            "speedup_vs_dense": {name: median["dense"] / t for name, t in median.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--export", type=Path, default=Path(tempfile.gettempdir()) / "edgeattn-smollm2")
    parser.add_argument("--parts", default="blasst,block,prune")
    parser.add_argument("--max-tokens", type=int, default=1024)
    parser.add_argument("--samples", type=int, default=None, help="windows per length (default: calibrate's)")
    parser.add_argument("--per", default="layer")
    parser.add_argument("--eval-lengths", type=int_list, default=[1024, 2048, 4096])
    parser.add_argument("--eval-text", default=GPL)
    parser.add_argument("--name", default="calibration")
    parser.add_argument("--vlm-export", type=Path, default=Path(tempfile.gettempdir()) / "edgeattn-dinov2-smollm2")
    parser.add_argument("--prune-kl", type=float, default=0.1)
    args = parser.parse_args()
    if "blasst" in args.parts or "block" in args.parts:
        export_if_missing(args.export)
    started = time.perf_counter()
    payload: dict[str, Any] = {"machine": machine(), "model": "zoo:smollm2-135m", "vlm": "demo:dinov2-smollm2",
                               "threads": THREADS,
                               "calibration_text": "builtin:text (pydoc_data.topics)", "eval_text": args.eval_text,
                               "max_tokens": args.max_tokens, "samples": args.samples, "per": args.per}
    with tempfile.TemporaryDirectory(prefix="edgeattn-calibration-bench-") as work:
        if "prune" in args.parts:
            export_if_missing(args.vlm_export, "demo:dinov2-smollm2")
            payload["prune"] = prune(args.vlm_export, Path(work), args)
            write_json(args.name, payload)
        if "blasst" in args.parts:
            payload["blasst"] = blasst(args.export, Path(work), args)
            write_json(args.name, payload)
        if "block" in args.parts:
            payload["block"] = block(args.export, Path(work), args)
            write_json(args.name, payload)
    payload["total_seconds"] = round(time.perf_counter() - started, 1)
    print(f"wrote {write_json(args.name, payload)}")


if __name__ == "__main__":
    main()
