"""Pruning quality on real weights and real images: DINOv2 ViT-S/14 features of scikit-learn's digits.

Every one of the 1797 8x8 digits is upscaled to 224x224 (bicubic, the edgeattn preprocessing; 16x16 =
256 patches), run once through the real DINOv2 ViT-S/14 (zoo:dinov2-s14) in PyTorch, and the needed
tensors are cached: per layer and head the [CLS] attention row and the mean attention received over
the 256 patch keys (from the layer's Q and K, with the registry reference of edgeattn.TokenScore), the
output tokens [257, 384], and ZOO-Prune's sensitivity through the final LayerNorm. Then for every
method and k in {256, 128, 64, 32, 16} the registry reference of edgeattn.TokenSelect keeps k patches
of each image, the kept output tokens are averaged, and a 5-fold cross-validated logistic regression on
those means gives the accuracy.

How the methods map onto a vision encoder alone (no projector, no text):
  * "projected tokens" (HoloV's Z, ZOO's cosine keys) are DINOv2's output tokens;
  * zeroth-order's projector M is DINOv2's final LayerNorm (x = the last hidden state before it);
  * flashvlm has no prompt: its guidance vector is the image's own [CLS] output token (one "prompt
    token"), a stand-in, not the paper's setting: text embeddings pushed through an untrained projector
    would be meaningless.

    python -m benchmarks.pruning_quality [--limit 200] [--cache DIR]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import RESULTS, digit_pixels, machine, run_benchmark, write_json

KS = (256, 128, 64, 32, 16)
LAYERS = 12
HEADS = 6
FOLDS = 5
DIRECTIONS, STEP = 64, 0.01
METHODS = ("fastervlm", "mean-received", "holov", "flashvlm", "zeroth-order", "random", "uniform")
EXTRA = ("fastervlm@layer9", "fastervlm+debias")  # diagnostics next to the paper rules
DIAGNOSE_K = 32


def extract(images: np.ndarray, batch: int = 32) -> dict[str, np.ndarray]:
    """One DINOv2 pass over the images; everything the methods need, per image."""
    import torch

    from edgeattn.exporter.zoo import load_zoo
    from edgeattn.graphs.pruning.projector import directions
    from edgeattn.ops.token_score import token_score_reference as score

    model = load_zoo("dinov2-s14").model
    captured: dict[str, torch.Tensor] = {}
    for index, layer in enumerate(model.encoder.layer):
        for part in ("q_proj", "k_proj"):
            getattr(layer.attention, part).register_forward_hook(
                lambda _m, _i, out, key=f"{part}{index}": captured.__setitem__(key, out))
    shifts = torch.from_numpy(directions(DIRECTIONS, model.config.hidden_size, 0) * STEP)
    out = {"cls": [], "received": [], "tokens": [], "zoo": []}
    for start in range(0, len(images), batch):
        pixels = torch.from_numpy(digit_pixels(images[start : start + batch]))
        with torch.no_grad():
            result = model(pixel_values=pixels, output_hidden_states=True)
            cls_rows, received = [], []
            for index in range(LAYERS):
                q, k = captured[f"q_proj{index}"], captured[f"k_proj{index}"]
                heads = dict(q_num_heads=HEADS, kv_num_heads=HEADS, skip=1)
                cls_rows.append(_per_head(score, q, k, "cls", heads))
                received.append(_per_head(score, q, k, "mean_received", heads))
            pre = result.hidden_states[-1][:, 1:]  # before the final LayerNorm: M's input
            plus = model.layernorm(pre[:, :, None] + shifts)
            minus = model.layernorm(pre[:, :, None] - shifts)
            out["zoo"].append(score(plus, minus, source="sensitivity", step=STEP).numpy())
        out["cls"].append(np.stack(cls_rows, 1))
        out["received"].append(np.stack(received, 1))
        out["tokens"].append(result.last_hidden_state.numpy().astype(np.float16))
        print(f"  {start + len(pixels)}/{len(images)} images", flush=True)
    return {name: np.concatenate(parts) for name, parts in out.items()}


def _per_head(score, q, k, source: str, heads: dict[str, int]) -> np.ndarray:
    """[B, H, 256]: the score of every head (max over one head = that head)."""
    import torch

    q4 = q.reshape(q.shape[0], q.shape[1], HEADS, -1).transpose(1, 2)
    k4 = k.reshape(k.shape[0], k.shape[1], HEADS, -1).transpose(1, 2)
    rows = [score(q4[:, h : h + 1], k4[:, h : h + 1], source=source, skip=1) for h in range(HEADS)]
    return torch.stack(rows, 1).numpy().astype(np.float32)


def load_images(limit: int | None) -> np.ndarray:
    from sklearn.datasets import load_digits

    return load_digits().images[:limit] if limit else load_digits().images


def cached_features(cache: Path, limit: int | None) -> tuple[dict[str, np.ndarray], np.ndarray, float]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images, labels = digits.images, digits.target
    if limit:
        images, labels = images[:limit], labels[:limit]
    path = cache / f"dinov2_digits_{len(images)}.npz"
    if path.is_file():
        with np.load(path) as data:
            return {k: data[k] for k in data.files}, labels, 0.0
    start = time.perf_counter()
    features = extract(images)
    seconds = time.perf_counter() - start
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(path, **features)
    return features, labels, seconds


def select(method: str, k: int, feats: dict[str, np.ndarray], index: int, weights: np.ndarray | None) -> np.ndarray:
    """Kept patch positions of image `index` (the TokenSelect reference on the TokenScore outputs)."""
    import torch

    from edgeattn.graphs.pruning.baselines import random_scores, uniform_scores
    from edgeattn.ops.token_score.reference import text_relevance
    from edgeattn.ops.token_select import token_select_reference as keep

    tokens = torch.from_numpy(feats["tokens"][index : index + 1].astype(np.float32))  # [1, 257, 384]
    patches = tokens[:, 1:]
    layer = 9 if method == "fastervlm@layer9" else LAYERS - 1
    cls = torch.from_numpy(feats["cls"][index : index + 1, layer].mean(1))  # head mean, [1, 256]
    mode, scores = "topk", cls
    if method == "fastervlm+debias":
        scores = cls * torch.from_numpy(weights)
    elif method == "mean-received":
        scores = torch.from_numpy(feats["received"][index : index + 1, layer].mean(1))
    elif method == "holov":
        mode = "regions"
    elif method == "flashvlm":
        guidance = tokens[:, :1]  # the [CLS] output as the one guidance token
        scores = text_relevance(patches, guidance, cls, 0.5, 0.05, 0.01, 2.5, 0.995, 0.1)
        mode = "diversity"
    elif method == "zeroth-order":
        scores, mode = torch.from_numpy(feats["zoo"][index : index + 1]), "maxmin"
    elif method == "random":
        scores = torch.from_numpy(random_scores(256, 0))[None]
    elif method == "uniform":
        scores = torch.from_numpy(uniform_scores(256, k))[None]
    _, kept = keep(scores, patches, k=k, mode=mode)
    return kept[0].numpy()


def probe(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000))
    folds = StratifiedKFold(FOLDS, shuffle=True, random_state=0)
    scores = cross_val_score(model, x, y, cv=folds)
    return float(scores.mean()), float(scores.std())


def digit_patches(images: np.ndarray) -> np.ndarray:
    """[n, 256] bool: the patches on the digit's strokes (each 8x8 digit pixel covers 2x2 patches)."""
    return np.repeat(np.repeat(images >= 8, 2, axis=1), 2, axis=2).reshape(len(images), -1)


def diagnose(kept: dict[str, list[np.ndarray]], feats: dict[str, np.ndarray], images: np.ndarray) -> dict[str, Any]:
    """What each method keeps at a budget: the share of stroke patches, and the kept tokens' norm
    relative to the image's mean patch-token norm (DINOv2's high-norm artifact tokens score > 1.5)."""
    strokes = digit_patches(images)
    norms = np.linalg.norm(feats["tokens"][:, 1:].astype(np.float32), axis=-1)
    relative = norms / norms.mean(1, keepdims=True)
    out = {"stroke_share_all_patches": float(strokes.mean())}
    for method, rows in kept.items():
        index = np.stack(rows)
        out[method] = {
            "stroke_share": float(np.take_along_axis(strokes, index, 1).mean()),
            "relative_norm": float(np.take_along_axis(relative, index, 1).mean()),
            "high_norm_share": float((np.take_along_axis(relative, index, 1) > 1.5).mean()),
        }
    return out


def run(limit: int | None, cache: Path) -> dict[str, Any]:
    from edgeattn.graphs.pruning.debias import fit_recency_weights

    import torch

    feats, labels, extract_s = cached_features(cache, limit)
    images = load_images(limit)
    torch.set_num_threads(1)  # selection works on one image at a time: threads only add overhead
    weights = fit_recency_weights(feats["cls"][:, LAYERS - 1].mean(1))
    n = len(labels)
    rows = []
    kept_at: dict[str, list[np.ndarray]] = {}
    for method in (*METHODS, *EXTRA):
        start = time.perf_counter()
        row: dict[str, Any] = {"method": method, "accuracy": {}, "std": {}}
        for k in KS:
            kept = [select(method, k, feats, i, weights) for i in range(n)]
            if k == DIAGNOSE_K:
                kept_at[method] = kept
            pooled = np.stack([feats["tokens"][i, 1:].astype(np.float32)[kept[i]].mean(0) for i in range(n)])
            row["accuracy"][k], row["std"][k] = probe(pooled, labels)
        row["seconds"] = round(time.perf_counter() - start, 1)
        rows.append(row)
        print(f"{method:>18}: " + " ".join(f"{row['accuracy'][k]:.3f}" for k in KS), flush=True)
    cls_accuracy = probe(feats["tokens"][:, 0].astype(np.float32), labels)[0]
    return {"images": n, "ks": list(KS), "rows": rows, "cls_token_accuracy": cls_accuracy,
            "extract_seconds": round(extract_s, 1), "attention_sink": sink_stats(feats),
            f"kept_at_k{DIAGNOSE_K}": diagnose(kept_at, feats, images)}


def sink_stats(feats: dict[str, np.ndarray]) -> dict[str, Any]:
    """How concentrated the last layer's [CLS] attention is (DINOv2 without registers has high-norm
    'sink' patches that take most of it), against layer 9."""
    out = {}
    for layer in (9, LAYERS - 1):
        cls = feats["cls"][:, layer].mean(1)  # [n, 256]
        top = np.sort(cls, axis=1)[:, ::-1]
        out[f"layer{layer}"] = {"top1_share": float((top[:, 0] / cls.sum(1)).mean()),
                                "top4_share": float((top[:, :4].sum(1) / cls.sum(1)).mean())}
    return out


def markdown(result: dict[str, Any], info: dict[str, Any]) -> str:
    ks = result["ks"]
    lines = [
        f"DINOv2 ViT-S/14 (real weights) on scikit-learn digits ({result['images']} images at 224x224, 256 patches); "
        f"5-fold logistic-regression probe on the mean of the kept patch tokens. {info['date']}, {info['cpu']}, "
        f"{info['cores']} cores, torch {info['torch']}.",
        "",
        "| method | " + " | ".join(f"k={k}" for k in ks) + " |",
        "|---|" + "---|" * len(ks),
    ]
    for row in result["rows"]:
        lines.append(f"| {row['method']} | " + " | ".join(f"{row['accuracy'][k]:.3f}" for k in ks) + " |")
    lines += ["", f"[CLS] token alone: {result['cls_token_accuracy']:.3f}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--limit", type=int, help="first N digits only (a quick run)")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/edgeattn-bench-cache"))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    info = machine()
    result = run(args.limit, args.cache)
    payload = {"machine": info, **result}
    name = "pruning_quality" if not args.limit else f"pruning_quality_{args.limit}"
    write_json(name, payload)
    text = markdown(result, info)
    (RESULTS / f"{name}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    run_benchmark(main)
