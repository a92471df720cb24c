"""The package's shape, measured on its code: no import cycle between modules, no import from a lower
layer to a higher one (the same order as the import-linter contract in pyproject.toml, checked here on
the import graph itself, lazy imports inside functions included), kernels importable without onnx-ir."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[1]


def _layers() -> list[set[str]]:
    """The contract's layers, top first; each a set of the packages (or modules) on that level."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    (contract,) = config["tool"]["importlinter"]["contracts"]
    return [{name.strip() for name in layer.split("|")} for layer in contract["layers"]]


def _edges() -> set[tuple[str, str]]:
    graph = grimp.build_graph("edgeattn", cache_dir=None)
    return {(module, imported) for module in graph.modules
            for imported in graph.find_modules_directly_imported_by(module) if imported.startswith("edgeattn")}


def _cycles(edges: set[tuple[str, str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    graph: dict[str, list[str]] = {}
    for a, b in edges:
        graph.setdefault(a, []).append(b)
        graph.setdefault(b, [])
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(graph[root]))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        item = stack.pop()
                        on_stack.discard(item)
                        component.append(item)
                        if item == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(graph[child])))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return found


def _level(module: str, layers: list[set[str]]) -> int | None:
    for level, names in enumerate(layers):
        if any(module == name or module.startswith(name + ".") for name in names):
            return level
    return None


def test_no_import_cycles() -> None:
    assert _cycles(_edges()) == []


def test_every_module_sits_in_a_layer() -> None:
    layers = _layers()
    graph = grimp.build_graph("edgeattn", cache_dir=None)
    homeless = sorted(m for m in graph.modules if m not in ("edgeattn", "edgeattn.py") and _level(m, layers) is None)
    assert homeless == []


def test_imports_point_down() -> None:
    layers = _layers()
    upward = []
    for a, b in _edges():
        la, lb = _level(a, layers), _level(b, layers)
        if la is None or lb is None:
            continue  # the package root (edgeattn.__version__) belongs to no layer
        same_level_other_package = la == lb and len(layers[la]) > 1 and not any(
            a.startswith(n) and b.startswith(n) for n in layers[la])
        if lb < la or same_level_other_package:
            upward.append(f"{a} -> {b}")
    assert upward == []


def test_kernels_import_without_onnx_ir() -> None:
    code = ("import sys; sys.modules['onnx_ir'] = None; sys.modules['onnx'] = None\n"
            "import edgeattn.kernels.skip_softmax.ops, edgeattn.kernels.block_sparse.ops, edgeattn.kernels.tokens.ops\n"
            "import edgeattn.kernels.skip_softmax.aot, edgeattn.kernels.block_sparse.aot, edgeattn.kernels.tokens.aot\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]


_TOY_SPEC = '''
"""ToyAttention: attention under another name (its body is edgeattn.Attention's, renamed)."""
from edgeattn.ops.attention.spec import ATTRIBUTES, INPUTS, OUTPUTS, infer_shapes

NAME = "ToyAttention"
DOC = "a toy op that proves an op needs only its folder and a registry line"
'''

_TOY_INIT = '''
from edgeattn.ops.attention.function import build_function as attention_body, function_key
from edgeattn.ops.attention.reference import attention_reference
from edgeattn.ops.attention.trt import to_trt_form
from edgeattn.ops.spec import declare
from toy_ops.toy_attention import spec


def build_function(call, target, overload):
    body = attention_body(call, target, overload)
    body.name = spec.NAME
    return body


SPEC = declare(spec, kind="attention", reference=attention_reference, function_key=function_key,
               build_function=build_function, to_trt_form=to_trt_form)
'''


def test_a_new_op_needs_its_folder_and_a_registry_line(tmp_path, monkeypatch) -> None:
    """A toy op in its own folder (outside edgeattn), registered by one more package name, is listed,
    chosen by a recipe, rewritten into, given its function body and run by onnxruntime with parity."""
    import onnx

    from edgeattn.graphs import find_sites, load, rewrite, save
    from edgeattn.ops.registry import OP_PACKAGES, from_packages
    from graphs_golden import RTOL_FLOAT32, Dialect, build, parity

    folder = tmp_path / "toy_ops" / "toy_attention"
    folder.mkdir(parents=True)
    (tmp_path / "toy_ops" / "__init__.py").write_text("")
    (folder / "spec.py").write_text(_TOY_SPEC)
    (folder / "__init__.py").write_text(_TOY_INIT)
    monkeypatch.syspath_prepend(str(tmp_path))

    registry = from_packages((*OP_PACKAGES, "toy_ops.toy_attention"))  # the registry line
    assert registry.names()[-1] == "ToyAttention"
    golden = build(Dialect(layers=2, heads=4, kv_heads=2, gqa=True))
    onnx.save_model(golden.model, tmp_path / "model.onnx")
    model, report = rewrite(load(tmp_path / "model.onnx"), {"default_op": "ToyAttention"}, registry=registry,
                            component="decoder")
    assert [item.op for item in report.rewritten] == ["ToyAttention"] * 2
    save(model, tmp_path / "toy.onnx")
    assert find_sites(load(tmp_path / "toy.onnx")).edgeattn_ops == {"ToyAttention": 2}
    assert parity(str(tmp_path / "model.onnx"), str(tmp_path / "toy.onnx"), golden.feeds()) < RTOL_FLOAT32


def test_every_op_names_kernel_families_that_exist() -> None:
    import importlib.util

    from edgeattn.ops.registry import default_registry

    for op in default_registry():
        assert op.kernels, f"{op.name} names no kernel family"
        for family in op.kernels:
            assert importlib.util.find_spec(f"edgeattn.kernels.{family}") is not None, (op.name, family)
