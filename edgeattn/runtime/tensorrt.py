"""TensorRT engines from an exported folder or one ONNX file (what `edgeattn compile` runs).

One engine per component, built by full TensorRT (`import tensorrt`, >= 10) where it is installed, else by
TensorRT-RTX (`import tensorrt_rtx`), which builds on a machine without a GPU for the compute capabilities
it is given (no --arch: a portable engine, compiled for the GPU when it first runs). Each engine gets one
optimization profile over the symbolic dims of its inputs (names from the manifest or the ONNX file,
ranges from defaults or --shapes). Standard `Attention` nodes are marked `TRT_decomposable` in the
copy TensorRT parses (in float32 TensorRT has no fused kernel for them and refuses them otherwise).

Every TensorRT import happens inside a function: this module imports without TensorRT. Nothing here writes
outside the folder it is given (the CLI stages it and renames it into place).

What an engine holds is listed from the parsed network (each layer with the edgeattn node whose function
body or plugin it comes from, read from the layer metadata the ONNX parser writes) and, where the engine
can be deserialized (a CUDA device is present), from TensorRT's engine inspector as well.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ContextManager, Mapping, Sequence

from edgeattn.errors import EdgeAttnError, RuntimeUnavailableError

BACKENDS: dict[str, str] = {"tensorrt": "tensorrt", "tensorrt-rtx": "tensorrt_rtx"}  # --backend -> module
MIN_VERSION: dict[str, tuple[int, ...]] = {"tensorrt": (10, 0), "tensorrt-rtx": (1, 0)}
RTX_PIN = "tensorrt-rtx==1.7.1.116"
COMPILE_JSON = "compile.json"
FORMAT = "edgeattn.compile/1"
ENGINE_SUFFIX = ".engine"
PORTABLE, NATIVE = "portable", "native"
EDGEATTN = "edgeattn"
MAX_DIM = 1 << 20  # no profile dim beyond this: a typo, not a model
_INSTALL = f"install one: pip install {RTX_PIN} (builds without a GPU), or TensorRT >= 10 (pip install tensorrt)"


# -- the backend ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Backend:
    """A TensorRT Python module that can build engines: `tensorrt` or `tensorrt_rtx`."""

    name: str  # "tensorrt" or "tensorrt-rtx"
    module: Any
    version: str

    @property
    def rtx(self) -> bool:
        return self.name == "tensorrt-rtx"

    def describe(self) -> dict[str, str]:
        return {"name": self.name, "module": BACKENDS[self.name], "version": self.version}


def load_backend(name: str | None = None) -> Backend:
    """The backend `name` (None: full TensorRT where it imports, else TensorRT-RTX); RuntimeUnavailableError
    (one line: what is missing and how to install it) when it cannot build here."""
    if name is not None and name not in BACKENDS:
        raise EdgeAttnError(f"unknown backend {name!r}; choose one of: {', '.join(BACKENDS)}")
    names = [name] if name is not None else list(BACKENDS)
    missing = []
    for candidate in names:
        module = _import(BACKENDS[candidate])
        if module is None:
            missing.append(candidate)
            continue
        version = str(getattr(module, "__version__", "0"))
        if _version_tuple(version) < MIN_VERSION[candidate]:
            wanted = ".".join(map(str, MIN_VERSION[candidate]))
            raise RuntimeUnavailableError(f"{candidate} {version} is too old: edgeattn compile needs {candidate} >= "
                                          f"{wanted}; {_INSTALL}")
        if candidate == "tensorrt-rtx":
            check_rtx_parser_library()
        return Backend(candidate, module, version)
    if name is not None:
        raise RuntimeUnavailableError(f"backend {name} is not installed (no Python module "
                                      f"{BACKENDS[name]}); {_INSTALL}")
    raise RuntimeUnavailableError(f"no TensorRT is installed (neither tensorrt nor tensorrt_rtx imports); {_INSTALL}")


def _import(module: str) -> Any:
    try:
        if importlib.util.find_spec(module) is None:
            return None
        return importlib.import_module(module)
    except ImportError:
        return None


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def rtx_parser_library() -> Path | None:
    """Where TensorRT-RTX's ONNX parser looks for the unversioned `libtensorrt_rtx.so` (None when the
    `tensorrt_rtx_libs` package is not there)."""
    spec = importlib.util.find_spec("tensorrt_rtx_libs")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "libtensorrt_rtx.so"


def check_rtx_parser_library() -> None:
    """The TensorRT-RTX wheel ships `libtensorrt_rtx.so.1` only, and its ONNX parser dlopens
    `libtensorrt_rtx.so` when it meets a node it takes for a plugin: without the link that kills the process.
    Checked before anything is parsed."""
    library = rtx_parser_library()
    if library is None or library.exists():
        return
    raise RuntimeUnavailableError(
        f"TensorRT-RTX's ONNX parser needs {library} (the wheel ships only {library.name}.1); make it with: "
        f"ln -s {library.name}.1 {library}")


# -- targets -------------------------------------------------------------------------------------------


def parse_arch(text: str | None, backend: Backend) -> tuple[str, ...]:
    """--arch as canonical names ("sm_89", "native", "portable"); one line for a target the backend cannot
    build for."""
    if text is None or not text.strip():
        return (PORTABLE,) if backend.rtx else (NATIVE,)
    names = []
    for part in filter(None, (p.strip().lower() for p in text.split(","))):
        if part in (NATIVE, PORTABLE):
            names.append(part)
            continue
        found = re.fullmatch(r"(?:sm_?)?(\d{2,3})|(\d{1,2})\.(\d)", part)
        if found is None:
            raise EdgeAttnError(f"--arch {part!r} is not a compute capability; write sm_89 (or 8.9), native or "
                                "portable")
        digits = found.group(1) or f"{found.group(2)}{found.group(3)}"
        names.append(f"sm_{digits}")
    names = list(dict.fromkeys(names))
    special = [n for n in names if n in (NATIVE, PORTABLE)]
    if special and len(names) > 1:
        raise EdgeAttnError(f"--arch {special[0]} stands alone; name either it or compute capabilities")
    if not backend.rtx:
        if names != [NATIVE]:
            raise EdgeAttnError(f"full TensorRT {backend.version} builds for the GPU it runs on (--arch native); "
                                f"--arch {','.join(names)} needs --backend tensorrt-rtx")
        return (NATIVE,)
    if special:
        return tuple(names)
    known = rtx_capabilities(backend)
    for name in names:
        if name not in known:
            raise EdgeAttnError(f"TensorRT-RTX {backend.version} cannot build for {name}; it builds for "
                                f"{', '.join(sorted(known))} (or --arch portable)")
    return tuple(names)


def rtx_capabilities(backend: Backend) -> dict[str, Any]:
    """The compute capabilities this TensorRT-RTX targets: {"sm_89": ComputeCapability.SM89, ...}."""
    enum = backend.module.ComputeCapability
    return {f"sm_{name[2:]}": getattr(enum, name) for name in dir(enum) if re.fullmatch(r"SM\d+", name)}


# -- shapes --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DimRange:
    min: int
    opt: int
    max: int

    def to_json(self) -> list[int]:
        return [self.min, self.opt, self.max]


def parse_shapes(text: str | None) -> dict[str, DimRange]:
    """--shapes "batch=1/1/4,sequence=1/128/1024,past_sequence=0/128/1024" (a single value fixes the dim)."""
    from edgeattn.ranges import flag_items

    if text is None or not text.strip():
        return {}
    try:
        items = flag_items(text, "--shapes", text)
    except ValueError as err:
        raise EdgeAttnError(str(err)) from None
    ranges = {}
    for name, value in items:
        parts = value.split("/")
        if len(parts) not in (1, 3) or not all(re.fullmatch(r"\d{1,9}", p.strip()) for p in parts):
            raise EdgeAttnError(f"--shapes {name}={value!r}: write {name}=MIN/OPT/MAX or {name}=N (whole numbers)")
        numbers = [int(p) for p in parts] * (3 if len(parts) == 1 else 1)
        low, opt, high = numbers
        if not low <= opt <= high or high > MAX_DIM or high < 1:
            raise EdgeAttnError(f"--shapes {name}={value}: needs MIN <= OPT <= MAX, MAX from 1 to {MAX_DIM}")
        ranges[name] = DimRange(low, opt, high)
    return ranges


def default_ranges(longest: int | None) -> Callable[[str], DimRange]:
    """The range of a symbolic dim by its name: batch 1/1/4, past_* from 0, other lengths up to `longest`
    (the decoder's position count, at most 4096; 1024 when unknown)."""
    top = max(1, min(longest or 1024, 4096))
    opt = min(128, top)

    def pick(name: str) -> DimRange:
        if name == "batch":
            return DimRange(1, 1, 4)
        if name.startswith("past"):
            return DimRange(0, opt, top)
        return DimRange(1, opt, top)

    return pick


# -- what is compiled ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Component:
    name: str
    onnx: Path
    inputs: tuple[Mapping[str, Any], ...] = ()  # {name, dtype, shape} from the manifest, when there is one


@dataclass
class Source:
    path: Path
    components: list[Component]
    longest: int | None = None
    manifest: Any = None


def read_source(path: str | Path) -> Source:
    """An exported folder (its manifest's components, in order) or one .onnx file."""
    path = Path(path)
    if path.is_dir():
        from edgeattn.manifest import read_manifest

        manifest = read_manifest(path)
        components = [Component(name, path / entry.file, tuple(entry.inputs))
                      for name, entry in manifest.components.items()]
        longest = manifest.decoder.max_positions if manifest.decoder is not None else None
        return Source(path, components, longest, manifest)
    if not path.exists():
        raise EdgeAttnError(f"{str(path)!r} does not exist; give an exported folder or an .onnx file")
    if path.suffix != ".onnx":
        raise EdgeAttnError(f"{str(path)!r} is neither an exported folder (with manifest.json) nor an .onnx file")
    return Source(path, [Component(path.stem, path)])


# -- one engine ----------------------------------------------------------------------------------------


@dataclass
class Prepared:
    """An ONNX file as TensorRT will parse it: the serialized model and what edgeattn knows of it."""

    model: Any  # the onnx.ModelProto TensorRT parses (weights left in their external files)
    dim_names: dict[str, list[str | None]]  # input -> per-axis symbolic name (None: static or unnamed)
    edgeattn_nodes: list[dict[str, Any]]
    decomposable: int  # standard Attention nodes marked TRT_decomposable
    converted: int = 0  # edgeattn nodes brought from the onnxruntime form to the TensorRT form


def prepare_onnx(path: Path) -> Prepared:
    """Read `path` (external weights stay where they are), bring edgeattn nodes written for onnxruntime to
    the TensorRT form and mark the standard Attention nodes decomposable."""
    import onnx

    from edgeattn.graphs.attach import PLUGIN_NAMESPACE_ATTR

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # noqa: BLE001 - protobuf raises its own DecodeError, among others
        raise EdgeAttnError(f"{path.name} is not an ONNX model that loads: {type(err).__name__}: {err}") from None
    converted = 0
    if any(n.domain == EDGEATTN and PLUGIN_NAMESPACE_ATTR not in {a.name for a in n.attribute}
           for n in _all_nodes(model.graph)):
        model, converted = _to_trt_form(model, path)
    nodes: list[dict[str, Any]] = []
    decomposable = 0
    for node in _all_nodes(model.graph):
        if node.domain == EDGEATTN:
            nodes.append({"node": node.name, "op_type": node.op_type, "op": _op_name(node.op_type)})
        elif node.op_type == "Attention" and node.domain in ("", "ai.onnx") and \
                "TRT_decomposable" not in {a.name for a in node.attribute}:
            node.attribute.append(onnx.helper.make_attribute("TRT_decomposable", 1))
            decomposable += 1
    dims = {}
    for value in model.graph.input:
        shape = value.type.tensor_type.shape
        dims[value.name] = [d.dim_param or None for d in shape.dim]
    return Prepared(model, dims, nodes, decomposable, converted)


def _to_trt_form(proto: Any, path: Path) -> tuple[Any, int]:
    """The model with its edgeattn nodes in the TensorRT form (a file written for onnxruntime: `export
    --prune` or `--rewrite` without --target trt); GraphError (one line) when a node cannot take it."""
    import onnx_ir as ir

    from edgeattn.errors import GraphError
    from edgeattn.graphs.attach import attach_bodies
    from edgeattn.graphs.pipeline import finish_for_runtime
    from edgeattn.ops.registry import default_registry

    model = ir.serde.deserialize_model(proto)
    try:
        count = attach_bodies(model, "trt", default_registry())
    except GraphError as err:
        raise GraphError(f"{path.name} was written for onnxruntime and cannot take the TensorRT form: {err}") from None
    finish_for_runtime(model)
    return ir.serde.serialize_model(model), count


def _all_nodes(graph: Any) -> Any:
    for node in graph.node:
        yield node
        for attribute in node.attribute:
            if attribute.g.node:
                yield from _all_nodes(attribute.g)
            for sub in attribute.graphs:
                yield from _all_nodes(sub)


def _op_name(op_type: str) -> str:
    from edgeattn.graphs.attach import TRT_PREFIX
    from edgeattn.ops.registry import default_registry

    names = default_registry().names()
    base = op_type[len(TRT_PREFIX):] if op_type.startswith(TRT_PREFIX) else op_type
    if base in names:
        return base
    stem = base.rsplit("_", 1)[0]
    return stem if stem in names else op_type


def _logger(trt: Any) -> Any:
    """A TensorRT logger that prints nothing and keeps warnings and errors (for one-line messages)."""
    severity = trt.ILogger.Severity
    bad = (severity.ERROR, severity.INTERNAL_ERROR)

    class Logger(trt.ILogger):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.messages: list[tuple[Any, str]] = []

        def log(self, level: Any, msg: str) -> None:
            if level in (*bad, severity.WARNING):
                self.messages.append((level, msg))

        def errors(self) -> list[str]:
            return [m for level, m in self.messages if level in bad]

    return Logger()


def build_engine(backend: Backend, component: Component, arch: Sequence[str], dims: Callable[[str], DimRange],
                 out: Path, plugins: bool = True, timing_cache: Any = None) -> dict[str, Any]:
    """Parse, build and write `<component>.engine` into `out`; returns its compile.json entry."""
    from edgeattn.runtime import trt_plugins

    trt = backend.module
    prepared = prepare_onnx(component.onnx)
    longest = max((dims(name).max for name in _declared_dims(component, prepared)), default=None)
    data, plan = trt_plugins.plan_plugins(prepared.model, kernel_archs(arch), plugins, longest)
    logger = _logger(trt)
    builder = trt.Builder(logger)
    flags = 0
    if not backend.rtx and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)  # precision comes from the ONNX
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    parser.set_flag(trt.OnnxParserFlag.ENABLE_PLUGIN_OVERRIDE)  # a registered plugin wins over the local body
    creators = trt_plugins.register(trt, plan)
    try:
        if not parser.parse(data, str(component.onnx)):
            raise EdgeAttnError(f"{backend.name} {backend.version} cannot parse {component.onnx.name}: "
                                f"{_parser_error(parser)}")
        config = builder.create_builder_config()
        config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
        _set_arch(backend, config, arch)
        if timing_cache is not None:
            config.set_timing_cache(timing_cache, False)
        profile, shapes = _profile(builder, network, component, prepared, dims)
        config.add_optimization_profile(profile)
        started = time.perf_counter()
        serialized = builder.build_serialized_network(network, config)
        seconds = time.perf_counter() - started
    finally:
        trt_plugins.unregister(trt, creators)
    if serialized is None:
        reason = (logger.errors() or ["no reason given"])[-1]
        raise EdgeAttnError(f"{backend.name} {backend.version} could not build {component.onnx.name} for "
                            f"{','.join(arch)}: {reason}")
    engine_file = out / f"{component.name}{ENGINE_SUFFIX}"
    engine_file.write_bytes(memoryview(serialized))
    layers = network_layers(network)
    fields = {name: attrs for creator in creators for name, attrs in creator.created}
    return {
        "onnx": component.onnx.name,
        "file": engine_file.name,
        "bytes": engine_file.stat().st_size,
        "build_seconds": round(seconds, 3),
        "profiles": [shapes],
        "attention_marked_decomposable": prepared.decomposable,
        "converted_to_trt_form": prepared.converted,
        "layer_types": _count(layer["type"] for layer in layers),
        "layers": layers,
        "edgeattn_nodes": _edgeattn_summary(prepared.edgeattn_nodes, layers, plan, fields),
        "engine_layers": engine_layers(backend, bytes(memoryview(serialized))),
    }


def _parser_error(parser: Any) -> str:
    if parser.num_errors == 0:
        return "no reason given"
    error = parser.get_error(0)
    where = f"node {error.node_name()!r} ({error.node_operator()}): " if error.node_name() else ""
    more = f" (and {parser.num_errors - 1} more errors)" if parser.num_errors > 1 else ""
    return f"{where}{error.desc()}{more}"


def _set_arch(backend: Backend, config: Any, arch: Sequence[str]) -> None:
    if not backend.rtx or list(arch) == [PORTABLE]:
        return
    enum = backend.module.ComputeCapability
    targets = [enum.CURRENT] if list(arch) == [NATIVE] else [rtx_capabilities(backend)[name] for name in arch]
    config.num_compute_capabilities = len(targets)
    for index, target in enumerate(targets):
        config.set_compute_capability(target, index)


def _profile(builder: Any, network: Any, component: Component, prepared: Prepared,
             dims: Callable[[str], DimRange]) -> tuple[Any, dict[str, dict[str, list[int]]]]:
    manifest_dims = {entry.get("name"): entry.get("shape") for entry in component.inputs}
    profile = builder.create_optimization_profile()
    shapes: dict[str, dict[str, list[int]]] = {}
    for index in range(network.num_inputs):
        tensor = network.get_input(index)
        declared = manifest_dims.get(tensor.name) or prepared.dim_names.get(tensor.name) or []
        low, opt, high = [], [], []
        for axis, size in enumerate(tensor.shape):
            if size >= 0:
                low.append(size), opt.append(size), high.append(size)
                continue
            name = declared[axis] if axis < len(declared) and isinstance(declared[axis], str) else None
            span = dims(name or f"{tensor.name}.{axis}")
            low.append(span.min), opt.append(span.opt), high.append(span.max)
        profile.set_shape(tensor.name, low, opt, high)
        shapes[tensor.name] = {"min": low, "opt": opt, "max": high}
    return profile, shapes


_METADATA = re.compile(r"^\[?ONNX Layer: (?P<onnx>.*?)(?: \| (?P<stack>.*?))?\]?$")


def network_layers(network: Any) -> list[dict[str, Any]]:
    """Each layer of the parsed network: type, name, the ONNX node it comes from and, for a layer of a
    function body, the edgeattn node (the outermost function call) it belongs to."""
    layers = []
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        row: dict[str, Any] = {"type": layer.type.name, "name": layer.name}
        found = _METADATA.match(getattr(layer, "metadata", "") or "")
        if found is not None:
            row["onnx_node"] = found.group("onnx")
            calls = [c.rsplit(" (", 1) for c in (found.group("stack") or "").split(" | ") if c]
            if calls:
                row["function_of"] = calls[0][0]
        layers.append(row)
    return layers


def _count(values: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for value in values:
        counts[value] = counts.get(value, 0) + 1
    return dict(sorted(counts.items()))


def _edgeattn_summary(nodes: list[dict[str, Any]], layers: list[dict[str, Any]], plan: Any,
                      fields: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:  # fmt: skip
    """For each edgeattn node: a plugin layer (named like the node: its kernel and the fields TensorRT handed
    the plugin), or its function body inlined (how many layers, of which types, and why no plugin)."""
    rows = []
    for node in nodes:
        plugin = [la for la in layers
                  if la["type"].startswith("PLUGIN") and la.get("onnx_node", la["name"]) == node["node"]]
        body = [la for la in layers if la.get("function_of") == node["node"]]
        decided = plan.for_node(node["node"])
        row = dict(node)
        if plugin:
            row.update({"as": "plugin", "layer": plugin[0]["name"], "kernel": decided.kernel if decided else None,
                        "tactics": decided.tactics if decided else None,
                        "fields": _jsonable(fields.get(node["node"], {}))})
        else:
            row.update({"as": "inlined body", "layers": len(body), "layer_types": _count(la["type"] for la in body),
                        "reason": decided.reason if decided else None})
        rows.append(row)
    return rows


def _jsonable(attrs: Mapping[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in attrs.items()}


def kernel_archs(arch: Sequence[str]) -> list[int]:
    """The AOT targets of the kernels an engine carries: the --arch targets, or every known one for a
    portable engine (and for `native` when this machine's GPU cannot be asked)."""
    from edgeattn.kernels.triton_aot import TARGETS

    named = [int(a[3:]) for a in arch if a.startswith("sm_")]
    if named:
        missing = [a for a in named if a not in TARGETS]
        if missing:
            raise EdgeAttnError(f"edgeattn has no kernel target sm_{missing[0]}; its kernels build for "
                                f"{', '.join(f'sm_{a}' for a in sorted(TARGETS))}")
        return named
    if list(arch) == [NATIVE]:
        try:
            import torch

            if torch.cuda.is_available():
                major, minor = torch.cuda.get_device_capability()
                if 10 * major + minor in TARGETS:
                    return [10 * major + minor]
        except ImportError:
            pass
    return sorted(TARGETS)


def engine_layers(backend: Backend, serialized: bytes) -> dict[str, Any]:
    """The engine's own layers from TensorRT's engine inspector, or why they cannot be read here
    (deserializing an engine needs a CUDA device)."""
    trt = backend.module
    logger = _logger(trt)
    try:
        runtime = trt.Runtime(logger)
        engine = runtime.deserialize_cuda_engine(serialized)
    except Exception as err:  # noqa: BLE001 - any failure only means: not inspectable here
        return {"available": False, "reason": f"{type(err).__name__}: {err}"}
    if engine is None:
        reason = (logger.errors() or ["the engine does not deserialize here"])[-1]
        return {"available": False, "reason": f"the engine inspector needs a CUDA device: {reason}"}
    inspector = engine.create_engine_inspector()
    info = json.loads(inspector.get_engine_information(trt.LayerInformationFormat.JSON))
    layers = []
    for layer in info.get("Layers", []):
        if isinstance(layer, str):
            layers.append({"name": layer})
        else:
            layers.append({"name": layer.get("Name"), "type": layer.get("LayerType")})
    return {"available": True, "layers": layers}


MAX_ENGINE_BYTES = 8 << 30


def inspect_engine(path: Path, backend_name: str | None = None) -> dict[str, Any]:
    """An engine's layers: from TensorRT's engine inspector where the engine deserializes (a CUDA device, the
    backend that built it), else from the compile.json `edgeattn compile` wrote beside it (the network it
    built), saying which one the list comes from."""
    if not path.is_file():
        raise EdgeAttnError(f"{str(path)!r} is not a file; give an .engine file written by edgeattn compile")
    size = path.stat().st_size
    if size > MAX_ENGINE_BYTES:
        raise EdgeAttnError(f"{path.name} is larger than {MAX_ENGINE_BYTES >> 30} GiB; not an engine edgeattn wrote")
    record = _compile_record(path)
    backend = load_backend(backend_name or (record or {}).get("backend"))
    found = engine_layers(backend, path.read_bytes())
    result: dict[str, Any] = {"engine": str(path), "bytes": size, "backend": backend.describe()}
    if found["available"]:
        return result | {"source": "engine inspector", "layers": found["layers"]}
    if record is None:
        raise EdgeAttnError(f"cannot list the layers of {path.name} here: {found['reason']}; and no compile.json "
                            "beside it names it (run on a machine with a GPU, or keep the folder compile wrote)")
    entry = record["entry"]
    return result | {"source": "compile.json (the network TensorRT built; the engine itself needs a CUDA device to "
                               "be read)", "layers": entry.get("layers", []),
                     "edgeattn_nodes": entry.get("edgeattn_nodes", []), "arch": record.get("arch")}  # fmt: skip


def _compile_record(engine: Path) -> dict[str, Any] | None:
    """The compile.json entry of `engine` (same folder), or None."""
    from edgeattn.paths import read_text

    document_path = engine.parent / COMPILE_JSON
    if not document_path.is_file():
        return None
    try:
        document = json.loads(read_text(document_path, 64 << 20, "compile.json written by edgeattn compile"))
    except (ValueError, OSError, EdgeAttnError):
        return None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        return None
    for entry in (document.get("engines") or {}).values():
        if isinstance(entry, dict) and entry.get("file") == engine.name:
            backend = (document.get("backend") or {}).get("name")
            return {"entry": entry, "arch": document.get("arch"), "backend": backend if backend in BACKENDS else None}
    return None


# -- a whole folder --------------------------------------------------------------------------------------


@dataclass
class CompileOptions:
    backend: str | None = None
    arch: str | None = None
    shapes: str | None = None
    components: Sequence[str] = field(default_factory=tuple)  # empty: every component
    plugins: bool = True  # False: every edgeattn node builds as its inlined function body
    timing_cache: Path | None = None  # read when it exists, written after the builds


def compile_engines(source_path: str | Path, out: Path, options: CompileOptions,
                    step: Callable[[str], ContextManager[Any]] | None = None) -> dict[str, Any]:
    """Build every component of `source_path` into `out` (an existing, empty folder) and write compile.json
    there; returns its document. `step(description)` wraps each engine build (progress)."""
    backend = load_backend(options.backend)
    arch = parse_arch(options.arch, backend)
    overrides = parse_shapes(options.shapes)
    source = read_source(source_path)
    components = _chosen(source, options.components)
    # every file is read (and refused when it cannot build) before the first build starts
    declared = {d for c in components for d in _declared_dims(c, prepare_onnx(c.onnx))}
    unknown = sorted(set(overrides) - declared)
    if unknown:
        raise EdgeAttnError(f"--shapes names {', '.join(unknown)}, which no input has; the symbolic dims are: "
                            f"{', '.join(sorted(declared)) or 'none'}")
    used: dict[str, list[int]] = {}
    # TensorRT-RTX times no tactics (it builds without a GPU) and its timing cache calls are no-ops
    timed = options.timing_cache is not None and not backend.rtx
    if timed and options.timing_cache is not None and options.timing_cache.exists():
        _timing_cache(backend, options.timing_cache)  # a file that is not a timing cache: one line, before building
    engines = {}
    for component in components:
        with (step or _no_step)(f"build {component.name} ({backend.name}, {','.join(arch)})"):
            request = request_for(backend.name, component, arch, overrides, source.longest, out, options.plugins,
                                  options.timing_cache if timed else None)  # fmt: skip
            engines[component.name], dims_used = build_in_child(request)
            used.update(dims_used)
    timing = None if options.timing_cache is None else {
        "path": str(options.timing_cache), "used": timed,
        **({} if timed else {"why": "TensorRT-RTX times no tactics at build time; its timing cache is a no-op"})}
    document = {
        "format": FORMAT,
        "source": str(source.path),
        "model": getattr(source.manifest, "model", None),
        "backend": backend.describe(),
        "arch": list(arch),
        "dims": {name: used[name] for name in sorted(used)},
        "plugins": options.plugins,
        "kernel_archs": kernel_archs(arch) if options.plugins else [],
        "timing_cache": timing,
        "engines": engines,
    }
    (out / COMPILE_JSON).write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    return document


# -- one engine per child process (see edgeattn.runtime.trt_worker) ------------------------------------

BUILD_TIMEOUT_S = 6 * 3600  # a large model's build may take an hour; a hung builder does not take a day


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
                              capture_output=True, text=True, env=env, timeout=BUILD_TIMEOUT_S)  # fmt: skip
    except subprocess.TimeoutExpired:
        raise EdgeAttnError(f"building {request['component']['name']} took longer than {BUILD_TIMEOUT_S // 3600} h; "
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


MAX_TIMING_CACHE_BYTES = 256 << 20
_KEEP_ALIVE: list[Any] = []


def _timing_cache(backend: Backend, path: Path | None) -> Any:
    """A timing cache shared by every engine of this compile: read from `path` when it exists."""
    if path is None:
        return None
    data = b""
    if path.exists():
        if not path.is_file():
            raise EdgeAttnError(f"--timing-cache {str(path)!r} is not a file")
        if path.stat().st_size > MAX_TIMING_CACHE_BYTES:
            raise EdgeAttnError(f"--timing-cache {str(path)!r} is larger than {MAX_TIMING_CACHE_BYTES >> 20} MiB; "
                                "give a TensorRT timing cache or a new path")
        data = path.read_bytes()
    logger = _logger(backend.module)
    builder = backend.module.Builder(logger)
    config = builder.create_builder_config()
    cache = config.create_timing_cache(data)
    if cache is None:
        raise EdgeAttnError(f"{str(path)!r} is not a timing cache of {backend.name} {backend.version}; "
                            "delete it or give a new path")
    _KEEP_ALIVE.append((logger, builder, config, cache))  # the cache lives on its builder: serializing it after
    return cache  # the builder is collected crashes TensorRT-RTX 1.7 (measured)


def _write_atomically(path: Path, data: bytes) -> None:
    import os
    import tempfile

    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent or ".")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _no_step(description: str) -> ContextManager[Any]:
    return nullcontext()


def _declared_dims(component: Component, prepared: Prepared) -> set[str]:
    """The symbolic dim names of a component's inputs (manifest first, else the ONNX file)."""
    names = {d for entry in component.inputs for d in entry.get("shape", ()) if isinstance(d, str)}
    return names or {d for dims in prepared.dim_names.values() for d in dims if d}


def _chosen(source: Source, names: Sequence[str]) -> list[Component]:
    if not names:
        return source.components
    known = {c.name: c for c in source.components}
    missing = [n for n in names if n not in known]
    if missing:
        raise EdgeAttnError(f"no component {', '.join(missing)} in {source.path}; it has: {', '.join(known)}")
    return [known[n] for n in dict.fromkeys(names)]


__all__ = [
    "BACKENDS", "COMPILE_JSON", "Backend", "CompileOptions", "DimRange", "check_rtx_parser_library",
    "compile_engines", "load_backend", "parse_arch", "parse_shapes", "read_source",
]
