"""Ahead-of-time compilation of the Triton kernels for sm_87 / sm_89 / sm_90 (no GPU needed).

This test process runs Triton in interpreter mode (conftest.py), which cannot compile, so every
compilation runs in a subprocess without ``TRITON_INTERPRET`` and the tests read what it wrote.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from dataclasses import fields
from pathlib import Path
from types import SimpleNamespace

import pytest

from edgeattn.kernels.skip_softmax.aot import SkipSoftmaxBuild, parameter_order
from edgeattn.kernels.triton_aot import TARGETS, AotBuildError, KernelParam, _check_param_order, compile_aot

# Largest dynamic shared memory per block, CUDA C Programming Guide (compute capability 8.7 / 8.9 / 9.0).
SMEM_LIMIT = {75: 64 * 1024, 80: 163 * 1024, 86: 99 * 1024, 87: 163 * 1024, 89: 99 * 1024, 90: 227 * 1024,
              120: 99 * 1024, 121: 99 * 1024}
PTX_TARGET = {75: "sm_75", 80: "sm_80", 86: "sm_86", 87: "sm_87", 89: "sm_89", 90: "sm_90a", 120: "sm_120a",
              121: "sm_121a"}
ROOT = Path(__file__).resolve().parents[1]


def run_compiled_python(args: list[str], tmp: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, *args], cwd=tmp, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


# ----------------------------------------------------------------------------- rules, no compiling


def P(name, type_, role, div=False):
    return KernelParam(name, type_, role, div)


FAKE = SimpleNamespace(__name__="fake", arg_names=["X", "n", "scale", "Y", "BLOCK"])


def test_param_order_follows_tensorrt_launch_convention():
    ok = [P("X", "*fp16", "input"), P("n", "i32", "scalar"), P("Y", "*fp16", "output")]
    _check_param_order(FAKE, ok, {"scale": 0.5, "BLOCK": 64})


@pytest.mark.parametrize(
    "params,constexprs,reason",
    [
        ([P("X", "*fp16", "input"), P("n", "i32", "scalar"), P("Y", "*fp16", "output")], {"BLOCK": 64},
         "missing \\['scale'\\]"),
        ([P("X", "*fp16", "input"), P("Y", "*fp16", "output"), P("n", "i32", "scalar")], {"scale": 1, "BLOCK": 64},
         "not in declaration order"),
        ([P("X", "*fp16", "input"), P("n", "i32", "output"), P("Y", "*fp16", "output")], {"scale": 1, "BLOCK": 64},
         "cannot be a output"),
        ([P("X", "*fp16", "input"), P("n", "i32", "scalar"), P("scale", "fp32", "scalar"), P("Y", "*fp16", "output")],
         {"BLOCK": 64}, "only int32 scalars"),
        ([P("X", "*fp16", "output"), P("n", "i32", "scalar"), P("Y", "*fp16", "output")], {"scale": 1, "BLOCK": 64},
         "inputs..., scalars..., outputs"),
    ],
)  # fmt: skip
def test_param_order_refusals(params, constexprs, reason):
    with pytest.raises(AotBuildError, match=reason):
        _check_param_order(FAKE, params, constexprs)


def test_aot_refuses_interpreted_kernels():
    from edgeattn.kernels.skip_softmax import kernel

    with pytest.raises(AotBuildError, match="not a compiled-mode"):
        compile_aot(kernel.skip_softmax_attn_fwd, params=[], constexprs={}, arch=90, num_warps=4, num_stages=2)


def test_targets_have_the_documented_limits():
    assert {a: t.max_shared_bytes for a, t in TARGETS.items()} == SMEM_LIMIT
    assert {a: t.ptx_target for a, t in TARGETS.items()} == PTX_TARGET


# ------------------------------------------------------------------ skip-softmax builds (subprocess)


@pytest.fixture(scope="module")
def skip_softmax_builds(tmp_path_factory) -> dict[str, dict]:
    """sm_87/89/90 x d64/d128 x prefill/decode, fp16, skip mode with counters (the most parameters;
    the dense variants differ only in constants and are built by the worker test below)."""
    out = tmp_path_factory.mktemp("aot")
    run_compiled_python(
        ["-m", "edgeattn.kernels.skip_softmax.aot", "--out", str(out), "--count-skips", "--scale-factor", "10"], out
    )
    records = {p.name: json.loads(p.read_text()) for p in sorted(out.glob("*.json"))}
    for record in records.values():
        for k in record["kernels"]:
            k["ptx"] = (out / k["ptx_file"]).read_text()
    return records


def test_every_skip_softmax_variant_builds(skip_softmax_builds):
    assert len(skip_softmax_builds) == 3 * 2 * 2
    for arch in (87, 89, 90):
        for d in (64, 128):
            assert f"prefill_d{d}_fp16_causal_sf10_m128n64_count.sm{arch}.json" in skip_softmax_builds
            assert f"decode_d{d}_fp16_causal_sf10_m128n64_s16_count.sm{arch}.json" in skip_softmax_builds


def test_ptx_targets_the_architecture_and_shared_memory_fits(skip_softmax_builds):
    seen = set()
    for record in skip_softmax_builds.values():
        for k in record["kernels"]:
            arch = k["arch"]
            assert re.findall(r"^\s*\.target\s+(\w+)", k["ptx"], re.M) == [PTX_TARGET[arch]]
            assert re.search(rf"\.entry\s+{k['kernel']}\s*\(", k["ptx"])
            assert 0 < k["shared_bytes"] <= SMEM_LIMIT[arch]
            assert k["block"] == [32 * k["num_warps"], 1, 1]
            if arch == 90:  # Hopper builds are spill-free (sm_87/89 d128 prefill spill a few bytes: reported)
                assert k["spill_bytes"] in (0, None)
            seen.add((arch, record["attributes"]["head_dim"], k["kernel"], k["shared_bytes"], k["num_stages"]))
    assert {a for a, *_ in seen} == {87, 89, 90}


def test_parameter_order_is_recorded_for_tensorrt(skip_softmax_builds):
    from edgeattn.kernels.skip_softmax import kernel

    declared = {
        "skip_softmax_attn_fwd": kernel.skip_softmax_attn_fwd.arg_names,
        "skip_softmax_merge_splits": kernel.skip_softmax_merge_splits.arg_names,
    }
    for record in skip_softmax_builds.values():
        decode = record["attributes"]["mode"] == "decode"
        assert [k["kernel"] for k in record["kernels"]] == (
            ["skip_softmax_attn_fwd", "skip_softmax_merge_splits"] if decode else ["skip_softmax_attn_fwd"]
        )
        for k in record["kernels"]:
            names = [p["name"] for p in k["params"]]
            runtime_in_order = [n for n in declared[k["kernel"]] if n not in k["constexprs"]]
            assert names == runtime_in_order
            roles = [p["role"] for p in k["params"]]
            assert roles == sorted(roles, key=["input", "scalar", "output"].index)
            assert all(p["type"] == "i32" and "value" in p for p in k["params"] if p["role"] == "scalar")
            # The PTX entry takes exactly the recorded params plus Triton's hidden scratch pointers.
            entry = re.search(rf"\.entry\s+{k['kernel']}\s*\((.*?)\)", k["ptx"], re.S).group(1)
            assert len(re.findall(r"\.param\s", entry)) == len(names) + len(k["hidden_params"])
        build = SkipSoftmaxBuild(**{f.name: record["attributes"][f.name] for f in fields(SkipSoftmaxBuild)})
        recorded = {k["kernel"]: [p["name"] for p in k["params"]] for k in record["kernels"]}
        assert recorded == {name: [p.name for p in ps] for name, ps in parameter_order(build).items()}
        fwd = record["kernels"][0]
        outputs = [p["name"] for p in fwd["params"] if p["role"] == "output"]
        assert outputs == (["Out", "Lse", "Counts"] if decode else ["Out", "Counts"])
        assert fwd["grid"][2] == ("S" if decode else "1")


# ------------------------------------------------------------------------- generic helper (subprocess)

WORKER = textwrap.dedent(
    """
    import json, sys
    from edgeattn.kernels.skip_softmax import kernel
    from edgeattn.kernels.skip_softmax.aot import SkipSoftmaxBuild, _fwd_constexprs, _fwd_params
    from edgeattn.kernels.triton_aot import AotBuildError, compile_aot

    b = SkipSoftmaxBuild(head_dim=128, block_n=128, causal=False)
    result = {}
    try:  # 4 stages of 128x128 K and V tiles cannot fit the 99 KB of sm_89
        compile_aot(kernel.skip_softmax_attn_fwd, params=_fwd_params(b), constexprs=_fwd_constexprs(b),
                    arch=89, num_warps=8, num_stages=4)
        result["overflow"] = None
    except AotBuildError as exc:
        result["overflow"] = str(exc)
    capped = compile_aot(kernel.skip_softmax_attn_fwd, params=_fwd_params(b), constexprs=_fwd_constexprs(b),
                         arch=87, num_warps=8, num_stages=2, ptx_version=85)
    result["capped"] = capped.launch_signature(["1", "1", "1"]) | {"ptx_head": capped.ptx[:2000]}
    json.dump(result, sys.stdout)
    """
)


def test_aot_checks_shared_memory_and_caps_the_ptx_isa(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    result = json.loads(run_compiled_python([str(script)], tmp_path).stdout)
    assert result["overflow"] and "shared memory" in result["overflow"] and "sm_89 allows 101376" in result["overflow"]
    capped = result["capped"]
    assert capped["ptx_version"] == "8.5" and re.search(r"^\.version 8\.5", capped["ptx_head"], re.M)
    assert capped["ptx_target"] == "sm_87" and capped["hidden_params"] == ["global_scratch", "profile_scratch"]


def test_two_pass_and_grouped_decode_kernels_build_for_every_target(tmp_path):
    """The kernels of the designs the GPU benchmark measures against the fused one (two-pass prefill,
    grouped decode) compile for sm_87/89/90 at d = 128, fit shared memory and do not spill."""
    script = textwrap.dedent("""
        import json
        from edgeattn.kernels.skip_softmax.aot import SkipSoftmaxBuild, candidate_kernels
        rows = []
        for arch in (87, 89, 90):
            for name, k in candidate_kernels(SkipSoftmaxBuild(head_dim=128, scale_factor=10.0), arch).items():
                rows.append({"arch": arch, "name": name, "kernel": k.kernel, "shared": k.shared_bytes,
                             "spill": k.spill_bytes, "target": k.target.ptx_target, "ptx_has_entry": k.kernel in k.ptx})
        print(json.dumps(rows))
    """)
    rows = json.loads(run_compiled_python(["-c", script], tmp_path).stdout.strip().splitlines()[-1])
    assert {(r["arch"], r["name"]) for r in rows} == {(a, n) for a in (87, 89, 90)
                                                      for n in ("two_pass_votes", "two_pass_attend", "decode_grouped")}
    for r in rows:
        assert r["target"] == PTX_TARGET[r["arch"]] and r["ptx_has_entry"]
        assert 0 < r["shared"] <= SMEM_LIMIT[r["arch"]]
        assert r["spill"] in (0, None)
