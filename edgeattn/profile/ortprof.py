"""onnxruntime's own profiler: where the time of the profiled runs went, by op type, site and node.

A session made with `enable_profiling` writes one JSON list of trace events (Chrome's format): a
`model_run` event (cat "Session") per `run` call, and a `<node>_kernel_time` event (cat "Node", with
`args.op_name`) per node executed. Two things keep the sum of node times honest:

- a node inside a control-flow node's subgraph (the Scan of SkipSoftmaxAttention's body, a Loop, an If)
  has its own event, inside the interval of its parent's: each node counts its *self* time (its
  duration less that of the nodes nested in it), so nothing is counted twice;
- the warm-up calls are left out (the first `warmup_calls` `model_run` events and the nodes in them).

What the node times do not cover (the executor between nodes, the profiler writing its events, the
Python around `run`) is reported as the coverage: node time / wall time of the profiled calls.
"""

from __future__ import annotations

import bisect
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from edgeattn.profile.settings import ProfileError

# A profile file is written by this process, but its size grows with nodes x runs: refuse to parse one
# that could not fit in memory (onnxruntime also stops recording at its own event limit).
MAX_PROFILE_BYTES = 2 * 1024**3
KERNEL_SUFFIX = "_kernel_time"


@dataclass
class RoleTimes:
    """The measured calls of one role (a component: "model", "vision", "decoder prefill", ...)."""

    calls: int = 0
    wall_ms: float = 0.0  # Python-measured time around `run`, summed over the calls
    run_ms: float = 0.0  # onnxruntime's model_run durations, summed
    nodes: dict[str, list[Any]] = field(default_factory=dict)  # node name -> [op type, self ms]

    @property
    def nodes_ms(self) -> float:
        return sum(ms for _, ms in self.nodes.values())


@dataclass
class SessionProfile:
    """The profile of one session's measured calls, per role; `missing` calls had no model_run event."""

    roles: dict[str, RoleTimes]
    missing: int = 0


def read_events(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    size = path.stat().st_size
    if size > MAX_PROFILE_BYTES:
        raise ProfileError(f"onnxruntime's profile {path.name} is {size} bytes, too large to read; use fewer "
                           "--profile-runs or shorter --lengths")
    with path.open("r", encoding="utf-8") as handle:
        events = json.load(handle)
    if not isinstance(events, list):
        raise ProfileError(f"onnxruntime's profile {path.name} is not a list of events")
    return [e for e in events if isinstance(e, dict)]


def session_profile(events: Sequence[dict[str, Any]], warmup_calls: int,
                    calls: Sequence[tuple[str, float]]) -> SessionProfile:
    """Node self times of the measured calls (`calls`: role and wall ms of each, in order), per role."""
    runs = sorted((e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"),
                  key=lambda e: e["ts"])[warmup_calls:]
    measured = list(zip(runs, calls))
    starts = [run["ts"] for run, _ in measured]
    per_run: list[list[dict[str, Any]]] = [[] for _ in measured]
    for event in events:
        if event.get("cat") != "Node" or not str(event.get("name", "")).endswith(KERNEL_SUFFIX):
            continue
        index = bisect.bisect_right(starts, event["ts"]) - 1
        if index >= 0 and event["ts"] <= starts[index] + measured[index][0]["dur"]:
            per_run[index].append(event)
    roles: dict[str, RoleTimes] = {}
    for (run, (role, wall_ms)), nodes in zip(measured, per_run):
        times = roles.setdefault(role, RoleTimes())
        times.calls += 1
        times.wall_ms += wall_ms
        times.run_ms += run["dur"] / 1e3
        for event, self_us in self_times(nodes):
            name = event["name"][: -len(KERNEL_SUFFIX)]
            entry = times.nodes.setdefault(name, [str(event.get("args", {}).get("op_name", "?")), 0.0])
            entry[1] += self_us / 1e3
    return SessionProfile(roles, missing=len(calls) - len(measured))


def self_times(nodes: Sequence[dict[str, Any]]) -> list[tuple[dict[str, Any], float]]:
    """Each node event with its self time in µs: its duration less the durations of the events nested
    directly inside it (a subgraph's nodes inside their Scan/Loop/If)."""
    order = sorted(range(len(nodes)), key=lambda i: (nodes[i]["ts"], -nodes[i]["dur"]))
    own = [float(node["dur"]) for node in nodes]
    stack: list[int] = []  # open events, outermost first
    for i in order:
        start, end = nodes[i]["ts"], nodes[i]["ts"] + nodes[i]["dur"]
        while stack and nodes[stack[-1]]["ts"] + nodes[stack[-1]]["dur"] <= start:
            stack.pop()
        if stack and end <= nodes[stack[-1]]["ts"] + nodes[stack[-1]]["dur"]:
            own[stack[-1]] -= nodes[i]["dur"]
        stack.append(i)
    return [(node, max(0.0, t)) for node, t in zip(nodes, own)]


def breakdown(parts: Sequence[tuple[str, SessionProfile, Any]], runs: int, wall_ms: float,
              top: int = 10) -> dict[str, Any]:
    """One target's breakdown from its sessions' profiles (each named, with its `SiteMap`): per op type,
    site, component and node, in ms per measured run (`runs` of them, `wall_ms` their measured total).
    With several sessions, a site's label starts with its session's name ("vision: layer 0 Attention")."""
    op_types: dict[str, list[float]] = {}
    sites: dict[str, float] = {}
    nodes: list[dict[str, Any]] = []
    components = []
    missing = 0
    for session_name, profile, site_map in parts:
        missing += profile.missing
        prefix = f"{session_name}: " if len(parts) > 1 else ""
        for role, times in profile.roles.items():
            labels = site_map.label_all(times.nodes)
            for name, (op, ms) in times.nodes.items():
                entry = op_types.setdefault(op, [0.0, 0])
                entry[0] += ms
                entry[1] += 1
                label = labels.get(name)
                if label is not None:
                    label = prefix + label
                    sites[label] = sites.get(label, 0.0) + ms
                nodes.append({"node": name, "op": op, "site": label, "component": role, "ms": ms / runs})
            components.append(_component(role, times, runs))
    nodes_ms = sum(ms for ms, _ in op_types.values()) / runs
    wall = wall_ms / runs
    in_sites = sum(sites.values()) / runs
    result = {
        "profiled_runs": runs,
        "wall_ms": wall,
        "nodes_ms": nodes_ms,
        "coverage": nodes_ms / wall if wall > 0 else None,
        "outside_nodes_ms": wall - nodes_ms,
        "op_types": _shares([(op, ms / runs, {"nodes": count}) for op, (ms, count) in op_types.items()],
                            "op", nodes_ms),
        "sites": _shares([(label, ms / runs, {}) for label, ms in sites.items()], "site", nodes_ms),
        "outside_sites_ms": nodes_ms - in_sites,
        "components": components,
        "top_nodes": [{**n, "share": n["ms"] / nodes_ms if nodes_ms else 0.0}
                      for n in sorted(nodes, key=lambda n: -n["ms"])[:top]],
    }
    if missing:
        result["missing_calls"] = missing
    return result


def _component(role: str, times: RoleTimes, runs: int) -> dict[str, Any]:
    nodes_ms = times.nodes_ms
    return {"component": role, "calls_per_run": times.calls / runs, "wall_ms": times.wall_ms / runs,
            "onnxruntime_run_ms": times.run_ms / runs, "nodes_ms": nodes_ms / runs,
            "coverage": nodes_ms / times.wall_ms if times.wall_ms > 0 else None}


def _shares(items: list[tuple[str, float, dict[str, Any]]], key: str, total: float) -> list[dict[str, Any]]:
    rows = [{key: name, "ms": ms, "share": ms / total if total > 0 else 0.0, **extra} for name, ms, extra in items]
    return sorted(rows, key=lambda row: -row["ms"])


__all__ = ["KERNEL_SUFFIX", "RoleTimes", "SessionProfile", "breakdown", "read_events", "self_times",
           "session_profile"]
