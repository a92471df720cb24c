"""One engine build in a child process, so that a crash inside TensorRT ends the child and not the command.

TensorRT's builder is native code: on some graphs it aborts or segfaults instead of returning an error
(TensorRT-RTX 1.7 segfaults building the half-precision function body of some rewritten vision attention,
measured on demo:tiny-vit). `edgeattn compile` builds each engine in `python -m edgeattn.runtime.trt_worker`,
which reads one JSON request on stdin and writes the compile.json entry on stdout; a child that dies by a
signal becomes one line naming the component, the signal and what to try.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Mapping

from edgeattn.errors import EdgeAttnError

TIMEOUT_S = 6 * 3600  # a large model's build may take an hour; a hung builder does not take a day


def request_for(backend: str, component: Any, arch: Any, overrides: Mapping[str, Any], longest: int | None,
                out: Path, plugins: bool, timing_cache: Path | None) -> dict[str, Any]:  # fmt: skip
    return {"backend": backend, "component": {"name": component.name, "onnx": str(component.onnx),
                                              "inputs": [dict(i) for i in component.inputs]},
            "arch": list(arch), "overrides": {k: v.to_json() for k, v in overrides.items()}, "longest": longest,
            "out": str(out), "plugins": plugins, "timing_cache": str(timing_cache) if timing_cache else None}


def build_in_child(request: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, list[int]]]:
    """(the compile.json entry, the dim ranges used) of one engine built by a child process."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    try:
        done = subprocess.run([sys.executable, "-m", "edgeattn.runtime.trt_worker"], input=json.dumps(request),
                              capture_output=True, text=True, env=env, timeout=TIMEOUT_S)  # fmt: skip
    except subprocess.TimeoutExpired:
        raise EdgeAttnError(f"building {request['component']['name']} took longer than {TIMEOUT_S // 3600} h; "
                            "stopped") from None
    answer = _last_json(done.stdout)
    if done.returncode < 0:
        name = signal.Signals(-done.returncode).name
        raise EdgeAttnError(f"{request['backend']} crashed ({name}) while building {request['component']['name']}; "
                            "this is a TensorRT fault on this graph: try without --no-plugins, another --dtype, "
                            "or --backend tensorrt")
    if answer is None:
        tail = " ".join(done.stderr.strip().splitlines()[-1:]) or f"exit code {done.returncode}"
        raise EdgeAttnError(f"the engine builder process failed on {request['component']['name']}: {tail}")
    if "error" in answer:
        raise EdgeAttnError(str(answer["error"]))
    return answer["entry"], answer["dims"]


def _last_json(text: str) -> dict[str, Any] | None:
    for line in reversed(text.strip().splitlines()):
        try:
            value = json.loads(line)
        except ValueError:
            continue
        return value if isinstance(value, dict) else None
    return None


def main() -> int:
    from edgeattn.runtime import tensorrt as rt

    request = json.loads(sys.stdin.read())
    try:
        backend = rt.load_backend(request["backend"])
        spec = request["component"]
        component = rt.Component(spec["name"], Path(spec["onnx"]), tuple(spec["inputs"]))
        overrides = {k: rt.DimRange(*v) for k, v in request["overrides"].items()}
        pick = rt.default_ranges(request["longest"])
        used: dict[str, Any] = {}

        def dims(name: str) -> Any:
            used[name] = overrides.get(name) or pick(name)
            return used[name]

        cache_path = Path(request["timing_cache"]) if request["timing_cache"] else None
        cache = rt._timing_cache(backend, cache_path) if cache_path is not None else None
        entry = rt.build_engine(backend, component, request["arch"], dims, Path(request["out"]), request["plugins"],
                                cache)  # fmt: skip
        if cache is not None and cache_path is not None:
            rt._write_atomically(cache_path, bytes(memoryview(cache.serialize())))
    except EdgeAttnError as err:
        print(json.dumps({"error": str(err)}))
        return 1
    print(json.dumps({"entry": entry, "dims": {k: v.to_json() for k, v in used.items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
