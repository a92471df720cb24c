"""Launching an ahead-of-time kernel build: the one plain function TensorRT's `enqueue` and the GPU check call.

A build record (what `<family>.aot.build` returns: each kernel's PTX, grid and runtime parameters in launch
order, every scalar given as a formula in the op's shape symbols) becomes a list of :class:`Step`\\ s for
concrete shapes (:func:`plan`), and :func:`launch` hands each step to a launcher:

- :class:`CudaLauncher` loads the PTX once per kernel through the CUDA driver API (``cuda-python``) and
  launches it on a stream with raw device pointers: what a TensorRT plugin does on a GPU;
- tests hand the same steps to the Triton interpreter on CPU tensors (``tests/test_plugins.py``), so the
  grids, scalars and buffer bindings a plugin computes are checked against the op's reference without a GPU.

Formulas are parsed here (integers, symbol names, ``+ - * /``, parentheses and ``cdiv(a, b)``); nothing is
evaluated as Python, so a record read back from an engine file cannot run code.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from ..errors import EdgeAttnError, RuntimeUnavailableError

__all__ = ["Arg", "CudaLauncher", "Step", "evaluate", "launch", "plan", "scratch_layout"]

MAX_FORMULA_CHARS = 200
INT32_MAX = (1 << 31) - 1
_TOKEN = re.compile(r"\s*(?:(\d+)|([A-Za-z_]\w*)|(.))")


def evaluate(formula: str, symbols: Mapping[str, int]) -> int:
    """The integer value of `formula` (``a*b``, ``cdiv(L,64)``, ``(P+N)*D``, ``Hq/Hkv``: ``/`` divides exactly).

    EdgeAttnError for anything else: an unknown symbol, an inexact division, a character outside the grammar."""
    if len(formula) > MAX_FORMULA_CHARS:
        raise EdgeAttnError(f"a launch formula longer than {MAX_FORMULA_CHARS} characters")
    tokens = [m.group(m.lastindex or 0) for m in _TOKEN.finditer(formula) if m.group(0).strip()]
    value, end = _expr(tokens, 0, formula, symbols)
    if end != len(tokens):
        raise EdgeAttnError(f"launch formula {formula!r}: unexpected {tokens[end]!r}")
    return value


def _expr(tokens: list[str], i: int, text: str, symbols: Mapping[str, int]) -> tuple[int, int]:
    value, i = _term(tokens, i, text, symbols)
    while i < len(tokens) and tokens[i] in "+-":
        op = tokens[i]
        rhs, i = _term(tokens, i + 1, text, symbols)
        value = value + rhs if op == "+" else value - rhs
    return value, i


def _term(tokens: list[str], i: int, text: str, symbols: Mapping[str, int]) -> tuple[int, int]:
    value, i = _factor(tokens, i, text, symbols)
    while i < len(tokens) and tokens[i] in "*/":
        op = tokens[i]
        rhs, i = _factor(tokens, i + 1, text, symbols)
        if op == "*":
            value *= rhs
        elif rhs == 0 or value % rhs:
            raise EdgeAttnError(f"launch formula {text!r}: {value} is not divisible by {rhs}")
        else:
            value //= rhs
    return value, i


def _factor(tokens: list[str], i: int, text: str, symbols: Mapping[str, int]) -> tuple[int, int]:
    if i >= len(tokens):
        raise EdgeAttnError(f"launch formula {text!r} ends early")
    token = tokens[i]
    if token.isdigit():
        return int(token), i + 1
    if token == "(":
        value, i = _expr(tokens, i + 1, text, symbols)
        return value, _expect(tokens, i, ")", text)
    if token == "cdiv":
        i = _expect(tokens, i + 1, "(", text)
        a, i = _expr(tokens, i, text, symbols)
        i = _expect(tokens, i, ",", text)
        b, i = _expr(tokens, i, text, symbols)
        if b <= 0:
            raise EdgeAttnError(f"launch formula {text!r}: cdiv by {b}")
        return -(-a // b), _expect(tokens, i, ")", text)
    if token.isidentifier():
        if token not in symbols:
            raise EdgeAttnError(f"launch formula {text!r} names {token!r}, which the op does not define")
        return int(symbols[token]), i + 1
    raise EdgeAttnError(f"launch formula {text!r}: unexpected {token!r}")


def _expect(tokens: list[str], i: int, wanted: str, text: str) -> int:
    if i >= len(tokens) or tokens[i] != wanted:
        raise EdgeAttnError(f"launch formula {text!r}: expected {wanted!r}")
    return i + 1


@dataclass(frozen=True)
class Arg:
    """One runtime argument: a buffer (by the record's tensor name) or an int32 value."""

    name: str
    buffer: bool
    value: int = 0


@dataclass(frozen=True)
class Step:
    """One kernel launch with everything computed: the grid, the block, shared memory and the arguments."""

    kernel: str
    grid: tuple[int, int, int]
    threads: int
    shared_bytes: int
    args: tuple[Arg, ...]
    hidden: int  # trailing pointers Triton appends (global / profile scratch, null here: checked unused)
    num_warps: int
    constexprs: Mapping[str, Any]


def plan(record: Mapping[str, Any], symbols: Mapping[str, int]) -> list[Step]:
    """The launches of `record` for concrete shape `symbols`; EdgeAttnError when a value does not fit int32."""
    steps = []
    for kernel in record["kernels"]:
        grid = [evaluate(g, symbols) for g in kernel["grid"]]
        grid += [1] * (3 - len(grid))
        if any(not 0 <= g <= INT32_MAX for g in grid):
            raise EdgeAttnError(f"{kernel['kernel']}: grid {grid} out of range")
        args = []
        for param in kernel["params"]:
            if param["role"] == "scalar":
                value = evaluate(param["value"], symbols)
                if not -INT32_MAX - 1 <= value <= INT32_MAX:
                    raise EdgeAttnError(f"{kernel['kernel']}: {param['name']} = {value} does not fit int32 "
                                        "(tensors must stay below 2**31 elements)")
                args.append(Arg(param["name"], False, value))
            else:
                args.append(Arg(param["name"], True))
        steps.append(Step(kernel["kernel"], (grid[0], grid[1], grid[2]), int(kernel["block"][0]),
                          int(kernel["shared_bytes"]), tuple(args), len(kernel.get("hidden_params", ())),
                          int(kernel["num_warps"]), dict(kernel.get("constexprs", {}))))
    return steps


Launcher = Callable[[Step, Sequence[Any]], None]


def launch(record: Mapping[str, Any], symbols: Mapping[str, int], buffers: Mapping[str, Any], launcher: Launcher) -> None:
    """Run every kernel of `record` in order: each pointer argument from `buffers` (by tensor name), each
    scalar computed from `symbols`. `launcher(step, arguments)` does the launch (CUDA or the interpreter)."""
    for step in plan(record, symbols):
        values = []
        for arg in step.args:
            if arg.buffer and arg.name not in buffers:
                raise EdgeAttnError(f"{step.kernel} needs the buffer {arg.name}; have {sorted(buffers)}")
            values.append(buffers[arg.name] if arg.buffer else arg.value)
        launcher(step, values)


def scratch_layout(sizes: Mapping[str, int], alignment: int = 256) -> tuple[dict[str, int], int]:
    """Offsets of scratch buffers carved from one workspace (each `alignment`-aligned) and the total bytes."""
    offsets, total = {}, 0
    for name, size in sizes.items():
        offsets[name] = total
        total += -(-int(size) // alignment) * alignment
    return offsets, total


class CudaLauncher:
    """Launches PTX through the CUDA driver API on a given stream (one module per kernel, loaded once)."""

    def __init__(self, record: Mapping[str, Any]):
        try:
            from cuda.bindings import driver
        except ImportError:
            try:
                from cuda import cuda as driver  # cuda-python < 12.6 spelling
            except ImportError as exc:
                raise RuntimeUnavailableError("launching edgeattn kernels needs cuda-python; pip install "
                                              "'edgeattn[kernels]'") from exc
        self._driver = driver
        self._ptx = {k["kernel"]: k["ptx"] for k in record["kernels"]}
        self._functions: dict[str, Any] = {}

    def _check(self, result: Any) -> Any:
        err, *rest = result if isinstance(result, tuple) else (result,)
        if int(err) != 0:
            _, name = self._driver.cuGetErrorName(err)
            raise RuntimeError(f"CUDA driver error {name.decode() if isinstance(name, bytes) else name}")
        return rest[0] if len(rest) == 1 else rest

    def function(self, step: Step) -> Any:
        if step.kernel not in self._functions:
            cu = self._driver
            module = self._check(cu.cuModuleLoadData(self._ptx[step.kernel].encode() + b"\0"))
            func = self._check(cu.cuModuleGetFunction(module, step.kernel.encode()))
            if step.shared_bytes > 48 * 1024:
                self._check(cu.cuFuncSetAttribute(
                    func, cu.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, step.shared_bytes))
            self._functions[step.kernel] = func
        return self._functions[step.kernel]

    def __call__(self, step: Step, values: Sequence[Any], stream: int = 0) -> None:
        import ctypes

        cu = self._driver
        args = [int(v) for v in values] + [0] * step.hidden
        types = [ctypes.c_void_p if a.buffer else ctypes.c_int32 for a in step.args] + [ctypes.c_void_p] * step.hidden
        self._check(cu.cuLaunchKernel(self.function(step), *step.grid, step.threads, 1, 1, step.shared_bytes,
                                      cu.CUstream(int(stream)), (tuple(args), tuple(types)), 0))

    def on(self, stream: int) -> Launcher:
        """This launcher bound to a stream (TensorRT's, in `enqueue`)."""
        return lambda step, values: self(step, values, stream)
