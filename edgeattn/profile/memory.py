"""Peak memory of one target, measured in a child process of its own so targets do not mask each other.

The child (``python -m edgeattn.profile.memory``, a JSON request on stdin) imports what a run needs,
notes its resident memory (the baseline: Python, numpy, onnxruntime), loads the target's sessions, runs
two requests (a first one, and a warm one), and reports the peak resident set size of its whole life
(`getrusage(RUSAGE_SELF).ru_maxrss`) on stdout. `growth_mib` = peak - baseline is what loading and
running the target cost; `peak_mib` includes the interpreter's own ~100 MiB.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from dataclasses import asdict
from typing import Any

from edgeattn.profile.workloads import Config, Settings

# A child that has not answered by then is stuck, not slow: every target here runs in seconds to minutes.
CHILD_TIMEOUT_S = 1800
MAX_ANSWER_BYTES = 1 << 16


def measure_memory(path: str, label: str, config: Config, settings: Settings, ids: list[int] | None) -> dict[str, Any]:
    """Run the child for one target and configuration; an `error` entry (one line) if it failed."""
    request = {"path": path, "label": label, "config": asdict(config), "settings": asdict(settings), "ids": ids}
    try:
        done = subprocess.run([sys.executable, "-m", "edgeattn.profile.memory"], input=json.dumps(request),
                              capture_output=True, text=True, timeout=CHILD_TIMEOUT_S, env=os.environ.copy())
    except subprocess.TimeoutExpired:
        return {"error": f"the memory measurement took longer than {CHILD_TIMEOUT_S} s and was stopped"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines or len(lines[-1]) > MAX_ANSWER_BYTES:
        tail = " ".join(done.stderr.split())[-300:]
        return {"error": f"the memory measurement failed (exit {done.returncode}): {tail}"}
    answer = json.loads(lines[-1])
    return answer if isinstance(answer, dict) else {"error": "the memory measurement answered no object"}


def resident_mib() -> float:
    """This process's resident set size now (Linux /proc), else its peak so far."""
    try:
        with open("/proc/self/statm", encoding="ascii") as handle:
            pages = int(handle.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return peak_mib()


def peak_mib() -> float:
    """The peak resident set size of this process (ru_maxrss: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def _child() -> None:
    import numpy  # noqa: F401 - part of the baseline
    import onnxruntime  # noqa: F401 - part of the baseline

    import edgeattn.graphs.session  # noqa: F401 - part of the baseline (onnx, onnx-ir)
    import edgeattn.runtime.generate  # noqa: F401 - part of the baseline
    from edgeattn.profile.targets import open_target
    from edgeattn.profile.workloads import build_workload

    request = json.loads(sys.stdin.read(MAX_ANSWER_BYTES * 64))
    baseline = resident_mib()
    target = open_target(request["path"], request["label"])
    workload = build_workload(target, Config(**request["config"]), Settings(**request["settings"]), request["ids"])
    loaded = resident_mib()
    for _ in range(2):
        workload.run()
    peak = peak_mib()
    print(json.dumps({"baseline_mib": round(baseline, 1), "loaded_mib": round(loaded, 1), "peak_mib": round(peak, 1),
                      "growth_mib": round(peak - baseline, 1), "method": "child process, ru_maxrss"}))


if __name__ == "__main__":
    _child()


__all__ = ["measure_memory", "peak_mib", "resident_mib"]
