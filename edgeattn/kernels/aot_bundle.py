"""Ahead-of-time kernel builds for TensorRT engines, compiled in a process of their own.

`edgeattn compile` asks for the builds its plugin nodes need (a kernel family, the build's attributes,
the target architectures) and gets back each build's launch record with its PTX. Compilation runs in a
child process with ``TRITON_INTERPRET`` unset: Triton fixes compiled-or-interpreted mode when it is first
imported, and a process that runs kernels in the interpreter (the test suite, a CPU session) cannot
compile them. Identical requests are compiled once.

``python -m edgeattn.kernels.aot_bundle`` reads a JSON list of requests on stdin and writes the JSON list of
records (or ``{"error": ...}``) on stdout.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from typing import Any, Mapping, Sequence

from ..errors import EdgeAttnError
from .triton_aot import TARGETS, AotBuildError

__all__ = ["FAMILIES", "build_record", "compile_records"]

# kernel family -> (its aot module, the build classes a request may name)
FAMILIES: dict[str, tuple[str, tuple[str, ...]]] = {
    "skip_softmax": ("edgeattn.kernels.skip_softmax.aot", ("SkipSoftmaxBuild",)),
    "tokens": ("edgeattn.kernels.tokens.aot", ("TokenScoreBuild", "TokenSelectBuild")),
    "block_sparse": ("edgeattn.kernels.block_sparse.aot", ("BlockSparseBuild",)),
}
TIMEOUT_S = 1800


def _key(request: Mapping[str, Any]) -> str:
    return json.dumps(request, sort_keys=True)


def build_record(request: Mapping[str, Any]) -> dict[str, Any]:
    """Compile one request {family, build_class, build: {...}, arch} in this process."""
    family, class_name, arch = request["family"], request["build_class"], int(request["arch"])
    if family not in FAMILIES or class_name not in FAMILIES[family][1]:
        raise AotBuildError(f"no kernel build {family}.{class_name}")
    if arch not in TARGETS:
        raise AotBuildError(f"no AOT target sm_{arch}; known: {', '.join(f'sm_{a}' for a in sorted(TARGETS))}")
    module = importlib.import_module(FAMILIES[family][0])
    build = getattr(module, class_name)(**request["build"])
    return module.build(build, arch)


def compile_records(requests: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The record of every request (same order), compiled in one child process; AotBuildError with the
    child's one-line reason when a build cannot be made (too much shared memory for an arch, ...)."""
    unique = {_key(r): r for r in requests}
    if not unique:
        return []
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    try:
        done = subprocess.run([sys.executable, "-m", "edgeattn.kernels.aot_bundle"], input=json.dumps(list(unique.values())),
                              capture_output=True, text=True, env=env, timeout=TIMEOUT_S)  # fmt: skip
    except subprocess.TimeoutExpired as exc:
        raise AotBuildError(f"compiling the kernels took longer than {TIMEOUT_S} s") from exc
    try:
        answer = json.loads(done.stdout) if done.stdout.strip() else None
    except json.JSONDecodeError:
        answer = None
    if isinstance(answer, dict) and "error" in answer:
        raise AotBuildError(str(answer["error"]))
    if done.returncode != 0 or not isinstance(answer, list) or len(answer) != len(unique):
        tail = " ".join(done.stderr.strip().splitlines()[-1:]) or f"exit code {done.returncode}"
        raise EdgeAttnError(f"the kernel compiler process failed: {tail}")
    by_key = dict(zip(unique, answer))
    return [by_key[_key(r)] for r in requests]


def main() -> int:
    requests = json.loads(sys.stdin.read())
    try:
        records = [build_record(r) for r in requests]
    except AotBuildError as exc:
        print(json.dumps({"error": str(exc)}))
        return 1
    print(json.dumps(records))
    return 0


if __name__ == "__main__":
    sys.exit(main())
