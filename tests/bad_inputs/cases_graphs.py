"""`inspect` and `rewrite` on crafted files: unreadable graphs, external data that escapes, outputs that
would overwrite inputs, and flags or recipes with absurd or non-finite values."""

from __future__ import annotations

import os
from pathlib import Path

import onnx

from bad_inputs.builders import attention_model, write_attention, write_external
from bad_inputs.harness import Case


def _bytes(data: bytes, command: str = "inspect"):
    def setup(folder: Path) -> list[str]:
        (folder / "model.onnx").write_bytes(data)
        return [command, "model.onnx"] + (["out.onnx"] if command == "rewrite" else [])
    return setup


def _truncated(folder: Path) -> list[str]:
    data = attention_model().SerializeToString()
    (folder / "model.onnx").write_bytes(data[: len(data) // 2])
    return ["inspect", "model.onnx"]


def _external(location: str, command: str, *, link: bool = False, data_bytes: int = 64):
    def setup(folder: Path) -> list[str]:
        if link:
            os.symlink(folder.parent / "outside" / "secret.txt", folder / location)
        elif not location.startswith("/") and ".." not in location and data_bytes:
            (folder / location).write_bytes(b"\0" * data_bytes)
        write_external(folder, location)
        return [command, "model.onnx"] + (["out.onnx"] if command == "rewrite" else [])
    return setup


def _absolute(command: str):
    def setup(folder: Path) -> list[str]:
        write_external(folder, str(folder.parent / "outside" / "secret.txt"))
        return [command, "model.onnx"] + (["out.onnx"] if command == "rewrite" else [])
    return setup


def _rewrite(*extra: str, out: str = "out.onnx", before=None):
    def setup(folder: Path) -> list[str]:
        write_attention(folder)
        if before is not None:
            before(folder)
        return ["rewrite", "model.onnx", out, *extra]
    return setup


def _recipe(text: bytes):
    return _rewrite("--recipe", "recipe.toml", before=lambda f: (f / "recipe.toml").write_bytes(text))


def _data_named_like_output(folder: Path) -> list[str]:
    """IN keeps its weights in other.onnx.data: writing OUT=other.onnx (and its .data) would clobber them."""
    (folder / "other.onnx.data").write_bytes(b"\0" * 64)
    write_external(folder, "other.onnx.data")
    return ["rewrite", "model.onnx", "other.onnx", "--force"]


def _dim_bomb(folder: Path) -> list[str]:
    model = attention_model()
    for value in model.graph.input:
        for dim in value.type.tensor_type.shape.dim:
            if dim.HasField("dim_param"):
                dim.dim_param = "(" * 5000 + "s" + ")" * 5000
    onnx.save_model(model, folder / "model.onnx")
    return ["rewrite", "model.onnx", "out.onnx", "--sparse", "window:size=nan"]


def _large_model(folder: Path) -> list[str]:
    """An attention graph carrying 4 MB of weights, so its output cannot fit a nearly full disk."""
    import numpy as np
    from onnx import numpy_helper

    model = attention_model()
    model.graph.initializer.append(numpy_helper.from_array(np.zeros(1 << 20, np.float32), "ballast"))
    onnx.save_model(model, folder / "model.onnx")
    return ["rewrite", "model.onnx", "out.onnx"]


CASES = [
    Case("inspect-empty-file", _bytes(b""), "empty"),
    Case("inspect-random-bytes", _bytes(os.urandom(0) + bytes(range(256)) * 4), "cannot read"),
    Case("inspect-text-file", _bytes(b"hello, this is not a model\n"), "model.onnx"),
    Case("inspect-truncated", _truncated, "model.onnx"),
    Case("inspect-missing-file", lambda f: ["inspect", "nothing.onnx"], "no such file"),
    Case("inspect-folder", lambda f: (f.joinpath("d.onnx").mkdir(), ["inspect", "d.onnx"])[1], "d.onnx"),
    Case("rewrite-random-bytes", _bytes(b"\x08\x07" + b"\xff" * 100, "rewrite"), "model.onnx", ("out.onnx",)),
    Case("external-parent-inspect", _external("../outside/secret.txt", "inspect"), "leads outside"),
    Case("external-parent-rewrite", _external("../outside/secret.txt", "rewrite"), "leads outside", ("out.onnx",)),
    Case("external-absolute-inspect", _absolute("inspect"), "absolute path"),
    Case("external-absolute-rewrite", _absolute("rewrite"), "absolute path", ("out.onnx",)),
    Case("external-symlink-out", _external("weights.bin", "rewrite", link=True), "symlink", ("out.onnx",)),
    Case("external-missing", _external("weights.bin", "rewrite", data_bytes=0), "missing", ("out.onnx",)),
    Case("external-shorter-than-declared", _external("weights.bin", "inspect", data_bytes=10), "truncated"),
    Case("rewrite-out-is-in", _rewrite(out="model.onnx"), "overwrite the input"),
    Case("rewrite-out-is-in-forced", _rewrite("--force", out="model.onnx"), "overwrite the input"),
    Case("rewrite-out-is-in-by-other-path", _rewrite("--force", out="./sub/../model.onnx",
                                                      before=lambda f: (f / "sub").mkdir()), "overwrite the input"),
    Case("rewrite-out-clobbers-in-data", _data_named_like_output, "overwrite the input"),
    Case("rewrite-out-exists", _rewrite(before=lambda f: (f / "out.onnx").write_bytes(b"keep me")), "--force"),
    Case("rewrite-out-is-folder", _rewrite(out="dir", before=lambda f: (f / "dir").mkdir()), "is a folder"),
    Case("rewrite-out-under-a-file", _rewrite(out="afile/out.onnx", before=lambda f: (f / "afile").write_text("x")),
         "afile"),
    Case("recipe-not-utf8", _recipe(b"default_op = \"\xff\xfe\"\n"), "not UTF-8", ("out.onnx",)),
    Case("recipe-bad-toml", _recipe(b"[[site]\nop = 1\n"), "not valid TOML", ("out.onnx",)),
    Case("recipe-missing", _rewrite("--recipe", "none.toml"), "does not exist", ("out.onnx",)),
    Case("recipe-huge-layer-range", _recipe(b'[[site]]\nlayers = "0-99999999999"\n'), "beyond the largest",
         ("out.onnx",)),
    Case("recipe-huge-layer-list", _recipe(b"[[site]]\nlayers = [0, 99999999999]\n"), "must list numbers",
         ("out.onnx",)),
    Case("recipe-nan-parameter", _recipe(b'[[site]]\nop = "SkipSoftmaxAttention"\nscale_factor = nan\n'), "finite",
         ("out.onnx",)),
    Case("recipe-inf-parameter", _recipe(b'[[site]]\nop = "SkipSoftmaxAttention"\nscale_factor = inf\n'), "finite",
         ("out.onnx",)),
    Case("recipe-deep-nesting", _recipe(b"x = " + b"[" * 100000 + b"]" * 100000 + b"\n"), "recipe", ("out.onnx",)),
    Case("sparse-heads-huge-range", _rewrite("--sparse", "block:heads=0-99999999999"), "beyond the largest"),
    Case("sparse-layers-huge-range", _rewrite("--sparse", "block:layers=0-99999999999"), "beyond the largest"),
    Case("sparse-scale-nan", _rewrite("--sparse", "blasst:scale_factor=nan"), "finite"),
    Case("sparse-scale-inf", _rewrite("--sparse", "blasst:scale_factor=inf"), "finite"),
    Case("sparse-window-nan", _rewrite("--sparse", "window:size=nan"), "window"),
    Case("sparse-sinks-nan", _rewrite("--sparse", "window:size=64,sinks=nan"), "sinks"),
    Case("sparse-keep-nan", _rewrite("--sparse", "block:keep=nan"), "finite"),
    Case("sparse-unknown-method", _rewrite("--sparse", "magic:x=1"), "names no method"),
    Case("dim-name-bomb", _dim_bomb, "window"),
    Case("prune-budget-absurd", _rewrite("--prune", "fastervlm:99999999999999"), "budget k"),
    Case("prune-nan-parameter", _rewrite("--prune", "flashvlm:4,eta=nan"), "not a finite number"),
    Case("prune-huge-directions", _rewrite("--prune", "zeroth-order:4,directions=100000000"), "out of range"),
    Case("prune-layer-absurd", _rewrite("--prune", "fastervlm:4,layer=99999999999"), "out of range"),
    Case("rewrite-bad-target", _rewrite("--target", "gpu"), "--target"),
    Case("rewrite-unknown-option", _rewrite("--frobnicate"), "frobnicate"),
    Case("rewrite-disk-full", _large_model, "free some disk space", file_size=1 << 20),
]
