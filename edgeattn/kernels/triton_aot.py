"""Triton support shared by the plugin kernels: run mode, the checks every torch-facing call makes,
and ahead-of-time compilation.

Run mode. Triton decides when it is first imported whether kernels are compiled or interpreted
(``TRITON_INTERPRET``); :func:`is_interpreted` tells which one a kernel got.

Ahead-of-time compilation. :func:`compile_aot` compiles a ``JITFunction`` for one GPU architecture
with ``triton.compile(ASTSource(...), target=GPUTarget("cuda", arch, 32))`` (no GPU needed; ptxas
ships with triton) and checks what a TensorRT AOT plugin relies on: the PTX targets the
architecture, the kernel's shared memory fits the architecture's per-block limit, the kernel needs
no global/profile scratch (TensorRT passes null for Triton's two trailing hidden pointers), and its
runtime parameters follow TensorRT's launch order ``(inputs..., int32 scalars..., outputs...)``.
:meth:`AotKernel.launch_signature` is the JSON record a TensorRT adapter reads.

Works with the Triton 3.6 to 3.9 spelling of the API (``ASTSource(fn, signature, constexprs, attrs)``
with divisibility hints as ``{(index,): [["tt.divisibility", 16]]}``); earlier spellings are tried
as a fallback. Triton is imported lazily: this module imports without it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from pathlib import Path
from typing import Any, Literal

from ..errors import EdgeAttnError, RuntimeUnavailableError

__all__ = [
    "DEFAULT_ARCHS",
    "TARGETS",
    "AotBuildError",
    "AotKernel",
    "AotTarget",
    "KernelParam",
    "check_interpreter",
    "check_kernel_device",
    "check_tile",
    "compile_aot",
    "compile_fitting",
    "is_interpreted",
    "last_dim_contiguous",
    "require_triton",
    "upcast_dot",
]


class AotBuildError(EdgeAttnError):
    """A kernel configuration that cannot be built for the asked-for target (e.g. too much shared memory)."""


def require_triton() -> ModuleType:
    """Import triton or say how to get it."""
    try:
        import triton
    except ImportError as exc:  # pragma: no cover - triton is installed in CI
        raise RuntimeUnavailableError(
            "this operation needs Triton; install the kernels extra: pip install 'edgeattn[kernels]'"
        ) from exc
    return triton


# --------------------------------------------------------------------------------------------- mode


def is_interpreted(fn: Any) -> bool:
    """Whether a ``@triton.jit`` kernel runs in the Triton interpreter.

    Triton fixes the mode when it is first imported (``TRITON_INTERPRET=1`` in the environment):
    its own ``triton.language`` helpers (``tl.sum``, ``tl.max``, ``tl.cdiv``...) are decorated then,
    so one process runs every kernel compiled or every kernel interpreted, never both. Tests that
    run kernels on CPU set the variable before anything imports triton (``tests/conftest.py``) and
    compile ahead of time in a subprocess.
    """
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(fn, InterpretedFunction)


def check_kernel_device(device: Any, what: str) -> None:
    """Kernels run on CUDA, or on CPU in the Triton interpreter: refuse other devices; need Triton.
    ``what`` starts the sentence, e.g. "block-sparse kernels run"."""
    if device.type not in ("cuda", "cpu"):
        raise EdgeAttnError(f"{what} on CUDA (or CPU in the interpreter); got {device}")
    require_triton()


def check_interpreter(device: Any, kernel: Any) -> None:
    """CPU tensors need the interpreter, which only the environment can choose before triton is imported."""
    if device.type == "cpu" and not is_interpreted(kernel):
        raise RuntimeUnavailableError(
            "CPU tensors run in the Triton interpreter, which must be chosen before triton is imported: "
            "set TRITON_INTERPRET=1 in the environment, or move the tensors to a CUDA device"
        )


def check_tile(name: str, size: int, why: str = " (tensor-core tiles)") -> None:
    """Head sizes and tile sizes are powers of two in [16, 256]."""
    if size & (size - 1) or not 16 <= size <= 256:
        raise EdgeAttnError(f"{name} must be a power of two in [16, 256]{why}; got {size}")


def upcast_dot(dtype: Any, kernel: Any) -> bool:
    """Whether a kernel multiplies in fp32: fp32 inputs do, in IEEE fp32 (not TF32, like torch's default
    matmul); bf16 does too in the Triton interpreter, whose dot cannot take bf16 (exact: bf16 products
    fit in fp32)."""
    import torch

    return dtype == torch.float32 or (dtype == torch.bfloat16 and is_interpreted(kernel))


def last_dim_contiguous(x: Any) -> Any:
    """A tensor whose last axis is contiguous (the kernels' loads assume stride 1 there)."""
    return x if x.stride(-1) == 1 else x.contiguous()


# ---------------------------------------------------------------------------------------------- AOT


@dataclass(frozen=True)
class AotTarget:
    """A CUDA architecture an engine is built for."""

    arch: int
    max_shared_bytes: int
    """Largest dynamic shared memory one block may opt into (CUDA C Programming Guide, per
    compute capability: 7.5 = 64 KB, 8.0/8.7 = 163 KB, 8.6/8.9/12.x = 99 KB, 9.0 = 227 KB)."""
    description: str

    @property
    def ptx_target(self) -> str:
        # Triton emits the architecture-specific "a" variant from sm_90 on (wgmma, TMA).
        return f"sm_{self.arch}a" if self.arch >= 90 else f"sm_{self.arch}"


TARGETS: dict[int, AotTarget] = {
    75: AotTarget(75, 64 * 1024, "Turing: T4, RTX 20xx (fp16 only: no bf16 tensor cores)"),
    80: AotTarget(80, 163 * 1024, "Ampere: A100, A30"),
    86: AotTarget(86, 99 * 1024, "Ampere: RTX 30xx, A10, A40"),
    87: AotTarget(87, 163 * 1024, "Jetson AGX Orin / Orin NX / Orin Nano (Ampere GA10B)"),
    89: AotTarget(89, 99 * 1024, "Ada: RTX 40xx, L4, L40S"),
    90: AotTarget(90, 227 * 1024, "Hopper: H100, H200, GH200"),
    120: AotTarget(120, 99 * 1024, "Blackwell: RTX 50xx, RTX PRO"),
    121: AotTarget(121, 99 * 1024, "Blackwell: DGX Spark (GB10)"),
}

DEFAULT_ARCHS = (87, 89, 90)
"""What the ``python -m edgeattn.kernels.<family>.aot`` scripts build without --arch: Jetson Orin, Ada, Hopper
(`edgeattn compile` builds exactly the targets of the engine)."""

ParamRole = Literal["input", "scalar", "output"]


@dataclass(frozen=True)
class KernelParam:
    """One runtime (non-constexpr) parameter of a kernel, in launch order.

    ``type`` is Triton's spelling (``*fp16``, ``*fp32``, ``*i32``, ``i32``); ``divisible_by_16``
    compiles the kernel assuming the value (a pointer's address or an integer) is a multiple of 16,
    which the launcher must guarantee; ``value`` says how a launcher computes a scalar (a formula in
    the op's shape symbols), for the record.
    """

    name: str
    type: str
    role: ParamRole
    divisible_by_16: bool = False
    value: str | None = None


@dataclass(frozen=True)
class AotKernel:
    """One compiled kernel and everything needed to launch it without Python."""

    kernel: str
    """The PTX ``.entry`` name."""
    target: AotTarget
    ptx: str
    cubin: bytes
    shared_bytes: int
    num_warps: int
    num_stages: int
    ptx_version: str
    params: tuple[KernelParam, ...]
    hidden_params: tuple[str, ...]
    """Pointers Triton appends after the declared ones (global and profile scratch from 3.5 on);
    their scratch sizes are checked to be 0, so a launcher may pass null (TensorRT does)."""
    constexprs: Mapping[str, Any] = field(default_factory=dict)
    triton_version: str = ""
    registers: int | None = None
    """Registers per thread and spilled bytes, from ``ptxas -v`` (None when ptxas was not found)."""
    spill_bytes: int | None = None

    @property
    def block_threads(self) -> int:
        return self.num_warps * 32

    def launch_signature(self, grid: Sequence[str], **extra: Any) -> dict[str, Any]:
        """A JSON-able record of how to launch this kernel (read by the TensorRT adapter)."""
        return {
            "kernel": self.kernel,
            "arch": self.target.arch,
            "ptx_target": self.target.ptx_target,
            "ptx_version": self.ptx_version,
            "triton_version": self.triton_version,
            "num_warps": self.num_warps,
            "num_stages": self.num_stages,
            "block": [self.block_threads, 1, 1],
            "grid": list(grid),
            "shared_bytes": self.shared_bytes,
            "max_shared_bytes": self.target.max_shared_bytes,
            "registers": self.registers,
            "spill_bytes": self.spill_bytes,
            "params": [
                {"name": p.name, "type": p.type, "role": p.role, "divisible_by_16": p.divisible_by_16}
                | ({"value": p.value} if p.value is not None else {})
                for p in self.params
            ],
            "hidden_params": list(self.hidden_params),
            "constexprs": {k: _jsonable(v) for k, v in self.constexprs.items()},
            **extra,
        }


def _jsonable(value: Any) -> Any:
    return value if value is None or isinstance(value, (bool, int, float, str)) else repr(value)


def _check_param_order(fn: Any, params: Sequence[KernelParam], constexprs: Mapping[str, Any]) -> None:
    declared = list(fn.arg_names)
    runtime = [p.name for p in params]
    if sorted(runtime + list(constexprs)) != sorted(declared):
        missing = sorted(set(declared) - set(runtime) - set(constexprs))
        unknown = sorted((set(runtime) | set(constexprs)) - set(declared))
        raise AotBuildError(
            f"{fn.__name__}: parameters must be split exactly into runtime params and constexprs; "
            f"missing {missing}, unknown {unknown}"
        )
    order = [name for name in declared if name not in constexprs]
    if order != runtime:
        raise AotBuildError(f"{fn.__name__}: runtime params {runtime} are not in declaration order {order}")
    ranks = {"input": 0, "scalar": 1, "output": 2}
    roles = [ranks[p.role] for p in params]
    if roles != sorted(roles):
        raise AotBuildError(
            f"{fn.__name__}: TensorRT launches (inputs..., scalars..., outputs...); got "
            + ", ".join(f"{p.name}:{p.role}" for p in params)
        )
    for p in params:
        is_pointer = p.type.startswith("*")
        if is_pointer == (p.role == "scalar"):
            raise AotBuildError(f"{fn.__name__}: param {p.name} of type {p.type} cannot be a {p.role}")
        if p.role == "scalar" and p.type != "i32":
            raise AotBuildError(f"{fn.__name__}: TensorRT passes only int32 scalars; {p.name} is {p.type}")


def _ast_source(triton: ModuleType, fn: Any, signature: dict, constexprs: dict, attrs: dict) -> Any:
    ast_source = triton.compiler.ASTSource
    try:
        return ast_source(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
    except TypeError:  # Triton < 3.2 spelled it `constants` and took hints differently
        return ast_source(fn=fn, signature=signature, constants=constexprs)


def _ptxas_resources(ptx: str, target: AotTarget) -> tuple[int | None, int | None]:
    """Registers per thread and spill bytes (stores + loads) reported by Triton's bundled ptxas."""
    import subprocess
    import tempfile

    try:
        from triton.backends.nvidia import compiler as nv

        try:
            tool = nv.get_ptxas(target.arch)  # Triton >= 3.6 picks ptxas by architecture
        except TypeError:
            tool = nv.get_ptxas()
        with tempfile.TemporaryDirectory() as tmp:
            src = f"{tmp}/k.ptx"
            with open(src, "w") as f:
                f.write(ptx)
            arch = target.ptx_target
            proc = subprocess.run([tool.path, f"-arch={arch}", "-v", src, "-o", f"{tmp}/k.cubin"],
                                  capture_output=True, text=True, timeout=120)  # fmt: skip
    except Exception:  # noqa: BLE001 - a report, not a check: absent ptxas leaves it unknown
        return None, None
    regs = re.search(r"Used (\d+) registers", proc.stderr)
    spills = [int(n) for n in re.findall(r"(\d+) bytes spill (?:stores|loads)", proc.stderr)]
    return (int(regs.group(1)) if regs else None), (sum(spills) if regs else None)


_ENTRY = re.compile(r"\.entry\s+([\w$]+)\s*\((.*?)\)", re.S)


def compile_aot(
    fn: Any,
    *,
    params: Sequence[KernelParam],
    constexprs: Mapping[str, Any],
    arch: int,
    num_warps: int,
    num_stages: int,
    ptx_version: int | None = None,
) -> AotKernel:
    """Compile ``fn`` (a compiled-mode ``JITFunction``) for ``sm_{arch}`` and check the result.

    ``params`` lists the runtime parameters in declaration order; ``constexprs`` gives every other
    parameter a value (a runtime-typed parameter, e.g. a float scale, may be given one too: it is
    then compiled in as a constant, which is how float attributes reach an AOT kernel).
    ``ptx_version`` (e.g. 85 for a CUDA 12.6 driver on JetPack 6) caps the PTX ISA.
    """
    triton = require_triton()
    from triton.backends.compiler import GPUTarget

    if is_interpreted(fn) or not hasattr(fn, "arg_names"):
        raise AotBuildError(
            f"{getattr(fn, '__name__', fn)} is not a compiled-mode @triton.jit kernel (TRITON_INTERPRET was set "
            "when triton was imported); compile ahead of time in a process without it"
        )
    if arch not in TARGETS:
        raise AotBuildError(f"no AOT target sm_{arch}; known: {', '.join(f'sm_{a}' for a in TARGETS)}")
    target = TARGETS[arch]
    _check_param_order(fn, params, constexprs)
    by_name = {p.name: p for p in params}
    signature = {name: (by_name[name].type if name in by_name else "constexpr") for name in fn.arg_names}
    attrs = {
        (fn.arg_names.index(p.name),): [["tt.divisibility", 16]] for p in params if p.divisible_by_16
    }
    options: dict[str, Any] = {"num_warps": num_warps, "num_stages": num_stages, "enable_fp_fusion": True}
    if ptx_version is not None:
        options["ptx_version"] = ptx_version
    src = _ast_source(triton, fn, signature, dict(constexprs), attrs)
    compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)
    meta = compiled.metadata
    ptx = compiled.asm["ptx"]

    found = re.findall(r"^\s*\.target\s+(\w+)", ptx, re.M)
    if found != [target.ptx_target]:
        raise AotBuildError(f"{fn.__name__}: PTX targets {found}, expected {target.ptx_target}")
    entry = _ENTRY.search(ptx)
    if entry is None or entry.group(1) != meta.name:
        raise AotBuildError(f"{fn.__name__}: PTX has no .entry {meta.name}")
    n_ptx_params = len(re.findall(r"\.param\s", entry.group(2)))
    n_hidden = n_ptx_params - len(params)
    if n_hidden < 0:
        raise AotBuildError(f"{fn.__name__}: PTX has {n_ptx_params} params for {len(params)} declared")
    hidden = ("global_scratch", "profile_scratch", *(f"hidden_{i}" for i in range(2, n_hidden)))[:n_hidden]
    for size_field in ("global_scratch_size", "profile_scratch_size"):
        if getattr(meta, size_field, 0):
            raise AotBuildError(f"{fn.__name__}: needs {size_field}={getattr(meta, size_field)}; TensorRT passes null")
    if getattr(meta, "num_ctas", 1) != 1:
        raise AotBuildError(f"{fn.__name__}: num_ctas={meta.num_ctas}; only single-CTA launches are supported")
    if meta.shared > target.max_shared_bytes:
        raise AotBuildError(
            f"{fn.__name__} (num_warps={num_warps}, num_stages={num_stages}) needs {meta.shared} bytes of shared "
            f"memory; sm_{arch} allows {target.max_shared_bytes} per block: try fewer stages or smaller tiles"
        )
    version = re.search(r"^\s*\.version\s+(\S+)", ptx, re.M)
    registers, spill_bytes = _ptxas_resources(ptx, target)
    return AotKernel(
        kernel=meta.name,
        target=target,
        ptx=ptx,
        cubin=bytes(compiled.asm.get("cubin", b"")),
        shared_bytes=int(meta.shared),
        num_warps=num_warps,
        num_stages=num_stages,
        ptx_version=version.group(1) if version else "",
        params=tuple(params),
        hidden_params=hidden,
        constexprs=dict(constexprs),
        triton_version=str(getattr(triton, "__version__", "")),
        registers=registers,
        spill_bytes=spill_bytes,
    )


def compile_fitting(fn: Any, params: Sequence[KernelParam], constexprs: Mapping[str, Any], arch: int, warps: int,
                    stages: int, ptx_version: int | None = None) -> AotKernel:  # fmt: skip
    """`compile_aot` with the most pipeline stages (<= ``stages``) whose shared memory fits ``arch``."""
    last: AotBuildError | None = None
    for n in range(stages, 0, -1):
        try:
            return compile_aot(fn, params=params, constexprs=constexprs, arch=arch, num_warps=warps, num_stages=n,
                               ptx_version=ptx_version)  # fmt: skip
        except AotBuildError as exc:
            if "shared memory" not in str(exc):
                raise
            last = exc
    assert last is not None
    raise last


def write_build(record: dict[str, Any], name: str, arch: int, out_dir: Path) -> Path:
    """Write a build record as ``<name>.sm<arch>.json`` plus one ``.ptx`` per kernel; returns the JSON path.

    The PTX text moves out of the record into its file; the record names the file instead."""
    import json

    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{name}.sm{arch}"
    for entry in record["kernels"]:
        ptx_path = out_dir / f"{stem}.{entry['kernel']}.ptx"
        ptx_path.write_text(entry.pop("ptx"))
        entry["ptx_file"] = ptx_path.name
    path = out_dir / f"{stem}.json"
    path.write_text(json.dumps(record, indent=1) + "\n")
    return path


def build_all(builds: Sequence[tuple[int, Any]], write: Any, out_dir: Path, ptx_version: int | None) -> int:
    """Write every (arch, build) with ``write(build, arch, out_dir, ptx_version=...)``, print one line per
    kernel (target, shared memory, warps, registers, spills) and return 1 if any build failed."""
    import json
    import sys

    failed = 0
    for arch, b in builds:
        try:
            path = write(b, arch, out_dir, ptx_version=ptx_version)
        except AotBuildError as exc:
            failed += 1
            print(f"sm_{arch} {b.name}: FAILED: {exc}", file=sys.stderr)
            continue
        for k in json.loads(path.read_text())["kernels"]:
            print(f"sm_{arch} {b.name} {k['kernel']}: {k['ptx_target']} shared={k['shared_bytes']}"
                  f"/{k['max_shared_bytes']} warps={k['num_warps']} stages={k.get('num_stages')} "
                  f"regs={k['registers']} spills={k['spill_bytes']}", flush=True)  # fmt: skip
    return 1 if failed else 0
