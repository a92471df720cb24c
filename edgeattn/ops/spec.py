"""What an edgeattn op is: its inputs, outputs, attributes, shape rule, reference and function body.

Every op package (`edgeattn/ops/<op>/`) builds one `OpSpec` and everything else reads it: the
registry, the ONNX schema, the graph rewriter, the lowerings for onnxruntime and TensorRT, the CLI.
Only the kinds of attribute the TensorRT plugin API accepts exist here (ints, floats, strings and 1-D
arrays of ints or floats), so every op can be written as a TensorRT plugin node without conversion.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Literal, Mapping, Sequence

from edgeattn.ranges import check_number

if TYPE_CHECKING:
    import onnx_ir as ir

AttrKind = Literal["int", "float", "string", "ints", "floats"]
OpKind = Literal["attention", "pruning", "select"]
Target = Literal["ort", "trt"]

DOMAIN = "edgeattn"  # the one place the domain string of every edgeattn op is written
# The oldest standard opset whose attention graphs edgeattn rewrites and prunes (function bodies of some ops
# need more: see `OpSpec.min_opset`).
MIN_REWRITE_OPSET = 13
VERSION = 1
# The standard ONNX domain has two names: "" and "ai.onnx" (BERT and GPT-2 exports use the second).
STANDARD_DOMAINS = ("", "ai.onnx")


def standard_opset(opset_imports: Mapping[str, int], default: int | None = None) -> int | None:
    """The standard ONNX opset a model or graph imports, under either name of its domain; `default` when
    it imports neither."""
    for domain in STANDARD_DOMAINS:
        version = opset_imports.get(domain)
        if version is not None:
            return int(version)
    return default


@dataclass(frozen=True)
class AttrSpec:
    """One attribute. `tunable` ones may come from a graph input instead (a budget, a threshold);
    `from_site` ones are read from the matched attention site and cannot be set by a recipe; `optional`
    ones are written on a node for onnxruntime only when they differ from the default (parts of a contract
    most sites do not use: the function body declares the default)."""

    name: str
    kind: AttrKind
    default: Any
    doc: str
    tunable: bool = False
    from_site: bool = False
    choices: tuple[Any, ...] | None = None
    optional: bool = False

    def coerce(self, value: Any) -> Any:
        """`value` as this attribute's Python type; ValueError with a sentence when it is not one."""
        expected = {"int": int, "float": float, "string": str}.get(self.kind)
        if expected is not None:
            value = _coerce_scalar(self.name, value, expected)
        else:
            item = int if self.kind == "ints" else float
            if not isinstance(value, (list, tuple)):
                raise ValueError(f"attribute '{self.name}' takes a list of {item.__name__}s, got {_shown(value)}")
            if len(value) > _MAX_LIST:
                raise ValueError(f"attribute '{self.name}' takes at most {_MAX_LIST} values, got {len(value)}")
            value = tuple(_coerce_scalar(self.name, v, item) for v in value)
        if self.choices is not None and value not in self.choices:
            raise ValueError(f"attribute '{self.name}' takes one of {list(self.choices)}, got {value!r}")
        return value


_INT64 = 1 << 63
_MAX_STRING = 4096
_MAX_LIST = 65536


def _coerce_scalar(name: str, value: Any, expected: type) -> Any:
    """`value` as `expected`: ints within int64, floats finite (NaN and infinity are never a threshold, a
    window or a budget), strings of sane length."""
    if isinstance(value, bool) and expected is not str:
        return expected(value)
    if expected is float and isinstance(value, int):
        if abs(value) >= _INT64:
            raise ValueError(f"attribute '{name}' takes a finite float, got {value!r}")
        return float(value)
    if not isinstance(value, expected):
        raise ValueError(f"attribute '{name}' takes a {expected.__name__}, got {_shown(value)}")
    if expected in (int, float):
        check_number(f"attribute '{name}'", value)  # finite (a float), within int64 (an int): as every flag value
    if expected is str and len(value) > _MAX_STRING:
        raise ValueError(f"attribute '{name}' takes a string of at most {_MAX_STRING} characters")
    return value


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


@dataclass(frozen=True)
class IOSpec:
    """One input or output. An input with `tunable_for` carries that attribute's value at run time; an
    output with `statistics` is the optional statistics output (skip ratio, density) calibration reads."""

    name: str
    doc: str
    optional: bool = False
    types: tuple[str, ...] = ("tensor(float)", "tensor(float16)", "tensor(bfloat16)", "tensor(double)")
    tunable_for: str | None = None
    statistics: bool = False


@dataclass(frozen=True)
class InputFacts:
    """What the graph knows about one input of a node: absent, or its rank and element type."""

    present: bool
    rank: int | None = None
    dtype: int | None = None  # an onnx.TensorProto data type, None when unknown


@dataclass(frozen=True)
class CallFacts:
    """One node of an op, as a function-body builder sees it: resolved attributes and input facts."""

    attributes: Mapping[str, Any]
    inputs: tuple[InputFacts, ...]
    opset: int  # the model's default-domain opset: the function body imports exactly this one
    outputs: int = 1  # outputs the node declares (a body has exactly as many: optional statistics)


# A shape is a list of dims: int (static), str (symbolic) or None (unknown).
Shape = list[int | str | None]
ShapeRule = Callable[[Sequence["Shape | None"], Mapping[str, Any]], list["Shape | None"]]
FunctionKey = Callable[[CallFacts, Target], str]
FunctionBuilder = Callable[[CallFacts, Target, str], "ir.Function"]
TrtAdapter = Callable[["ir.Node"], None]
AttributeCheck = Callable[[Mapping[str, Any]], None]  # raises ValueError naming the attribute
SiteCheck = Callable[["ir.Node", Mapping[str, Any]], None]  # raises ValueError: attributes vs the graph
OrtLoweringHook = Callable[["ir.Node", dict, int], Any]  # -> ops.ort.Plan, or the reason there is none


@dataclass(frozen=True)
class SparseFlag:
    """A `--sparse METHOD[:key=value,...]` method that chooses this op: the attributes it fixes, the short
    keys it accepts for attributes, and keys whose text a parser turns into attributes."""

    method: str
    doc: str
    fixed: Mapping[str, Any] = field(default_factory=dict)
    aliases: Mapping[str, str] = field(default_factory=dict)
    parsers: Mapping[str, Callable[[str], Mapping[str, Any]]] = field(default_factory=dict)


@dataclass(frozen=True)
class OpSpec:
    """An op, declared once. `function_key` names the function body a node needs (one body per key,
    for onnxruntime an overload of the op); `build_function` makes that body from standard ops;
    `to_trt_form` rewrites a node in place (inserting nodes around it) into the fixed signature its
    TensorRT plugin takes; `reference` is the PyTorch definition the others are tested against."""

    name: str
    doc: str
    kind: OpKind
    inputs: tuple[IOSpec, ...]
    outputs: tuple[IOSpec, ...]
    attributes: tuple[AttrSpec, ...]
    infer_shapes: ShapeRule
    reference: Callable[..., Any]
    function_key: FunctionKey
    build_function: FunctionBuilder
    to_trt_form: TrtAdapter
    domain: str = DOMAIN
    version: int = VERSION
    tags: tuple[str, ...] = field(default=())
    # Hooks: what the graph passes ask an op, so that no table elsewhere is keyed by op name.
    check: AttributeCheck | None = None  # the op's own ranges (keep in (0, 1], sinks >= 0 ...)
    check_site: SiteCheck | None = None  # the attributes against what a site's graph knows statically
    ort_lowering: OrtLoweringHook | None = None  # a cheaper exact onnxruntime graph (see ops.ort)
    sparse_flags: tuple[SparseFlag, ...] = ()  # the --sparse methods that choose this op
    note: str | None = None  # what `inspect` tells a user who finds this op in a graph
    kernels: tuple[str, ...] = ()  # the kernel families (edgeattn.kernels.<family>) that compute it on a GPU
    plugin: Callable[["OpSpec"], Any] | None = None  # -> ops.trt_plugin.PluginDef: the op's TensorRT plugin

    def plugin_def(self) -> Any:
        """The op's TensorRT plugin definition (`ops.trt_plugin.PluginDef`), None when it has no kernel."""
        return self.plugin(self) if self.plugin is not None else None

    @property
    def statistics_output(self) -> str | None:
        """The name of the optional statistics output (skip ratio, density), when the op has one."""
        return next((io.name for io in self.outputs if io.statistics), None)

    def attribute(self, name: str) -> AttrSpec:
        for attr in self.attributes:
            if attr.name == name:
                return attr
        known = ", ".join(a.name for a in self.attributes)
        raise KeyError(f"op {self.name} has no attribute '{name}' (it has: {known})")

    def defaults(self) -> dict[str, Any]:
        return {a.name: a.default for a in self.attributes}

    def resolve(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """Defaults overlaid with `given`, each coerced to its declared kind."""
        values = self.defaults()
        for name, value in given.items():
            values[name] = self.attribute(name).coerce(value)
        return values

    def tunable_input_index(self, attr_name: str) -> int:
        for index, spec in enumerate(self.inputs):
            if spec.tunable_for == attr_name:
                return index
        raise KeyError(f"op {self.name} has no input that carries '{attr_name}'")

    def describe(self) -> dict[str, Any]:
        """A JSON-ready description (what `edgeattn ops --json` prints)."""
        return {
            "name": self.name,
            "domain": self.domain,
            "version": self.version,
            "kind": self.kind,
            "doc": self.doc,
            "inputs": [_io_dict(io) for io in self.inputs],
            "outputs": [_io_dict(io) for io in self.outputs],
            "attributes": [
                {
                    "name": a.name,
                    "type": a.kind,
                    "default": a.default,
                    "tunable": a.tunable,
                    "from_site": a.from_site,
                    "choices": list(a.choices) if a.choices is not None else None,
                    "doc": a.doc,
                }
                for a in self.attributes
            ],
        }


def _io_dict(io: IOSpec) -> dict[str, Any]:
    return {"name": io.name, "optional": io.optional, "doc": io.doc, "tunable_for": io.tunable_for}


def lazy(module: str, name: str) -> Callable[..., Any]:
    """``module.name``, imported on first call: references need torch, which the registry must not import."""

    def call(*args: Any, **kwargs: Any) -> Any:
        import importlib

        return getattr(importlib.import_module(module), name)(*args, **kwargs)

    call.__name__ = name
    call.__doc__ = f"`{module}.{name}`, imported on first use."
    return call


def declare(
    declaration: Any,
    *,
    kind: OpKind,
    reference: Callable[..., Any],
    function_key: FunctionKey,
    build_function: FunctionBuilder,
    to_trt_form: TrtAdapter,
    tags: tuple[str, ...] = (),
    check_site: SiteCheck | None = None,
    ort_lowering: OrtLoweringHook | None = None,
    sparse_flags: tuple[SparseFlag, ...] = (),
    note: str | None = None,
    check: AttributeCheck | None = None,
    kernels: tuple[str, ...] = (),
    plugin: Callable[[OpSpec], Any] | None = None,
) -> OpSpec:
    """The OpSpec of an op package whose ``spec`` module holds NAME, DOC, INPUTS, OUTPUTS, ATTRIBUTES and
    ``infer_shapes`` (every package follows that layout), and ``check_attributes`` when the op has ranges
    to check."""
    return OpSpec(
        name=declaration.NAME,
        doc=declaration.DOC,
        kind=kind,
        inputs=declaration.INPUTS,
        outputs=declaration.OUTPUTS,
        attributes=declaration.ATTRIBUTES,
        infer_shapes=declaration.infer_shapes,
        reference=reference,
        function_key=function_key,
        build_function=build_function,
        to_trt_form=to_trt_form,
        tags=tags,
        check=check if check is not None else getattr(declaration, "check_attributes", None),
        check_site=check_site,
        ort_lowering=ort_lowering,
        sparse_flags=sparse_flags,
        note=note,
        kernels=kernels,
        plugin=plugin,
    )
