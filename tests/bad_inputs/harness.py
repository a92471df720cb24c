"""One hostile case = a folder it builds, the CLI arguments it runs, and a fragment of the one-line error.

`run_case` runs `python -m edgeattn.cli.main ARGS` in a subprocess, inside the case's own folder, with
limits on time and address space, and checks every promise of the CLI's error boundary:

- exit code 1, the message on one short line of stderr, no traceback;
- the fragment appears in that line (case-insensitive);
- the inputs are byte-identical afterwards, and no file appears outside the declared output paths
  (nor outside the case folder: a sibling "outside" folder is watched too).
"""

from __future__ import annotations

import hashlib
import os
import resource
import subprocess
import sys
import time
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


def _limits() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE_BYTES, ADDRESS_SPACE_BYTES))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


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
    started = time.monotonic()
    try:
        done = subprocess.run([sys.executable, "-m", "edgeattn.cli.main", *args], cwd=folder, env=env,
                              input=case.stdin, capture_output=True, timeout=TIMEOUT_S, preexec_fn=_limits)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"{case.name}: no answer within {TIMEOUT_S} s (a hang)") from None
    seconds = time.monotonic() - started
    stderr = done.stderr.decode("utf-8", "replace")
    lines = [line for line in stderr.splitlines() if line.strip()]
    where = f"{case.name} ({seconds:.1f} s), edgeattn {' '.join(args)}\nstdout: {done.stdout[-2000:]!r}\nstderr: {stderr[-4000:]}"
    assert "Traceback" not in stderr, f"traceback in {where}"
    assert done.returncode == 1, f"exit code {done.returncode} in {where}"
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
