"""A process that has imported edgeattn's heavy dependencies once and forks one child per hostile case.

Importing torch and transformers costs seconds; a case costs milliseconds. The zygote imports them before
any thread starts (nothing runs yet, so forking is safe), then reads one JSON request per line on stdin:
{"args": [...], "cwd": ..., "env": {...}, "stdin": path|null, "stdout": path, "stderr": path,
"timeout": s, "address_space": bytes, "file_size": bytes|null}. For each it forks a child that sets the limits, enters the
case folder and runs the real CLI entry point (`edgeattn.cli.main.main`), and answers one JSON line:
{"returncode": int, "timed_out": bool, "seconds": float}.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import sys
import time
import traceback


def _preload() -> None:
    import numpy  # noqa: F401
    import onnx  # noqa: F401
    import onnx_ir  # noqa: F401
    import onnxruntime  # noqa: F401
    import torch  # noqa: F401
    import transformers  # noqa: F401

    import edgeattn.cli.main  # noqa: F401
    import edgeattn.exporter.api  # noqa: F401
    import edgeattn.graphs  # noqa: F401


def _child(request: dict) -> None:
    code = 1
    try:
        resource.setrlimit(resource.RLIMIT_AS, (request["address_space"],) * 2)
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if request.get("file_size") is not None:  # a full disk: writes past this size fail with EFBIG
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (request["file_size"],) * 2)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        stdin = os.open(request["stdin"] or os.devnull, os.O_RDONLY)
        os.dup2(stdin, 0)
        for fd, key in ((1, "stdout"), (2, "stderr")):
            os.dup2(os.open(request[key], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), fd)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        from edgeattn.cli.main import main

        sys.argv = ["edgeattn", *request["args"]]
        main(request["args"])
        code = 0
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    except BaseException:  # noqa: BLE001 - reported like an uncaught exception
        traceback.print_exc()
        code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _wait(pid: int, timeout: float) -> tuple[int, bool]:
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status), False
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return -9, True
        time.sleep(0.01)


def serve() -> None:
    _preload()
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        started = time.monotonic()
        pid = os.fork()
        if pid == 0:
            _child(request)
        code, timed_out = _wait(pid, request["timeout"])
        print(json.dumps({"returncode": code, "timed_out": timed_out, "seconds": time.monotonic() - started}),
              flush=True)


if __name__ == "__main__":
    serve()
