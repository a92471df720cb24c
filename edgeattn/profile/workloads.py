"""One target in one configuration, ready to run: the sessions it needs and the inputs it feeds.

- `SessionWorkload`: one onnxruntime call per run (an ONNX file, an encoder or vision folder); its metric
  is `run`.
- `RequestWorkload`: one generation request per run over a decoder or VLM folder, through the runtime's
  own `DecoderRunner` (unchanged); its metrics are the whole `request`, `ttft`, `tpot` and the time in
  each component (`vision`, `embed`, `decoder prefill`, `decoder step` per step).

Every session is wrapped in a `TimedSession` that records the wall time and the role of each call, so
a run splits into components and a profiled run's onnxruntime events map back to the call they came from.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeattn.profile.inputs import Dims, declared_shape, generated_ids, generated_pixels, prompt_ids, session_feeds
from edgeattn.profile.settings import DEFAULT_PROVIDER, ProfileError
from edgeattn.profile.targets import Target


@dataclass(frozen=True)
class Settings:
    """How sessions run and what a request generates (the same for every target)."""

    threads: int | None = None
    provider: str = DEFAULT_PROVIDER
    max_new_tokens: int = 8
    seed: int = 0


@dataclass(frozen=True)
class Config:
    """One measured configuration: a generated length, or the real --prompt / --image."""

    name: str
    length: int | None  # None: the prompt's own length
    batch: int = 1
    past: int = 0
    prompt: str | None = None
    image: str | None = None

    @property
    def dims(self) -> Dims:
        return Dims(self.batch, self.length or 1, self.past)


def open_session(path: Path, settings: Settings, profile_prefix: str | None = None) -> Any:
    """An onnxruntime session on `path`, profiled (see `session_from_onnx`) with `profile_prefix`."""
    from edgeattn.graphs.session import session_from_onnx

    return session_from_onnx(path, providers=[settings.provider], threads=settings.threads,
                             profile_prefix=profile_prefix)


class TimedSession:
    """An onnxruntime session that records (role, wall ms) of each `run`; everything else passes through.
    The first call after `start_request` takes `first_role` (a decoder's prefill), later ones `role`."""

    def __init__(self, session: Any, path: Path, component: str, role: str | None = None,
                 first_role: str | None = None) -> None:
        self.session, self.path, self.component = session, path, component
        self.role, self.first_role = role or component, first_role
        self.calls: list[tuple[str, float]] = []  # since the last `forget` (all of them after `mark`)
        self.warmup_calls = 0  # calls before `mark`: warm-up, left out of a profile
        self.recording = False
        self._fresh = True

    def run(self, *args: Any, **kwargs: Any) -> Any:
        role = self.first_role if self._fresh and self.first_role else self.role
        self._fresh = False
        start = time.perf_counter()
        try:
            out = self.session.run(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - onnxruntime's Fail/InvalidArgument/... derive from Exception only
            if not type(err).__module__.startswith("onnxruntime"):
                raise
            from edgeattn.graphs.session import one_line

            raise ProfileError(f"onnxruntime failed to run {self.path.name} ({type(err).__name__}: "
                               f"{one_line(err, 240)}); "
                               "the model may not take these shapes: try other --lengths, --batch or --past") from None
        self.calls.append((role, (time.perf_counter() - start) * 1e3))
        return out

    def start_request(self) -> None:
        """A new request begins: forget earlier calls (unless recording), the next call is the first."""
        self._fresh = True
        if not self.recording:  # timing thousands of requests keeps no list of every call
            self.warmup_calls += len(self.calls)
            self.calls = []

    def mark(self) -> None:
        """From here on every call is kept (for a profile): the ones before are warm-up."""
        self.warmup_calls += len(self.calls)
        self.calls = []
        self.recording = True

    def __getattr__(self, name: str) -> Any:
        return getattr(self.session, name)


@dataclass
class SessionWorkload:
    """One session call per run."""

    session: TimedSession
    feeds: dict[str, np.ndarray]
    inputs: dict[str, list[int]]
    tokens: int | None  # tokens per run (batch x length) where an input has a sequence axis
    primary: str = "run"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def sessions(self) -> list[TimedSession]:
        return [self.session]

    def run(self) -> dict[str, float]:
        self.session.start_request()
        start = time.perf_counter()
        self.session.run(None, self.feeds)
        return {"run": (time.perf_counter() - start) * 1e3}

    def info(self) -> dict[str, Any]:
        return {"inputs": self.inputs, "tokens_per_run": self.tokens, **self.extra}


@dataclass
class RequestWorkload:
    """One greedy generation request per run (`DecoderRunner.generate`)."""

    runner: Any
    ids: list[int]
    pixels: np.ndarray | None
    max_new_tokens: int
    generated: list[int] = field(default_factory=list)
    primary: str = "request"

    @property
    def sessions(self) -> list[TimedSession]:
        return [s for s in (self.runner.vision, self.runner.embed, self.runner.decoder) if s is not None]

    def run(self) -> dict[str, float]:
        for session in self.sessions:
            session.start_request()
        starts = {id(s): len(s.calls) for s in self.sessions}
        start = time.perf_counter()
        gen = self.runner.generate(self.ids, self.max_new_tokens, self.pixels)
        metrics = {"request": (time.perf_counter() - start) * 1e3, "ttft": gen.ttft_ms}
        if len(gen.tokens) > 1:
            metrics["tpot"] = gen.tpot_ms
        self.generated.append(len(gen.tokens))
        by_role: dict[str, list[float]] = {}
        for session in self.sessions:
            for role, ms in session.calls[starts[id(session)]:]:
                by_role.setdefault(role, []).append(ms)
        for role, times in by_role.items():
            metrics[role] = float(np.mean(times)) if role == "decoder step" else float(np.sum(times))
        return metrics

    def info(self) -> dict[str, Any]:
        return {"prompt_tokens": len(self.ids), "max_new_tokens": self.max_new_tokens,
                "image": self.pixels is not None, "generated_tokens": sorted(set(self.generated))}


Workload = SessionWorkload | RequestWorkload


def request_ids(target: Target, config: Config, settings: Settings) -> list[int] | None:
    """The token ids a folder target is fed: the --prompt tokenized (with a VLM's image tokens in front),
    or generated ids of the configuration's length; None for ONNX files and vision folders."""
    manifest = target.manifest
    if manifest is None or target.kind == "vision":
        return None
    if config.prompt is not None:
        ids = prompt_ids(target.path, manifest, config.prompt)
    else:
        vocab = manifest.decoder.vocab_size if manifest.decoder is not None else _encoder_vocab(manifest)
        avoid = [manifest.image_token_id] if manifest.image_token_id is not None else []
        ids = generated_ids(int(config.length or 1), vocab, settings.seed, avoid)
    if target.kind == "vlm":
        ids = [int(manifest.image_token_id)] * int(manifest.image_token_count) + ids
    return ids


def build_workload(target: Target, config: Config, settings: Settings, ids: list[int] | None = None,
                   profile_dir: Path | None = None) -> Workload:
    """The workload of `target` in `config`; with `profile_dir`, its sessions run under the profiler."""
    check_fits(target, config, settings, ids)
    if target.kind in ("decoder", "vlm"):
        return _request_workload(target, config, settings, ids, profile_dir)
    if target.kind == "onnx":
        return _session_workload(target.path, target.label, "model", config, settings, None, None, profile_dir)
    manifest = target.manifest
    assert manifest is not None
    component = "encoder" if target.kind == "encoder" else "vision"
    given = _encoder_inputs(ids, config.batch) if component == "encoder" else _vision_inputs(target, config, settings)
    return _session_workload(target.path / manifest.file_of(component), target.label, component, config, settings,
                             given, _encoder_vocab(manifest), profile_dir)


def check_fits(target: Target, config: Config, settings: Settings, ids: list[int] | None) -> None:
    """ProfileError (one line) when `target` cannot run `config`: a batch or past a folder does not take, a
    prompt longer than its positions, a bf16 folder; checked for every target before any is measured."""
    manifest = target.manifest
    if manifest is None:
        return
    from edgeattn.runtime.generate import check_generation_length, position_limit
    from edgeattn.runtime.precision import check_runnable_dtype

    check_runnable_dtype(manifest, target.path)
    if config.past:
        raise ProfileError(f"--past applies to ONNX files; {target.label} builds its own KV cache per request")
    if target.kind in ("decoder", "vlm"):
        if config.batch != 1:
            raise ProfileError(f"{target.label} generates one request at a time; --batch applies to ONNX files and "
                               "to encoder or vision folders")
        assert ids is not None
        check_generation_length(len(ids), settings.max_new_tokens, position_limit(manifest, "decoder"))
    elif target.kind == "encoder":
        _check_encoder_length(target, len(ids) if ids is not None else config.dims.length)


def _session_workload(path: Path, label: str, component: str, config: Config, settings: Settings,
                      given: dict[str, np.ndarray] | None, vocab: int | None,
                      profile_dir: Path | None) -> SessionWorkload:
    prefix = str(profile_dir / component) if profile_dir is not None else None
    session = open_session(path, settings, prefix)
    declared = session.get_inputs()
    given = {name: value for name, value in (given or {}).items() if name in {arg.name for arg in declared}}
    dims = Dims(config.batch, config.length or 1, config.past)
    if "input_ids" in given:  # a tokenized prompt sets the length
        dims = Dims(given["input_ids"].shape[0], given["input_ids"].shape[1], 0)
    feeds = session_feeds(session, dims, settings.seed, vocab, given, where=label)
    inputs = {name: list(value.shape) for name, value in feeds.items()}
    uses_length = any("length" in declared_shape(arg, dims)[1] for arg in declared)
    tokens = dims.batch * dims.length if uses_length else None
    return SessionWorkload(TimedSession(session, path, component), feeds, inputs, tokens,
                           extra={"providers": list(session.get_providers())})


def _request_workload(target: Target, config: Config, settings: Settings, ids: list[int] | None,
                      profile_dir: Path | None) -> RequestWorkload:
    from edgeattn.runtime.generate import DecoderRunner

    manifest = target.manifest
    assert manifest is not None and ids is not None
    pixels = _request_pixels(target, config, settings)
    runner = DecoderRunner(target.path, manifest, threads=settings.threads)
    comps = manifest.components
    replace = profile_dir is not None or settings.provider != DEFAULT_PROVIDER
    for name in ("vision", "embed", "decoder"):
        session = getattr(runner, name)
        if session is None:
            continue
        path = target.path / comps[name].file
        if replace:  # sessions of the provider asked for, or under the profiler
            session = open_session(path, settings, str(profile_dir / name) if profile_dir is not None else None)
        roles = ("decoder step", "decoder prefill") if name == "decoder" else (name, None)
        setattr(runner, name, TimedSession(session, path, name, *roles))
    return RequestWorkload(runner, ids, pixels, settings.max_new_tokens)


def _request_pixels(target: Target, config: Config, settings: Settings) -> np.ndarray | None:
    manifest = target.manifest
    assert manifest is not None
    if target.kind != "vlm":
        if config.image is not None:
            raise ProfileError(f"--image needs a VLM or a vision folder; {target.label} holds a text-only decoder")
        return None
    return _pixels(manifest, config.image, 1, settings.seed)


def _vision_inputs(target: Target, config: Config, settings: Settings) -> dict[str, np.ndarray]:
    manifest = target.manifest
    assert manifest is not None
    return {"pixel_values": _pixels(manifest, config.image, config.batch, settings.seed)}


def _pixels(manifest: Any, image: str | None, batch: int, seed: int) -> np.ndarray:
    from edgeattn.runtime.precision import float_array_type

    dtype = float_array_type(manifest)
    if image is None:
        return generated_pixels(batch, manifest.vision.image_size, seed).astype(dtype, copy=False)
    from edgeattn.runtime.images import load_image, pixel_values

    pixels = pixel_values(load_image(image), manifest.vision.preprocess())
    return np.repeat(pixels, batch, axis=0).astype(dtype, copy=False)


def _check_encoder_length(target: Target, length: int) -> None:
    """An encoder has a fixed number of positions: the manifest's record, else its tokenizer's limit."""
    from edgeattn.profile.inputs import load_tokenizer
    from edgeattn.runtime.generate import position_limit

    manifest = target.manifest
    limit = position_limit(manifest, "encoder")
    if limit is None and manifest is not None and manifest.tokenizer:
        limit = position_limit(manifest, "encoder", load_tokenizer(target.path, manifest))
    if limit is not None and length > limit:
        raise ProfileError(f"{target.label} takes at most {limit} tokens; the configuration has {length}: use shorter "
                           "--lengths or a shorter --prompt")


def _encoder_inputs(ids: list[int] | None, batch: int) -> dict[str, np.ndarray] | None:
    if ids is None:
        return None
    rows = np.asarray([ids] * batch, dtype=np.int64)
    return {"input_ids": rows, "attention_mask": np.ones_like(rows), "token_type_ids": np.zeros_like(rows)}


def _encoder_vocab(manifest: Any) -> int | None:
    value = (manifest.encoder or {}).get("vocab_size")
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


__all__ = ["Config", "RequestWorkload", "SessionWorkload", "Settings", "TimedSession", "Workload", "build_workload",
           "check_fits", "open_session", "request_ids"]
