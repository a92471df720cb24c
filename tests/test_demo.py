"""`edgeattn demo`: export once, prune the exported folder, time both interleaved, draw the kept tokens."""

from __future__ import annotations

import json
import statistics

from edgeattn.manifest import read_manifest
from tests.test_cli import invoke


def test_demo_prunes_the_exported_folder_and_reuses_the_export(tmp_path, capsys):
    out = tmp_path / "demo-out"
    args = ["demo", "--model", "demo:tiny-llava", "--out", str(out), "--rounds", "3", "--max-new-tokens", "2"]
    code, stdout, err = invoke([*args, "--json"], capsys)
    assert code == 0, err
    report = json.loads(stdout)
    dense, pruned = report["variants"]
    base = out / "demo_tiny-llava"
    assert read_manifest(base / "pruned").document["variant"]["from"] == str(base / "dense")
    assert (dense["image_tokens"], pruned["image_tokens"]) == (64, 64 // 9)
    # The speedup is the median of the per-round ratios, from the times the report lists.
    ratios = [a / b for a, b in zip(dense["ttft_rounds_ms"], pruned["ttft_rounds_ms"])]
    assert len(ratios) == 3 and pruned["speedup"] == statistics.median(ratios)
    assert pruned["speedup_min"] == min(ratios) and pruned["speedup_max"] == max(ratios)
    assert dense["ideal_speedup"] == 1.0 and pruned["ideal_speedup"] > 1.0
    assert (base / "kept.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and report["picture"] == str(base / "kept.png")

    inode = (base / "dense" / "decoder.onnx").stat().st_ino
    code, stdout, err = invoke(args, capsys)  # again, as text: the export is reused, the table fits 80 columns
    assert code == 0, err
    assert (base / "dense" / "decoder.onnx").stat().st_ino == inode
    table = [line for line in stdout.splitlines() if str(tmp_path) not in line]  # paths are as long as they are
    assert all(len(line) <= 80 for line in table), stdout
    assert "pruned fastervlm:7" in stdout and "FLOP-ideal" in stdout


def test_demo_refuses_a_bad_image_before_exporting(tmp_path, capsys):
    out = tmp_path / "demo-out"
    code, _, err = invoke(["demo", "--model", "demo:tiny-llava", "--out", str(out), "--image",
                           str(tmp_path / "missing.png")], capsys)
    assert code == 1 and "does not exist" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
