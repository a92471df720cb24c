"""The guarantees behind the CLI's error boundary: no text from a file is evaluated, no path it names
leaves its folder, no output replaces an input or a folder edgeattn did not write, interrupted runs
leave nothing behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import onnx
import pytest

from edgeattn.errors import EdgeAttnError
from edgeattn.exporter.files import staged_folder
from edgeattn.ops.dims import canonical_dim
from edgeattn.paths import UnsafePathError, confined


@pytest.mark.parametrize(("a", "b"), [
    ("sequence + past_sequence", "past_sequence+sequence"),
    ("2*s//2", "s"),
    ("(a+1)*(a-1)", "a*a - 1"),
    ("a + b - a", "b"),
    ("s // 1", "s"),
])
def test_equal_lengths_have_one_spelling(a: str, b: str) -> None:
    assert canonical_dim(a) == canonical_dim(b)


@pytest.mark.parametrize("text", [
    "__import__('os').system('touch PWNED')", "lambda: 0", "a.__class__", "1e999", "a ** 2", "a / b", "é",
    "(" * 500 + "a" + ")" * 500, "9" * 40, "", "a +", "s // 0",
])
def test_other_text_stays_as_written(text: str) -> None:
    assert canonical_dim(text) == text
    assert canonical_dim("s + p") != canonical_dim("s + q")


def test_a_dim_name_is_never_run(tmp_path: Path) -> None:
    """A graph whose dim names are Python expressions goes through the causal-mask analysis (`--sparse
    dense`) without running them. The payload reaches `os.system` even when every name in it is bound to
    a sympy Symbol, as the old sympify-based normaliser did (checked by hand: it created PWNED)."""
    from models.sparse_graphs import attention_site

    model = attention_site()
    payload = ("[c for c in ().__class__.__base__.__subclasses__() if c.__name__ == 'catch_warnings'][0]()"
               "._module.__builtins__['__import__']('os').system('touch PWNED')")
    for value in [*model.graph.input, *model.graph.value_info, *model.graph.output]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param == "sequence":
                dim.dim_param = payload
    onnx.save_model(model, tmp_path / "model.onnx")
    done = subprocess.run([sys.executable, "-m", "edgeattn.cli.main", "rewrite", "model.onnx", "out.onnx",
                           "--sparse", "dense"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert "Traceback" not in done.stderr and done.returncode in (0, 1), done.stderr
    assert not (tmp_path / "PWNED").exists()


def test_confined_paths(tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "w.data").write_bytes(b"")
    (tmp_path / "model" / "out").symlink_to(tmp_path)
    assert confined(tmp_path / "model", "w.data", source="m") == (tmp_path / "model" / "w.data").resolve()
    for bad in ("../x", "/etc/passwd", "out/x", "", "a\x00b", 7, None, "x" * 5000, "C:\\x"):
        with pytest.raises(UnsafePathError):
            confined(tmp_path / "model", bad, source="m")


def test_a_folder_that_appears_meanwhile_is_not_replaced(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(EdgeAttnError, match="already exists"):
        with staged_folder(out, force=False) as stage:
            (stage / "result.txt").write_text("new")
            out.mkdir()  # a concurrent run (or the user) takes the name
            (out / "theirs.txt").write_text("theirs")
    assert (out / "theirs.txt").read_text() == "theirs"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # the stage is gone


def test_force_replaces_an_export_and_nothing_else(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.json").write_text('{"format": "edgeattn.manifest/1"}')
    with staged_folder(out, force=True) as stage:
        (stage / "manifest.json").write_text('{"format": "edgeattn.manifest/1", "new": 1}')
    assert '"new"' in (out / "manifest.json").read_text()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(EdgeAttnError, match="not an edgeattn export"):
        with staged_folder(tmp_path / "mine", force=True):
            pass
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"
    (tmp_path / "engines").mkdir()  # an `edgeattn compile` folder is edgeattn's too
    (tmp_path / "engines" / "compile.json").write_text('{"format": "edgeattn.compile/1"}')
    with staged_folder(tmp_path / "engines", force=True) as stage:
        (stage / "compile.json").write_text('{"format": "edgeattn.compile/1", "new": 1}')
    assert '"new"' in (tmp_path / "engines" / "compile.json").read_text()


def test_partial_folders_of_dead_runs_are_removed(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".out.{int(dead.stdout)}.abc123.partial"
    stale.mkdir()
    (stale / "decoder.onnx").write_bytes(b"half")
    mine = tmp_path / f".out.{os.getpid()}.live.partial"  # a live process's stage is left alone
    mine.mkdir()
    other = tmp_path / ".other.1.x.partial"  # another output's stage is left alone
    other.mkdir()
    with staged_folder(tmp_path / "out", force=False) as stage:
        (stage / "manifest.json").write_text("{}")
    assert not stale.exists() and mine.exists() and other.exists() and (tmp_path / "out").is_dir()


def _default_signals() -> None:
    """In the child before exec: Ctrl-C and SIGTERM as a terminal gives them. A launcher that ignores them (a
    background job of a non-interactive shell, nohup) passes that on, and edgeattn keeps a signal that was set
    to be ignored ignored by design, which these tests are not about."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_DFL)


def test_sigterm_cleans_up_like_ctrl_c(tmp_path: Path) -> None:
    process = subprocess.Popen([sys.executable, "-m", "edgeattn.cli.main", "export", "demo:tiny-llama", "--out", "x"],
                               cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=_default_signals)
    deadline = time.monotonic() + 120
    while not any(p.name.endswith(".partial") for p in tmp_path.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process.poll() is None, "the export ended before it could be interrupted"
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 1 and "Traceback" not in stderr and "interrupted" in stderr, stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_inside_generated_code_still_exits_1(tmp_path: Path, signum: int) -> None:
    # torch.export and dataclasses run generated source through exec(); a bare KeyboardInterrupt raised there
    # made CPython 3.11 end a `python -m` process with SIGINT (-2) after the boundary had chosen exit code 1.
    (tmp_path / "interrupted_run.py").write_text(
        "import os, signal\n"
        "from edgeattn.cli.boundary import handle_errors, terminate_like_interrupt\n"
        "terminate_like_interrupt()\n"
        "with handle_errors():\n"
        f"    exec('os.kill(os.getpid(), {int(signum)})\\nwhile True: pass')\n")
    done = subprocess.run([sys.executable, "-m", "interrupted_run"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
                          preexec_fn=_default_signals)
    assert done.returncode == 1, (done.returncode, done.stderr)
    assert done.stderr.strip() == "error: interrupted; nothing was written (partial outputs were removed)"
