"""GPU sections of ``benchmarks/gpu_attention.py`` for the block-sparse and token-pruning kernels (issue #7).

Imported by ``gpu_attention.py`` (same folder), which owns the report, the time budget, the
per-section error capture and the timers; every function here gets them through ``tools`` (a
namespace with ``bench_ms``, ``guarded``, ``errors``, ``sdpa``, ``llm_like_qkv``, ``free``) and the
kernel and reference modules through ``mods``. Sections:

``sparse_correctness`` — fresh inputs on the GPU, references in float64 on CPU copies:
    block selection (topk / threshold / cumprob; causal 0/1/2; MHA and GQA; d 64 and 128; fp16 and
    bf16) against ``block_select_reference`` (count of blocks decided otherwise, which only
    boundary ties can cause); attention over the kernel's own blocks against the reference with
    layout "mask" and those blocks (so attention numerics are checked apart from selection), with
    and without Rectified SpaAttn; the window layout; token scores (cls, mean_received) against
    ``token_score_reference``; top-k and HoloV regions on the kernel's scores against
    ``token_select_reference`` (indices must be equal).
``block_sparse`` — causal prefill, B=1, 32 query / 8 KV heads, d=128, fp16, block 64, L in
    {4k, 16k, 32k}, the LLM-like synthetic attention of the prefill section: SDPA (default
    dispatch, K/V expanded), then the kernels at about 50 %, 25 % and 10 % density (topk with a
    budget of blocks per query block chosen for that density; density = computed / causal pairs,
    measured from the block lists) and 100 % (every block: the kernel's efficiency against SDPA):
    selection alone, attention alone, and both (what the speedup counts); Rectified SpaAttn at 10 %.
    Target (H100/H200): at 10 % and 32k, selection + attention >= 5x faster than SDPA.
``token_pruning`` — CLIP-L-like encoder (16 heads, d=64) with 576 and 2304 visual tokens + [CLS],
    B=2, projected features of 4096: the kernels' cls and mean_received scores, top-k + gather and
    HoloV regions + gather against plain torch (matmul/softmax/topk/sort/gather; HoloV has no
    torch baseline but the reference's Python loop).
"""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

DENSITIES = (0.5, 0.25, 0.1)


# ------------------------------------------------------------------------------------- helpers


def topk_density(n_blocks: int, block: int, keep_blocks: int) -> float:
    """Density (computed / causal pairs) of causal topk with a budget of ``keep_blocks`` per query
    block, local_blocks = sink_blocks = 1, for Lq = Lkv = n_blocks·block: row T keeps
    min(T+1, max(budget, forced)) blocks (forced: the diagonal and block 0), the diagonal with
    b(b+1)/2 visible pairs and the others b² each."""
    diag = block * (block + 1) // 2
    kept = sum((min(t + 1, max(keep_blocks, min(t + 1, 2))) - 1) * block * block + diag for t in range(n_blocks))
    total = sum(t * block * block + diag for t in range(n_blocks))
    return kept / total


def budget_for_density(n_blocks: int, block: int, target: float) -> int:
    """The budget whose density is closest to ``target`` (density grows with the budget: bisection)."""
    lo, hi = 1, n_blocks
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if topk_density(n_blocks, block, mid) < target else (lo, mid)
    return min((lo, hi), key=lambda kb: abs(topk_density(n_blocks, block, kb) - target))


def _cpu64(*xs):
    return [x.detach().double().cpu() for x in xs]


def _mismatch(a, b) -> int:
    return int((a.cpu().bool() != b.cpu().bool()).sum())


# -------------------------------------------------------------------------------- correctness


def section_sparse_correctness(entry: dict, plan: Any, tools: SimpleNamespace, mods: SimpleNamespace) -> None:
    import torch

    tol = {torch.float16: 2e-3, torch.bfloat16: 1.5e-2}
    sc = plan.correctness_scale
    cases = [  # name, hq, hkv, lq, lkv, d, dtype, causal, block, selection
        ("select topk causal2 fp16 d128 GQA8/2 L1024 b64", 8, 2, 1024, 1024, 128, torch.float16, 2, 64,
         dict(mode="topk", keep=0.2)),
        ("select cumprob full bf16 d64 MHA4 L777 b64", 4, 4, 777, 777, 64, torch.bfloat16, 0, 64,
         dict(mode="cumprob", cum_prob=0.7, key_pool="max")),
        ("select threshold causal1 fp16 d64 GQA8/1 L600 b32", 8, 1, 600, 600, 64, torch.float16, 1, 32,
         dict(mode="threshold", threshold=0.02, group_reduce="max", dense_last_rows=1)),
        ("chunked prefill topk causal2 fp16 d128 Lq300 Lkv1300", 8, 2, 300, 1300, 128, torch.float16, 2, 64,
         dict(mode="topk", keep_blocks=5, sink_blocks=2, local_blocks=2)),
    ]  # fmt: skip
    for i, (name, hq, hkv, lq, lkv, d, dtype, causal, block, sel) in enumerate(cases):
        if sc < 1:  # the CPU smoke: two heads (GQA 2/1 or MHA 2/2), ~100 positions, 16-blocks
            hq, hkv = (2, 2) if hq == hkv else (2, 1)
            lq, lkv, block = max(20, int(lq * sc)), max(20, int(lkv * sc)), 16

        def run(hq=hq, hkv=hkv, lq=lq, lkv=lkv, d=d, dtype=dtype, causal=causal, block=block, sel=sel, i=i) -> dict:
            g = torch.Generator(device=plan.device).manual_seed(200 + i)
            q, k, v = (torch.randn(1, h, n, d, generator=g, device=plan.device).to(dtype)
                       for h, n in ((hq, lq), (hkv, lkv), (hkv, lkv)))  # fmt: skip
            q64, k64, v64 = _cpu64(q, k, v)
            attrs = dict(causal=causal, block_size=block, **sel)
            blocks = mods.bs_ops.select_blocks(q, k, v, store_mask=True, rectify=True, **attrs)
            ref_mask = mods.select_ref.block_select_reference(q64, k64, **attrs)
            row = {"blocks_mismatched": _mismatch(blocks.mask, ref_mask), "blocks": ref_mask.numel(),
                   "density": blocks.density(),
                   "list_matches_mask": bool(torch.equal(blocks.dense_mask(), blocks.mask))}  # fmt: skip
            for rect in (0, 1):
                out = torch.full_like(q, float("nan"))
                if rect:
                    out = mods.bs_ops.attend_blocks(q, k, v, blocks, out=out)
                else:
                    plain = type(blocks)(blocks.indices, blocks.counts, blocks.geometry)
                    out = mods.bs_ops.attend_blocks(q, k, v, plain, out=out)
                ref = mods.sparse_ref.block_sparse_attention_reference(
                    q64, k64, v64, block_mask=blocks.mask.cpu(), layout="mask", rectify=rect,
                    key_pool=sel.get("key_pool", "mean"), causal=causal, block_size=block)
                e = tools.errors(out.cpu(), ref)
                row |= {f"rel_fro{'_rectify' if rect else ''}": e["rel_fro"],
                        f"all_written{'_rectify' if rect else ''}": bool(torch.isfinite(out).all())}  # fmt: skip
            ok = (row["blocks_mismatched"] <= max(1, row["blocks"] // 1000) and row["list_matches_mask"]
                  and row["all_written"] and row["all_written_rectify"] and row["rel_fro"] <= tol[dtype]
                  and row["rel_fro_rectify"] <= tol[dtype])  # fmt: skip
            return {"pass": ok, "shape": [hq, hkv, lq, lkv, d], **row}

        row = tools.guarded(entry, name, run)
        if row:
            print(f"   {'PASS' if row['pass'] else 'FAIL'} {name}: {row['blocks_mismatched']}/{row['blocks']} blocks "
                  f"differ, density {row['density']:.2f}, rel {row['rel_fro']:.1e} "
                  f"(rectified {row['rel_fro_rectify']:.1e})", flush=True)  # fmt: skip

    def run_window() -> dict:
        lq, lkv, w = (300, 1300, 256) if sc >= 1 else (40, 100, 24)
        q, k, v = (torch.randn(1, h, n, 128 if sc >= 1 else 32, device=plan.device, dtype=torch.float16)
                   for h, n in ((8, lq), (2, lkv), (2, lkv)))  # fmt: skip
        block = 64 if sc >= 1 else 16
        out = mods.bs_ops.attend_window(q, k, v, causal=2, block_size=block, window=w, sinks=4)
        ref = mods.sparse_ref.block_sparse_attention_reference(*_cpu64(q, k, v), layout="window", causal=2,
                                                               block_size=block, window=w, sinks=4)  # fmt: skip
        e = tools.errors(out.cpu(), ref)
        return {"pass": e["rel_fro"] <= 2e-3, **e}

    row = tools.guarded(entry, "window causal2 fp16 GQA8/2 Lq300 Lkv1300 w256 s4", run_window)
    if row:
        print(f"   {'PASS' if row['pass'] else 'FAIL'} window: rel {row['rel_fro']:.1e}", flush=True)
    token_correctness(entry, plan, tools, mods)
    failed = [r["case"] for r in entry["results"] if not r.get("pass")]
    if failed:
        entry["status"] = f"failed: {failed}"


def token_correctness(entry: dict, plan: Any, tools: SimpleNamespace, mods: SimpleNamespace) -> None:
    import torch

    n, heads, d, dim = (576, 16, 64, 1024) if plan.correctness_scale >= 1 else (60, 2, 32, 24)

    def run() -> dict:
        g = torch.Generator(device=plan.device).manual_seed(7)
        q = torch.randn(2, heads, n + 1, d, generator=g, device=plan.device).half()
        k = torch.randn(2, heads, n + 1, d, generator=g, device=plan.device).half()
        feats = torch.randn(2, n + 1, dim, generator=g, device=plan.device).half()
        q64, k64 = _cpu64(q, k)
        out: dict[str, Any] = {}
        ok = True
        for source in ("cls", "mean_received"):
            got = mods.tk_ops.token_scores(q, k, source=source)
            ref = mods.score_ref.token_score_reference(q64, k64, source=source, compute_dtype=torch.float64)
            rel = float((got.double().cpu() - ref).abs().max() / ref.abs().max())
            out[f"{source}_rel_max"] = rel
            ok &= rel <= 1e-4
        scores = mods.tk_ops.token_scores(q, k, source="cls")
        for mode, kk in (("topk", n // 9), ("topk", n), ("regions", n // 9), ("regions", n // 4)):
            sel, idx = mods.tk_ops.token_select(scores, feats, k=kk, mode=mode, prefix=1, keep_prefix=1)
            rsel, ridx = mods.select_tok_ref.token_select_reference(scores.cpu(), feats.cpu(), k=kk, mode=mode,
                                                                    prefix=1, keep_prefix=1)  # fmt: skip
            same = bool(torch.equal(idx.cpu(), ridx)) and bool(torch.equal(sel.cpu(), rsel))
            out[f"{mode}_k{kk}_equal"] = same
            ok &= same
        return {"pass": ok, **out}

    row = tools.guarded(entry, f"tokens N{n} H{heads} d{d}: scores, topk, regions", run)
    if row:
        print(f"   {'PASS' if row['pass'] else 'FAIL'} tokens: "
              + ", ".join(f"{k}={v:.1e}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()
                          if k not in ("case", "pass")), flush=True)  # fmt: skip


# ---------------------------------------------------------------------------------- benchmark


def section_block_sparse(entry: dict, plan: Any, report: Any, tools: SimpleNamespace, mods: SimpleNamespace) -> None:
    for L in plan.sparse_lengths:
        tag = f"sparse L{L}"
        if report.left() < 8 + L / 4096:
            entry["results"].append({"case": tag, "skipped": f"time budget ({report.left():.0f} s left)"})
            continue
        try:
            sparse_case(entry, plan, report, tools, mods, L)
        except Exception as exc:  # noqa: BLE001 - record it, go on with the next size
            import traceback

            entry["results"].append({"case": tag, "error": f"{type(exc).__name__}: {exc}",
                                     "traceback": traceback.format_exc()[-2000:]})  # fmt: skip
        tools.free()
        report.rows(entry, tag)
        report.save()


def sparse_case(entry: dict, plan: Any, report: Any, tools: SimpleNamespace, mods: SimpleNamespace, L: int) -> None:
    import torch

    hq, hkv = plan.prefill_heads
    d, block = plan.sparse_head_dim, plan.sparse_block
    tag = f"sparse L{L}"
    q, k, v = tools.llm_like_qkv(1, hq, hkv, L, L, d, seed=5 * L + d, dtype=torch.float16, device=plan.device)
    kx, vx = k.repeat_interleave(hq // hkv, 1), v.repeat_interleave(hq // hkv, 1)
    sdpa_row = tools.guarded(entry, f"{tag} sdpa", lambda: {
        "mode": "block_sparse", "L": L, "variant": "sdpa",
        "ms": tools.bench_ms(plan, lambda: tools.sdpa(q, kx, vx, causal=True), graph=True)})  # fmt: skip
    ref = tools.sdpa(q, kx, vx, causal=True)
    del kx, vx
    base = sdpa_row["ms"] if sdpa_row else float("nan")
    ops = mods.bs_ops
    n_blocks = -(-L // block)
    common = dict(causal=2, block_size=block, mode="topk", local_blocks=1, sink_blocks=1)
    targets = [*DENSITIES, 1.0]
    for target in targets:
        if report.left() < 4:
            entry["results"].append({"case": f"{tag} density~{target:.0%}", "skipped": "time budget"})
            continue
        kb = n_blocks if target == 1.0 else budget_for_density(n_blocks, block, target)
        for rect in ((0, 1) if target == min(DENSITIES) else (0,)):

            def row(kb=kb, target=target, rect=rect) -> dict:
                def select():
                    return ops.select_blocks(q, k, v if rect else None, keep_blocks=kb, rectify=bool(rect), **common)

                def both():
                    return ops.attend_blocks(q, k, v, select())

                blocks = select()
                out = ops.attend_blocks(q, k, v, blocks)
                select_ms = tools.bench_ms(plan, select, graph=True)
                attend_ms = tools.bench_ms(plan, lambda: ops.attend_blocks(q, k, v, blocks), graph=True)
                ms = tools.bench_ms(plan, both, graph=True)
                return {"mode": "block_sparse", "L": L, "variant": f"density~{target:.0%}" + (" rectify" if rect else ""),
                        "keep_blocks": kb, "density": blocks.density(), "select_ms": select_ms, "attend_ms": attend_ms,
                        "ms": ms, "speedup_vs_sdpa": base / ms, "attend_speedup_vs_sdpa": base / attend_ms,
                        "rel_err_vs_sdpa": tools.errors(out, ref)["rel_fro"]}  # fmt: skip

            tools.guarded(entry, f"{tag} density~{target:.0%}" + (" rectify" if rect else ""), row)


def section_token_pruning(entry: dict, plan: Any, report: Any, tools: SimpleNamespace, mods: SimpleNamespace) -> None:
    import torch

    heads, d, dim, batch = plan.token_heads, plan.token_head_dim, plan.token_feature_dim, 2
    ops = mods.tk_ops
    for n in plan.token_counts:
        tag = f"tokens N{n}"
        if report.left() < 4:
            entry["results"].append({"case": tag, "skipped": f"time budget ({report.left():.0f} s left)"})
            continue
        g = torch.Generator(device=plan.device).manual_seed(n)
        q = torch.randn(batch, heads, n + 1, d, generator=g, device=plan.device).half()
        k = torch.randn(batch, heads, n + 1, d, generator=g, device=plan.device).half()
        feats = torch.randn(batch, n + 1, dim, generator=g, device=plan.device).half()
        budget = n // 9  # 576 -> 64 (LLaVA-1.5 at 88.9 % pruned)
        scale = 1.0 / math.sqrt(d)

        def torch_cls():
            p = torch.softmax((q[:, :, :1].float() @ k.float().transpose(-1, -2)) * scale, -1)
            return p[:, :, 0, 1:].mean(1)

        def torch_mean():
            p = torch.softmax((q.float() @ k.float().transpose(-1, -2)) * scale, -1)
            return p.mean(2)[:, :, 1:].mean(1)

        def torch_topk(s):
            idx = torch.sort(torch.topk(s, budget, dim=-1).indices, dim=-1).values
            return torch.gather(feats[:, 1:], 1, idx[..., None].expand(-1, -1, dim)), idx

        scores = ops.token_scores(q, k, source="cls")
        pairs = [
            ("cls score", lambda: ops.token_scores(q, k, source="cls"), torch_cls),
            ("mean_received score", lambda: ops.token_scores(q, k, source="mean_received"), torch_mean),
            ("topk+gather", lambda: ops.token_select(scores, feats, k=budget, prefix=1), lambda: torch_topk(scores)),
            ("regions+gather", lambda: ops.token_select(scores, feats, k=budget, mode="regions", prefix=1), None),
        ]
        for name, kernel, baseline in pairs:

            def measure(kernel=kernel, baseline=baseline, name=name) -> dict:
                row: dict[str, Any] = {"mode": "tokens", "N": n, "variant": name, "k": budget,
                                       "ms": tools.bench_ms(plan, kernel, graph=True)}  # fmt: skip
                if baseline is not None:
                    row["torch_ms"] = tools.bench_ms(plan, baseline, graph=True)
                    row["speedup_vs_torch"] = row["torch_ms"] / row["ms"]
                    got, want = kernel(), baseline()
                    if name.endswith("score"):
                        row["rel_err_vs_torch"] = float((got - want).abs().max() / want.abs().max())
                    else:
                        row["indices_equal_torch"] = bool(torch.equal(got[1], want[1]))
                return row

            tools.guarded(entry, f"{tag} {name}", measure)
        tools.free()
        report.rows(entry, tag)
        report.save()


def summarize_sparse(report: Any, summary: dict) -> None:
    """Adds the block-sparse and token rows' headline numbers to the script's summary."""
    sections = report.data["sections"]
    rows = [r for r in sections.get("block_sparse", {}).get("results", []) if "ms" in r and r.get("variant") != "sdpa"]
    summary["sparse_correctness"] = sections.get("sparse_correctness", {}).get("status")
    for target in DENSITIES:
        cands = [r for r in rows if r["variant"] == f"density~{target:.0%}"]
        if cands:
            w = min(cands, key=lambda r: r["speedup_vs_sdpa"])
            summary[f"block_sparse_density~{target:.0%}_speedup_vs_sdpa_min"] = {
                "value": round(w["speedup_vs_sdpa"], 3), "at": w["case"], "density": round(w["density"], 4)}
    at_target = [r for r in rows if r["variant"] == "density~10%" and r["L"] == max(r2["L"] for r2 in rows)]
    if at_target:
        r = at_target[0]
        summary["block_sparse_10%_longest_speedup_vs_sdpa"] = {
            "value": round(r["speedup_vs_sdpa"], 3), "at": r["case"], "target": 5.0,
            "met": r["speedup_vs_sdpa"] >= 5.0, "select_ms": r["select_ms"], "attend_ms": r["attend_ms"]}
    dense = [r for r in rows if r["variant"] == "density~100%"]
    if dense:
        w = min(dense, key=lambda r: r["attend_speedup_vs_sdpa"])
        summary["block_sparse_dense_attend_vs_sdpa_min"] = {"value": round(w["attend_speedup_vs_sdpa"], 3),
                                                           "at": w["case"]}  # fmt: skip
    tok = [r for r in sections.get("token_pruning", {}).get("results", []) if "ms" in r]
    if tok:
        summary["token_pruning_ms"] = {r["case"]: round(r["ms"], 4) for r in tok}

