"""`profile(targets, options)`: latency statistics, A/B ratios, onnxruntime's breakdown and peak memory.

For each configuration (a length of --lengths, or the real --prompt / --image):

1. timing: every target is loaded, then measured in interleaved rounds (A B A B ...) after the warm-up
   rounds; statistics per metric, throughput, and the ratio of every target to the first (the median of
   per-round ratios);
2. breakdown: each target again, in sessions made with onnxruntime's profiler on, for --profile-runs
   runs after the warm-up, so the profiler's overhead never enters the timings of step 1;
3. memory: each target in a child process of its own (`memory.py`).

The record (one JSON-able dict) holds the environment (onnxruntime version, provider, threads, machine,
date), the options, and per configuration the results, the comparison and the breakdowns.
"""

from __future__ import annotations

import datetime
import os
import platform
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterator, Sequence

import numpy as np

from edgeattn.profile.measure import compare, interleaved, metric_series, summarize
from edgeattn.profile.ortprof import breakdown, read_events, session_profile
from edgeattn.profile.settings import DEFAULT_LENGTHS, ProfileError, ProfileOptions, resolve_threads
from edgeattn.profile.sites import SiteMap
from edgeattn.profile.targets import Target, open_targets
from edgeattn.profile.workloads import Config, Settings, Workload, build_workload, check_fits, request_ids

FORMAT = "edgeattn.profile/1"
# The node times of a profiled run should explain its wall time within this fraction (the check).
COVERAGE_TOLERANCE = 0.15
METRIC_ORDER = ("request", "ttft", "tpot", "vision", "embed", "decoder prefill", "decoder step", "run")
# progress(description, total steps or None) -> a context whose value advances the bar by one step.
Progress = Callable[[str, "int | None"], ContextManager[Callable[[], None]]]


def profile(paths: Sequence[str], options: ProfileOptions, progress: Progress | None = None) -> dict[str, Any]:
    """Measure `paths` (exported folders or ONNX files) as the module docstring says; the first is the
    baseline of the comparison."""
    options.check()
    settings = Settings(resolve_threads(options.threads), options.provider, options.max_new_tokens, options.seed)
    _check_provider(options.provider)
    targets = open_targets(paths)
    configs = plan_configs(targets, options)
    record: dict[str, Any] = {
        "format": FORMAT,
        "environment": environment(settings),
        "options": {"warmup": options.warmup, "runs": options.runs, "profile_runs": options.profile_runs,
                    "max_new_tokens": options.max_new_tokens, "seed": options.seed, "memory": options.memory},
        "targets": [{"label": t.label, "path": str(t.path), "kind": t.kind, "primary": t.primary} for t in targets],
        "configs": [],
    }
    plan = [(config, [request_ids(t, config, settings) for t in targets]) for config in configs]
    for config, ids in plan:  # every refusal before the first measurement
        for target, target_ids in zip(targets, ids):
            check_fits(target, config, settings, target_ids)
    site_maps: dict[Path, SiteMap] = {}
    for config, ids in plan:
        record["configs"].append(_measure_config(targets, config, ids, settings, options, progress, site_maps))
    return record


def plan_configs(targets: Sequence[Target], options: ProfileOptions) -> list[Config]:
    """The configurations to measure; ProfileError for flags the targets cannot take."""
    kinds = {t.kind for t in targets}
    files = [t.label for t in targets if t.kind == "onnx"]
    if options.prompt is not None and (files or "vision" in kinds):
        which = (files or [t.label for t in targets if t.kind == "vision"])[0]
        raise ProfileError(f"--prompt needs exported folders of a language model or text encoder (with their "
                           f"tokenizer); {which} has none: leave --prompt out and use --lengths")
    if options.prompt is not None and options.lengths is not None:
        raise ProfileError("--prompt and --lengths both set the prompt length; give one of them")
    if options.image is not None and (files or kinds & {"decoder", "encoder"}):
        which = next(t.label for t in targets if t.kind in ("onnx", "decoder", "encoder"))
        raise ProfileError(f"--image needs VLM or vision folders; {which} takes no image")
    if options.past and len(files) != len(targets):
        raise ProfileError("--past sets the KV-cache length of an ONNX file's past_key_values inputs; exported "
                           "folders build their own cache per request")
    if options.prompt is not None:
        return [Config("prompt", None, options.batch, options.past, options.prompt, options.image)]
    if kinds == {"vision"}:
        if options.lengths is not None:
            raise ProfileError("--lengths sets token counts; vision folders take an image (--image, or a generated "
                               "one)")
        return [Config("image", None, options.batch, 0, None, options.image)]
    configs = []
    for length in options.lengths or DEFAULT_LENGTHS:
        name = f"L={length}" + (f" B={options.batch}" if options.batch > 1 else "") + (
            f" past={options.past}" if options.past else "")
        configs.append(Config(name, length, options.batch, options.past, None, options.image))
    return configs


def _measure_config(targets: Sequence[Target], config: Config, ids: list[list[int] | None], settings: Settings,
                    options: ProfileOptions, progress: Progress | None,
                    site_maps: dict[Path, SiteMap]) -> dict[str, Any]:
    with _step(progress, f"{config.name}: loading {len(targets)} target(s)", None):
        workloads = [build_workload(t, config, settings, i) for t, i in zip(targets, ids)]
    steps = (options.warmup + options.runs) * len(workloads)
    title = f"{config.name}: {options.warmup} warm-up + {options.runs} rounds, interleaved"
    with _step(progress, title, steps) as tick:
        rounds = interleaved([w.run for w in workloads], options.warmup, options.runs, tick)
    results = [target_result(t, w, r) for t, w, r in zip(targets, workloads, rounds)]
    del workloads  # free the sessions before the profiled ones are made
    out: dict[str, Any] = {"name": config.name, "length": config.length, "batch": config.batch, "past": config.past,
                           "prompt": config.prompt is not None, "image": config.image, "results": results,
                           "comparison": comparisons(targets, results)}
    for target, result, target_ids in zip(targets, results, ids):
        if options.profile_runs:
            result["breakdown"] = profiled_breakdown(target, config, settings, target_ids, options, result,
                                                     progress, site_maps)
        if options.memory:
            from edgeattn.profile.memory import measure_memory

            with _step(progress, f"{config.name}: peak memory of {target.label} (child process)", None):
                result["memory"] = measure_memory(str(target.path), target.label, config, settings, target_ids)
    return out


def target_result(target: Target, workload: Workload, rounds: list[dict[str, float]]) -> dict[str, Any]:
    """Statistics of every metric all rounds have, the rounds themselves, and throughput."""
    names = [m for m in METRIC_ORDER if any(m in r for r in rounds)]
    series = {m: s for m in names if (s := metric_series(rounds, m)) is not None}
    info = workload.info()
    metrics = {m: summarize(values) for m, values in series.items()}
    return {"target": target.label, "kind": target.kind, "primary": target.primary, **info,
            "metrics": metrics, "rounds": series, "throughput": throughput(metrics, info)}


def throughput(metrics: dict[str, dict[str, float]], info: dict[str, Any]) -> dict[str, float]:
    """Per second, at the median: runs (or requests), and tokens where tokens make sense."""
    out: dict[str, float] = {}
    if "run" in metrics and metrics["run"]["median"] > 0:
        out["runs_per_s"] = 1e3 / metrics["run"]["median"]
        if info.get("tokens_per_run"):
            out["tokens_per_s"] = info["tokens_per_run"] * out["runs_per_s"]
    if "request" in metrics and metrics["request"]["median"] > 0:
        out["requests_per_s"] = 1e3 / metrics["request"]["median"]
    if "ttft" in metrics and metrics["ttft"]["median"] > 0 and info.get("prompt_tokens"):
        out["prefill_tokens_per_s"] = info["prompt_tokens"] * 1e3 / metrics["ttft"]["median"]
    if "tpot" in metrics and metrics["tpot"]["median"] > 0:
        out["decode_tokens_per_s"] = 1e3 / metrics["tpot"]["median"]
    return out


def comparisons(targets: Sequence[Target], results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every target after the first against the first, round by round, on every metric both have."""
    if len(results) < 2:
        return []
    base = results[0]
    out = []
    for target, result in zip(targets[1:], results[1:]):
        shared = [m for m in result["rounds"] if m in base["rounds"]]
        per_metric = {m: compare(base["rounds"][m], result["rounds"][m]) for m in shared}
        primary = target.primary
        headline = per_metric[primary]
        out.append({"baseline": base["target"], "target": result["target"], "metric": primary, **headline,
                    "metrics": {m: {"ratio": c["ratio"], "speedup": c["speedup"]} for m, c in per_metric.items()}})
    return out


def profiled_breakdown(target: Target, config: Config, settings: Settings, ids: list[int] | None,
                       options: ProfileOptions, result: dict[str, Any], progress: Progress | None,
                       site_maps: dict[Path, SiteMap]) -> dict[str, Any]:
    """onnxruntime's breakdown of `target` from --profile-runs runs in profiled sessions (after warm-up)."""
    steps = options.warmup + options.profile_runs
    with tempfile.TemporaryDirectory(prefix="edgeattn-profile-") as folder, \
            _step(progress, f"{config.name}: onnxruntime profiler on {target.label}", steps) as tick:
        workload = build_workload(target, config, settings, ids, profile_dir=Path(folder))
        for _ in range(options.warmup):
            workload.run()
            tick()
        for session in workload.sessions:
            session.mark()
        walls = []
        for _ in range(options.profile_runs):
            walls.append(workload.run()[target.primary])
            tick()
        parts = []
        for session in workload.sessions:
            events = read_events(session.end_profiling())
            if session.path not in site_maps:
                site_maps[session.path] = SiteMap.from_onnx(session.path)
            parts.append((session.component, session_profile(events, session.warmup_calls, session.calls),
                          site_maps[session.path]))
    out = breakdown(parts, options.profile_runs, float(np.sum(walls)))
    median = result["metrics"][target.primary]["median"]
    out["profiler_overhead"] = out["wall_ms"] / median if median > 0 else None
    out["note"] = coverage_note(out)
    return out


def coverage_note(part: dict[str, Any]) -> str | None:
    """Why node times may not add up to the wall time, when they do not (None when they do)."""
    coverage = part["coverage"]
    if coverage is None or abs(coverage - 1) <= COVERAGE_TOLERANCE:
        return None
    if coverage < 1:
        return (f"the nodes' times cover {coverage:.0%} of the profiled wall time: at this size the time between "
                "nodes (onnxruntime's executor, and its profiler writing an event per node) is a large part of "
                "each run; the shares describe node time only; longer --lengths let the kernels dominate")
    return (f"the nodes' times add up to {coverage:.0%} of the profiled wall time: nodes ran concurrently "
            "(inter-op parallelism), so their times overlap")


def environment(settings: Settings) -> dict[str, Any]:
    """What the numbers were measured on and with."""
    import onnxruntime as ort

    from edgeattn.version import __version__

    return {
        "edgeattn": __version__,
        "onnxruntime": ort.__version__,
        "provider": settings.provider,
        "threads": settings.threads,
        "threads_meaning": "intra-op threads" if settings.threads else
        "onnxruntime's default intra-op threads (one per physical core)",
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "processor": _processor(),
        "system": platform.platform(),
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def _processor() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _check_provider(provider: str) -> None:
    import onnxruntime as ort

    available = ort.get_available_providers()
    if provider not in available:
        raise ProfileError(f"onnxruntime provider {provider} is not available here; available: {', '.join(available)}")


@contextmanager
def _quiet() -> Iterator[Callable[[], None]]:
    yield lambda: None


def _step(progress: Progress | None, description: str, total: int | None) -> ContextManager[Callable[[], None]]:
    return progress(description, total) if progress is not None else _quiet()


__all__ = ["COVERAGE_TOLERANCE", "FORMAT", "Progress", "comparisons", "coverage_note", "environment", "plan_configs",
           "profile", "profiled_breakdown", "target_result", "throughput"]
