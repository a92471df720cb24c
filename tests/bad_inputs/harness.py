"""One hostile case = a folder it builds, the CLI arguments it runs, and a fragment of the one-line error.

`run_case` runs the CLI (`edgeattn.cli.main.main(ARGS)`) in a child process, inside the case's own folder,
with limits on time and address space, and checks every promise of the CLI's error boundary. The child is
forked from a zygote process that imported torch, transformers and onnxruntime once (`zygote.py`), so a
case costs its own work, not seconds of imports:

- exit code 1, the message on one short line of stderr, no traceback;
- the fragment appears in that line (case-insensitive);
- the inputs are byte-identical afterwards, and no file appears outside the declared output paths
  (nor outside the case folder: a sibling "outside" folder is watched too).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

# A hostile input must end in seconds: 120 s covers importing torch and loading a tiny model on a
# loaded 2-core machine; 12 GiB of address space covers torch's and onnxruntime's reservations
# (mostly unbacked) while stopping a real blow-up (a range expanded into a set, an absurd allocation).
TIMEOUT_S = 120
ADDRESS_SPACE_BYTES = 12 * 1024**3
MAX_MESSAGE_CHARS = 600


@dataclass(frozen=True)
class Case:
    """`setup(folder)` writes the inputs into `folder` and returns the CLI arguments (after `edgeattn`)."""

    name: str
    setup: Callable[[Path], list[str]]
    fragment: str
    outputs: tuple[str, ...] = ()  # paths (relative to the folder) the command may create or remove
    stdin: bytes | None = None
    env: dict[str, str] = field(default_factory=dict)
    file_size: int | None = None  # RLIMIT_FSIZE in bytes: a disk that fills up after this many


def snapshot(root: Path) -> dict[str, str]:
    """Relative path -> sha256 (or the link target for a symlink) of everything under `root`."""
    found: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            found[rel] = "link:" + os.readlink(path)
        elif path.is_file():
            found[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
        elif path.is_dir():
            found[rel] = "dir"
    return found


class _Zygote:
    """The zygote process (`zygote.py`), started on first use and kept for the test session."""

    def __init__(self) -> None:
        env = {**os.environ, "PYTHONWARNINGS": "ignore"}
        self.process = subprocess.Popen([sys.executable, str(Path(__file__).with_name("zygote.py"))], env=env,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert json.loads(self.process.stdout.readline()).get("ready"), "the zygote did not start"  # type: ignore[union-attr]

    def run(self, request: dict) -> dict:
        self.process.stdin.write(json.dumps(request) + "\n")  # type: ignore[union-attr]
        self.process.stdin.flush()  # type: ignore[union-attr]
        line = self.process.stdout.readline()  # type: ignore[union-attr]
        assert line, "the zygote died"
        return json.loads(line)


_ZYGOTE: list[_Zygote] = []


def _zygote() -> _Zygote:
    if not _ZYGOTE or _ZYGOTE[0].process.poll() is not None:
        _ZYGOTE[:] = [_Zygote()]
    return _ZYGOTE[0]


def _is_output(rel: str, outputs: tuple[str, ...]) -> bool:
    return any(rel == out or rel.startswith(out.rstrip("/") + "/") for out in outputs)


def run_case(case: Case, base: Path) -> str:
    """Run `case` in `base/case` (with a watched `base/outside`); returns the error line."""
    folder, outside = base / "case", base / "outside"
    folder.mkdir(parents=True)
    outside.mkdir()
    (outside / "secret.txt").write_text("a file outside the case folder\n")
    args = case.setup(folder)
    before, before_outside = snapshot(folder), snapshot(outside)
    env = {**os.environ, "PYTHONWARNINGS": "ignore", **case.env}
    streams = base / "streams"
    streams.mkdir()
    stdin = None
    if case.stdin is not None:
        stdin = streams / "stdin"
        stdin.write_bytes(case.stdin)
    answer = _zygote().run({"args": args, "cwd": str(folder), "env": env, "stdin": str(stdin) if stdin else None,
                            "stdout": str(streams / "stdout"), "stderr": str(streams / "stderr"),
                            "timeout": TIMEOUT_S, "address_space": ADDRESS_SPACE_BYTES,
                            "file_size": case.file_size})
    if answer["timed_out"]:
        raise AssertionError(f"{case.name}: no answer within {TIMEOUT_S} s (a hang)")
    seconds, returncode = answer["seconds"], answer["returncode"]
    stdout = (streams / "stdout").read_bytes()
    stderr = (streams / "stderr").read_bytes().decode("utf-8", "replace")
    lines = [line for line in stderr.splitlines() if line.strip()]
    where = f"{case.name} ({seconds:.1f} s), edgeattn {' '.join(args)}\nstdout: {stdout[-2000:]!r}\nstderr: {stderr[-4000:]}"
    assert "Traceback" not in stderr, f"traceback in {where}"
    assert returncode == 1, f"exit code {returncode} in {where}"
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1, f"expected one 'error:' line in {where}"
    message = errors[0]
    assert len(message) <= MAX_MESSAGE_CHARS, f"message too long ({len(message)} chars) in {where}"
    assert case.fragment.lower() in message.lower(), f"{case.fragment!r} not in the message of {where}"
    after = snapshot(folder)
    changed = sorted(rel for rel in set(before) | set(after)
                     if before.get(rel) != after.get(rel) and not _is_output(rel, case.outputs))
    assert not changed, f"{case.name}: files changed or created outside the outputs: {changed[:5]}"
    assert snapshot(outside) == before_outside, f"{case.name}: the folder beside the case changed"
    return message
