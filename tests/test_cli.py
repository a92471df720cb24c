"""The command line through click's CliRunner: help, version, JSON, and one-line errors with exit 1."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from edgeattn import __version__
from edgeattn.cli.main import cli, main


def invoke(args: list[str], capsys) -> tuple[int, str, str]:
    """Run the real entry point (which maps user errors to exit 1) and capture its output."""
    with pytest.raises(SystemExit) as stop:
        main(args)
    out, err = capsys.readouterr()
    return stop.value.code, out, err


def test_help_and_version():
    runner = CliRunner()
    result = runner.invoke(cli, ["--help"])
    assert result.exit_code == 0
    for command in ("export", "run", "demo", "inspect", "rewrite", "ops"):
        assert command in result.output
    assert __version__ in runner.invoke(cli, ["--version"]).output
    assert "--no-validate" in runner.invoke(cli, ["export", "--help"]).output


def test_export_and_run_json(tmp_path, capsys):
    out = tmp_path / "llama"
    code, stdout, _ = invoke(["export", "demo:tiny-llama", "--out", str(out), "--json"], capsys)
    assert code == 0
    manifest = json.loads(stdout)
    assert manifest["out"] == str(out) and set(manifest["components"]) == {"embed", "decoder"}
    code, stdout, _ = invoke(["run", str(out), "--prompt", "Hi", "--max-new-tokens", "3", "--json"], capsys)
    assert code == 0
    result = json.loads(stdout)
    assert len(result["tokens"]) == 3 and result["ttft_ms"] > 0 and isinstance(result["text"], str)


def write_folder(path, config: dict | None, files: tuple[str, ...] = ()) -> str:
    path.mkdir()
    if config is not None:
        (path / "config.json").write_text(json.dumps(config))
    for name in files:
        (path / name).write_bytes(b"\0")
    return str(path)


@pytest.mark.parametrize(
    "make_args, message",
    [
        (lambda t: ["export", str(t / "missing"), "--out", str(t / "o")], "does not exist"),
        (lambda t: ["export", "demo:huge", "--out", str(t / "o")], "unknown demo model 'demo:huge'; built-in demos are"),
        (lambda t: ["export", "zoo:gpt5", "--out", str(t / "o")], "unknown zoo model"),
        (lambda t: ["export", write_folder(t / "m", None), "--out", str(t / "o")], "has no config.json"),
        (
            lambda t: ["export", write_folder(t / "m", {"model_type": "gpt2"}, ("model.safetensors",)), "--out", str(t / "o")],
            "unsupported architecture 'gpt2'; supported families are decoder: llama",
        ),
        (
            lambda t: ["export", write_folder(t / "m", {"model_type": "llama"}, ("pytorch_model.bin",)), "--out", str(t / "o")],
            "only pickled weights (pytorch_model.bin)",
        ),
        (lambda t: ["run", str(t / "nothing")], "is not a folder"),
        (lambda t: ["run", write_folder(t / "m", None)], "has no manifest.json"),
    ],
)
def test_bad_input_is_one_line_exit_1(tmp_path, capsys, make_args, message):
    code, stdout, stderr = invoke(make_args(tmp_path), capsys)
    assert code == 1
    assert message in stderr
    assert stderr.count("\n") == 1 and "Traceback" not in stderr
    assert not (tmp_path / "o").exists()


def test_existing_output_folder_is_refused_without_force(tmp_path, capsys):
    (tmp_path / "o").mkdir()
    code, _, stderr = invoke(["export", "demo:tiny-vit", "--out", str(tmp_path / "o")], capsys)
    assert code == 1 and "already exists; pass --force" in stderr


def test_bad_opset_is_a_usage_error_on_one_line(tmp_path, capsys):
    code, _, stderr = invoke(["export", "demo:tiny-vit", "--out", str(tmp_path / "o"), "--opset", "12"], capsys)
    assert code == 1 and "12 is not in the range 17<=x<=23" in stderr and len(stderr.strip().splitlines()) == 1


def test_export_rewrite_validates_the_rewritten_decoder_and_runs(tmp_path, capsys):
    out = tmp_path / "rw"
    code, stdout, _ = invoke(["export", "demo:tiny-llama", "--out", str(out), "--rewrite", "--json"], capsys)
    assert code == 0
    manifest = json.loads(stdout)
    assert manifest["rewrite"]["components"]["decoder"]["rewritten"] == 2
    assert manifest["rewrite"]["components"]["decoder"]["ops"] == ["Attention"]
    worst = max(o["max_rel"] for r in manifest["validation"]["decoder_rewritten"] for o in r["outputs"].values())
    assert worst < 2e-5
    code, stdout, _ = invoke(["run", str(out), "--prompt", "Hi", "--max-new-tokens", "3", "--json"], capsys)
    assert code == 0 and len(json.loads(stdout)["tokens"]) == 3


def test_export_sparse_lowers_the_decoder_and_runs(tmp_path, capsys):
    out = tmp_path / "sparse"
    args = ["export", "demo:tiny-llama", "--out", str(out), "--sparse", "block:keep=0.5,block=16", "--json"]
    code, stdout, _ = invoke(args, capsys)
    assert code == 0
    manifest = json.loads(stdout)
    assert manifest["sparse"]["flags"] == ["block:keep=0.5,block=16"]
    assert {site["op"] for site in manifest["sparse"]["sites"]} == {"BlockSparseAttention"}
    code, stdout, _ = invoke(["run", str(out), "--prompt", "a longer prompt than one block", "--json"], capsys)
    assert code == 0 and json.loads(stdout)["tokens"]


def test_bad_sparse_flag_fails_before_export(tmp_path, capsys):
    code, _, stderr = invoke(["export", "demo:tiny-llama", "--out", str(tmp_path / "o"), "--sparse", "bogus:1"], capsys)
    assert code == 1 and "names no method" in stderr and not (tmp_path / "o").exists()


def test_sparse_on_a_model_without_a_decoder_fails_before_export(tmp_path, capsys):
    code, _, stderr = invoke(["export", "demo:tiny-vit", "--out", str(tmp_path / "o"), "--sparse", "block:keep=0.5"],
                             capsys)  # fmt: skip
    assert code == 1 and "no decoder component" in stderr and "validate" not in stderr  # refused before exporting
    assert not (tmp_path / "o").exists()
