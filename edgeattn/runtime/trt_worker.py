"""One engine build in a child process, so that a crash inside TensorRT ends the child and not the command.

TensorRT's builder is native code: on some graphs it aborts or segfaults instead of returning an error
(TensorRT-RTX 1.7 segfaults building the half-precision function body of some rewritten vision attention,
measured on demo:tiny-vit). `edgeattn compile` builds each engine in `python -m edgeattn.runtime.trt_worker`,
which reads one JSON request on stdin (`tensorrt.request_for`) and writes the compile.json entry on stdout;
the parent (`tensorrt.build_in_child`) turns a child that dies by a signal into one line naming the
component, the signal and what to try.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from edgeattn.errors import EdgeAttnError

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
