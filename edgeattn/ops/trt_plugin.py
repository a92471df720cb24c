"""TensorRT plugins for edgeattn ops: one IPluginV3 implementation, specialised by each op's `PluginDef`.

An op that has Triton kernels declares, in its `trt.py`, a :class:`PluginDef`: its output shapes as dim
expressions over the inputs (:class:`In`, :class:`Const`, :class:`Sub`), its output types, the type
combinations the kernels take, which kernel build a node needs (or why it has none), the shape symbols
its launch formulas use, and which plugin input and output binds to which tensor of the build record.
Everything here except :func:`creator_for` is plain Python, tested without TensorRT.

:func:`creator_for` makes the creator class for a TensorRT module (full TensorRT or TensorRT-RTX: both
take the same Python IPluginV3 classes). Plugin fields are the op's attributes, as the ONNX parser passes
them (ints as INT32, floats as FLOAT32, strings as CHAR), plus `edgeattn_kernels`: the JSON of
the node's kernel bundle (which inputs it has, its output count, the kernel builds with their PTX per
architecture), which the engine carries, so an engine runs wherever
TensorRT and cuda-python are, without edgeattn's compiler. `enqueue` launches those kernels with
:func:`edgeattn.kernels.launch.launch` on TensorRT's stream.

TensorRT imports happen in the caller (`edgeattn.runtime.tensorrt`); this module imports without it.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from edgeattn.kernels.launch import CudaLauncher, evaluate, launch, scratch_layout
from edgeattn.ops.spec import OpSpec

NAMESPACE = "edgeattn"
KERNELS_FIELD = "edgeattn_kernels"
BODY_VERSION_SUFFIX = ".body"  # a node whose plugin_version ends so is not taken by a plugin: its body is inlined
MAX_KERNELS_BYTES = 64 << 20

# TensorRT DataType names -> the names plugin definitions use
TYPE_NAMES = {"FLOAT": "fp32", "HALF": "fp16", "BF16": "bf16", "INT32": "i32", "INT64": "i64", "BOOL": "bool",
              "INT8": "i8", "UINT8": "u8"}
ITEM_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2, "i32": 4, "i64": 8, "u8": 1, "i8": 1, "bool": 1}
# onnx TensorProto element types -> the same names
ONNX_TYPES = {1: "fp32", 10: "fp16", 16: "bf16", 6: "i32", 7: "i64", 9: "bool", 3: "i8", 2: "u8", 11: "fp64"}


# -- output dims as expressions over the input dims ------------------------------------------------------


@dataclass(frozen=True)
class In:
    """Dim `axis` of input `index`."""

    index: int
    axis: int


@dataclass(frozen=True)
class Const:
    value: int


@dataclass(frozen=True)
class Sub:
    a: "Dim"
    b: "Dim"


@dataclass(frozen=True)
class Add:
    a: "Dim"
    b: "Dim"


@dataclass(frozen=True)
class Div:
    """a // b (floor), or ceil(a / b) with `ceil`; for non-negative a and positive b."""

    a: "Dim"
    b: "Dim"
    ceil: bool = False


Dim = In | Const | Sub | Add | Div


def concrete(dim: Dim, shapes: Sequence[Sequence[int]]) -> int:
    """The value of `dim` for concrete input shapes."""
    if isinstance(dim, In):
        return int(shapes[dim.index][dim.axis])
    if isinstance(dim, Const):
        return dim.value
    a, b = concrete(dim.a, shapes), concrete(dim.b, shapes)
    if isinstance(dim, Sub):
        return a - b
    if isinstance(dim, Add):
        return a + b
    return -(-a // b) if dim.ceil else a // b


def expression(dim: Dim, inputs: Sequence[Any], builder: Any, trt: Any) -> Any:
    """`dim` as a TensorRT IDimensionExpr (inputs: the DimsExprs TensorRT passes to get_output_shapes)."""
    if isinstance(dim, In):
        return inputs[dim.index][dim.axis]
    if isinstance(dim, Const):
        return builder.constant(dim.value)
    ops = trt.DimensionOperation
    operation = {Sub: ops.SUB, Add: ops.SUM}.get(type(dim)) or (ops.CEIL_DIV if dim.ceil else ops.FLOOR_DIV)
    return builder.operation(operation, expression(dim.a, inputs, builder, trt), expression(dim.b, inputs, builder, trt))


# -- what a node offers a plugin (read from the graph at compile time) ------------------------------------


@dataclass(frozen=True)
class InputView:
    """One input of a node: its element type name, static shape (None dims unknown) and constant value."""

    dtype: str | None
    shape: tuple[int | None, ...] | None
    constant: np.ndarray | None = None


@dataclass(frozen=True)
class NodeView:
    attributes: Mapping[str, Any]
    inputs: tuple[InputView, ...]  # the node's inputs, in its order (the TensorRT form passes present ones only)
    present: tuple[int, ...]  # the op-level position of each input
    outputs: int
    longest: int | None = None  # the longest dim the engine's profile allows (sizes selection tiles)

    def input(self, position: int) -> InputView | None:
        """The input at op-level `position`, None when absent."""
        return self.inputs[self.present.index(position)] if position in self.present else None


@dataclass(frozen=True)
class KernelChoice:
    """The AOT build a node runs: the kernel family (`edgeattn.kernels.<family>.aot`) and its build
    attributes, plus every tactic (tile configuration) the plugin offers."""

    family: str
    builds: tuple[Mapping[str, Any], ...]  # one per tactic; keyword arguments of the family's build class
    build_class: str


def power_of_two_in(value: int | None, low: int = 16, high: int = 256) -> bool:
    return isinstance(value, int) and low <= value <= high and value & (value - 1) == 0


@dataclass(frozen=True)
class PluginDef:
    """What one op's plugin needs beyond the generic IPluginV3 machinery."""

    op: OpSpec
    output_dims: Callable[[Mapping[str, Any], tuple[int, ...]], list[list[Dim]]]
    output_types: Callable[[Mapping[str, Any], Sequence[str]], list[str]]
    type_combos: Callable[[Mapping[str, Any], tuple[int, ...], int], list[tuple[str, ...]]]
    choose: Callable[[NodeView], KernelChoice | str]  # the build, or why there is no kernel for this node
    symbols: Callable[[Mapping[str, Any], tuple[int, ...], Sequence[Sequence[int]]], dict[str, int]]
    bindings: Callable[[Mapping[str, Any], tuple[int, ...], int], tuple[tuple[str | None, ...], tuple[str | None, ...]]]
    notes: str = ""
    # tensors of the record that start inside a bound buffer: name -> (buffer, byte offset), from the symbols
    # and the record (the regions kernel reads the candidates after the prefix tokens of the features)
    aliases: Callable[[Mapping[str, Any], Mapping[str, int], Mapping[str, Any]], dict[str, tuple[str, int]]] | None = None

    @property
    def op_type(self) -> str:
        return f"Edge{self.op.name}"

    def accepts(self, attrs: Mapping[str, Any], present: tuple[int, ...], types: Sequence[str], outputs: int) -> bool:
        """Whether the first len(types) io types (inputs, then outputs) start an accepted combination."""
        return any(tuple(combo[: len(types)]) == tuple(types)
                   for combo in self.type_combos(attrs, present, outputs))  # fmt: skip


# -- fields: the op's attributes, as the ONNX parser passes them ---------------------------------------------


def field_kind(kind: str) -> str:
    return {"int": "INT32", "ints": "INT32", "float": "FLOAT32", "floats": "FLOAT32", "string": "CHAR"}[kind]


def decode_fields(spec: OpSpec, fields: Mapping[str, np.ndarray]) -> tuple[dict[str, Any], bytes]:
    """(attributes, kernel bundle JSON) from plugin field arrays; missing attributes take defaults."""
    attrs = spec.defaults()
    for attr in spec.attributes:
        if attr.name not in fields:
            continue
        data = np.asarray(fields[attr.name])
        if attr.kind == "string":
            raw = data.astype(np.uint8).tobytes()
            attrs[attr.name] = raw.split(b"\0", 1)[0].decode("utf-8")
        elif attr.kind in ("int", "float"):
            attrs[attr.name] = (int if attr.kind == "int" else float)(data.reshape(-1)[0])
        else:
            attrs[attr.name] = tuple((int if attr.kind == "ints" else float)(v) for v in data.reshape(-1))
    kernels = np.asarray(fields[KERNELS_FIELD]).astype(np.int8).tobytes() if KERNELS_FIELD in fields else b""
    if len(kernels) > MAX_KERNELS_BYTES:
        raise ValueError(f"{spec.name}: kernel bundle of {len(kernels)} bytes is larger than {MAX_KERNELS_BYTES}")
    return attrs, kernels


def encode_fields(spec: OpSpec, attrs: Mapping[str, Any], kernels: bytes) -> list[tuple[str, np.ndarray, str]]:
    """(name, data, PluginFieldType name) for every field, the inverse of `decode_fields`."""
    out = []
    for attr in spec.attributes:
        value = attrs[attr.name]
        if attr.kind == "string":
            data = np.frombuffer(str(value).encode("utf-8") + b"\0", np.int8).copy()
        elif attr.kind in ("int", "ints"):
            data = np.asarray(value if attr.kind == "ints" else [value], np.int32).reshape(-1)
        else:
            data = np.asarray(value if attr.kind == "floats" else [value], np.float32).reshape(-1)
        out.append((attr.name, data, field_kind(attr.kind)))
    out.append((KERNELS_FIELD, np.frombuffer(kernels, np.int8).copy(), "INT8"))
    return out


# -- the kernel bundle an engine carries ---------------------------------------------------------------------


@dataclass(frozen=True)
class Bundle:
    """What a plugin node carries besides its attributes: the op-level positions of its inputs, its output
    count, and per architecture one kernel build record (with PTX) per tactic."""

    present: tuple[int, ...]
    outputs: int
    records: Mapping[int, Sequence[Mapping[str, Any]]]

    def to_bytes(self) -> bytes:
        """zlib-compressed JSON (PTX text shrinks about tenfold)."""
        text = json.dumps({"present": list(self.present), "outputs": self.outputs,
                           "records": {str(a): list(r) for a, r in self.records.items()}}, separators=(",", ":"))
        return zlib.compress(text.encode(), 6)

    @classmethod
    def from_bytes(cls, data: bytes) -> "Bundle":
        inflate = zlib.decompressobj()
        text = inflate.decompress(data, MAX_KERNELS_BYTES)
        if inflate.unconsumed_tail:
            raise ValueError(f"a kernel bundle larger than {MAX_KERNELS_BYTES} bytes")
        doc = json.loads(text)
        return cls(tuple(int(i) for i in doc["present"]), int(doc["outputs"]),
                   {int(a): r for a, r in doc["records"].items()})

    def any_records(self) -> Sequence[Mapping[str, Any]]:
        return next(iter(self.records.values()), [])


def pick_arch(available: Sequence[int], device_arch: int) -> int | None:
    """The build for a GPU: its own architecture, else the newest older one whose PTX the driver can JIT
    (PTX of sm_90a / sm_120a is tied to that exact architecture)."""
    if device_arch in available:
        return device_arch
    portable = [a for a in available if a < device_arch and a < 90]
    return max(portable) if portable else None


def workspace_tensors(record: Mapping[str, Any]) -> dict[str, tuple[list[str], str]]:
    """{name: (dim formulas, element type)} of the tensors a record marks as workspace."""
    out = {}
    for name, text in record.get("tensors", {}).items():
        if "workspace" not in text:
            continue
        dims, _, rest = text.partition("]")
        dtype = rest.split()[0] if rest.split() else "fp32"
        out[name] = ([d.strip() for d in dims.strip("[ ").split(",")], {"uint8": "u8", "int32": "i32"}.get(dtype, dtype))
    return out


def workspace_sizes(record: Mapping[str, Any], symbols: Mapping[str, int]) -> dict[str, int]:
    sizes = {}
    for name, (dims, dtype) in workspace_tensors(record).items():
        count = 1
        for d in dims:
            count *= evaluate(d, symbols)
        sizes[name] = count * ITEM_BYTES[dtype]
    return sizes


def workspace_bytes(record: Mapping[str, Any], symbols: Mapping[str, int]) -> tuple[dict[str, int], int]:
    return scratch_layout(workspace_sizes(record, symbols))


Scratch = Callable[[str, int, int, str], Any]  # (name, offset, bytes, element type) -> a workspace buffer


def _shift_pointer(pointer: Any, nbytes: int) -> Any:
    return int(pointer) + nbytes


def launch_node(definition: PluginDef, attrs: Mapping[str, Any], bundle: Bundle, record: Mapping[str, Any],
                input_dims: Sequence[Sequence[int]], inputs: Sequence[Any], outputs: Sequence[Any], scratch: Scratch,
                launcher: Any, shift: Callable[[Any, int], Any] = _shift_pointer) -> None:  # fmt: skip
    """The one launch behind a plugin's `enqueue` (and the GPU check): shape symbols from the input dims, each
    plugin input and output bound to its tensor of the build record, workspace tensors carved by `scratch`,
    then every kernel of the record launched in order by `launcher` (CUDA driver, or the Triton interpreter).
    `shift(buffer, nbytes)` is a buffer that starts `nbytes` further (pointers: an addition)."""
    symbols = definition.symbols(attrs, bundle.present, input_dims)
    in_names, out_names = definition.bindings(attrs, bundle.present, bundle.outputs)
    buffers = {name: value for name, value in zip(in_names, inputs) if name is not None}
    buffers |= {name: value for name, value in zip(out_names, outputs) if name is not None}
    if definition.aliases is not None:
        for name, (source, nbytes) in definition.aliases(attrs, symbols, record).items():
            buffers[name] = shift(buffers[source], nbytes)
    sizes = workspace_sizes(record, symbols)
    offsets, _ = scratch_layout(sizes)
    kinds = workspace_tensors(record)
    for name, offset in offsets.items():
        buffers[name] = scratch(name, offset, sizes[name], kinds[name][1])
    launch(record, symbols, buffers, launcher)


def device_arch() -> int:
    """The compute capability of the current CUDA context's device, as 89 for 8.9."""
    from cuda.bindings import driver as cu

    err, device = cu.cuCtxGetDevice()
    if int(err) != 0:
        raise RuntimeError("no current CUDA context")
    attr = cu.CUdevice_attribute
    _, major = cu.cuDeviceGetAttribute(attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, device)
    _, minor = cu.cuDeviceGetAttribute(attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, device)
    return 10 * int(major) + int(minor)


# -- the IPluginV3 classes, made for one TensorRT module ------------------------------------------------------


def creator_for(trt: Any, definition: PluginDef, kernels_by_node: Mapping[str, bytes], op_type: str | None = None) -> Any:
    """A plugin creator (an `IPluginCreatorV3One`) of `definition` for the TensorRT module `trt`, named
    `op_type` (default `Edge<Op>`; nodes of one op with different function bodies carry a digest suffix).

    `kernels_by_node` gives, at build time, the kernel bundle of each node by name (what `compile` built);
    a deserialized plugin reads its bundle from its own fields."""
    spec = definition.op
    name_of_plugin = op_type or definition.op_type
    type_by_name = {v: getattr(trt.DataType, k) for k, v in TYPE_NAMES.items() if hasattr(trt.DataType, k)}

    def to_fields(attrs: Mapping[str, Any], kernels: bytes) -> Any:
        return trt.PluginFieldCollection([trt.PluginField(name, data, getattr(trt.PluginFieldType, kind))
                                          for name, data, kind in encode_fields(spec, attrs, kernels)])

    class Plugin(trt.IPluginV3, trt.IPluginV3OneCore, trt.IPluginV3OneBuild, trt.IPluginV3OneRuntime):
        def __init__(self, attrs: Mapping[str, Any], kernels: bytes):
            trt.IPluginV3.__init__(self)
            trt.IPluginV3OneCore.__init__(self)
            trt.IPluginV3OneBuild.__init__(self)
            trt.IPluginV3OneRuntime.__init__(self)
            self.plugin_name = name_of_plugin
            self.plugin_namespace = NAMESPACE
            self.plugin_version = str(spec.version)
            self.bundle = Bundle.from_bytes(kernels)
            self.num_outputs = self.bundle.outputs
            self.timing_cache_id = ""
            self.attrs, self.present, self.kernels = dict(attrs), self.bundle.present, kernels
            self.tactic = 0
            self._launchers: dict[Any, Any] = {}

        def get_capability_interface(self, kind: Any) -> Any:
            return self

        def clone(self) -> Any:
            twin = Plugin(self.attrs, self.kernels)
            twin.tactic = self.tactic
            return twin

        def get_fields_to_serialize(self) -> Any:
            return to_fields(self.attrs, self.kernels)

        def get_output_data_types(self, input_types: Sequence[Any]) -> list[Any]:
            names = [TYPE_NAMES[t.name] for t in input_types]
            return [type_by_name[n] for n in definition.output_types(self.attrs, names)[: self.num_outputs]]

        def get_output_shapes(self, inputs: Sequence[Any], shape_inputs: Any, builder: Any) -> list[Any]:
            shapes = []
            for dims in definition.output_dims(self.attrs, self.present)[: self.num_outputs]:
                out = trt.DimsExprs(len(dims))
                for axis, dim in enumerate(dims):
                    out[axis] = expression(dim, inputs, builder, trt)
                shapes.append(out)
            return shapes

        def supports_format_combination(self, pos: int, in_out: Sequence[Any], num_inputs: int) -> bool:
            if in_out[pos].desc.format != trt.TensorFormat.LINEAR:
                return False
            names = [TYPE_NAMES.get(in_out[i].desc.type.name, "?") for i in range(pos + 1)]
            return definition.accepts(self.attrs, self.present, names, self.num_outputs)

        def configure_plugin(self, inputs: Any, outputs: Any) -> None:
            return None

        def on_shape_change(self, inputs: Any, outputs: Any) -> None:
            return None

        def get_valid_tactics(self) -> list[int]:
            return list(range(1, len(self.bundle.any_records()) + 1)) or [1]

        def set_tactic(self, tactic: int) -> None:
            self.tactic = max(int(tactic) - 1, 0)

        def get_workspace_size(self, inputs: Sequence[Any], outputs: Sequence[Any]) -> int:
            records = self.bundle.any_records()
            if not records:
                return 0
            dims = [tuple(int(d) for d in desc.max) for desc in inputs]
            symbols = definition.symbols(self.attrs, self.present, dims)
            return max(workspace_bytes(r, symbols)[1] for r in records)

        def attach_to_context(self, context: Any) -> Any:
            return self.clone()

        def enqueue(self, input_desc: Any, output_desc: Any, inputs: Any, outputs: Any, workspace: Any,
                    stream: Any) -> None:  # fmt: skip
            record = self._record()
            dims = [tuple(int(d) for d in desc.dims) for desc in input_desc]
            launcher = self._launchers.get(id(record))
            if launcher is None:
                launcher = self._launchers[id(record)] = CudaLauncher(record)
            base = int(workspace)
            launch_node(definition, self.attrs, self.bundle, record, dims, [int(p) for p in inputs],
                        [int(p) for p in outputs], lambda name, offset, size, dtype: base + offset,
                        launcher.on(int(stream)))  # fmt: skip

        def _record(self) -> Mapping[str, Any]:
            by_arch = self.bundle.records
            arch = pick_arch(sorted(by_arch), device_arch())
            if arch is None:
                raise RuntimeError(f"{definition.op_type}: the engine carries kernels for sm_{sorted(by_arch)}, "
                                   f"not for this GPU (sm_{device_arch()}); compile the engine for it")
            records = by_arch[arch]
            return records[min(self.tactic, len(records) - 1)]

    class Creator(trt.IPluginCreatorV3One):
        def __init__(self) -> None:
            trt.IPluginCreatorV3One.__init__(self)
            self.name = name_of_plugin
            self.plugin_namespace = NAMESPACE
            self.plugin_version = str(spec.version)
            self.field_names = trt.PluginFieldCollection(
                [trt.PluginField(a.name, np.array([]), getattr(trt.PluginFieldType, field_kind(a.kind)))
                 for a in spec.attributes]
                + [trt.PluginField(KERNELS_FIELD, np.array([]), trt.PluginFieldType.INT8)])
            self.kernels_by_node = kernels_by_node
            self.created: list[tuple[str, dict[str, Any]]] = []  # what the parser (or a runtime) handed over

        def create_plugin(self, name: str, fields: Any, phase: Any) -> Any:
            arrays = {f.name: np.array(f.data) for f in fields}
            attrs, kernels = decode_fields(spec, arrays)
            if not kernels:  # build time: the parser passes the node's attributes only
                kernels = self.kernels_by_node.get(name, b"")
            if not kernels:
                raise ValueError(f"{definition.op_type} {name}: no kernel bundle; edgeattn compile builds one "
                                 "for every node it gives to the plugin")
            self.created.append((name, attrs))
            return Plugin(attrs, kernels)

    return Creator()
