"""`run` with hostile prompts, images and option values, and `export --prune ...,debias=FILE` with hostile
debias weight files."""

from __future__ import annotations

import atexit
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path
from typing import Callable

import numpy as np

from bad_inputs.builders import fake_export, write_image
from bad_inputs.harness import Case

# Real exports (tiny random models, --no-validate), made once per test process on first use and copied
# into each case folder: exporting takes 10-40 s, far too slow to repeat per case.
_CACHE = Path(tempfile.gettempdir()) / f"edgeattn-bad-run-exports-{os.getpid()}"
atexit.register(shutil.rmtree, _CACHE, True)
EXPORTS = {
    "llama": ["demo:tiny-llama"],
    "llava": ["demo:tiny-llava", "--prune", "flashvlm:16,dynamic=1"],
}


def _export(kind: str, folder: Path) -> str:
    """Copy the cached export of `kind` to `folder/exp` (exporting it first if this process has not)."""
    cached = _CACHE / kind
    if not (cached / "manifest.json").is_file():
        shutil.rmtree(cached, ignore_errors=True)
        _CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "edgeattn.cli.main", "export", *EXPORTS[kind], "--out", str(cached),
                        "--no-validate", "--json"], check=True, capture_output=True)
    shutil.copytree(cached, folder / "exp")
    return "exp"


def _generate(*args: str, kind: str = "llama", image: Callable[[Path], None] | None = None):
    def setup(folder: Path) -> list[str]:
        exp = _export(kind, folder)
        if image is not None:
            image(folder)
        return ["run", exp, *args]
    return setup


def _vision(image: Callable[[Path], None], *args: str):
    """`run` on a fake vision export with the image `image` writes to img.png (or img)."""
    def setup(folder: Path) -> list[str]:
        fake_export(folder / "exp")
        image(folder)
        return ["run", "exp", "--image", "img.png", *args]
    return setup


def _png(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height RGB pixels, with one tiny (short) IDAT chunk."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


def _write(data: bytes, name: str = "img.png") -> Callable[[Path], None]:
    return lambda folder: (folder / name).write_bytes(data)


def _truncated_png(folder: Path) -> None:
    from PIL import Image

    pixels = (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    (folder / "img.png").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])


def _image(folder: Path) -> None:
    write_image(folder / "img.png", 64)


def _debias(name: str, content: bytes | Callable[[Path], None]):
    """`export demo:tiny-vit --prune fastervlm:4,debias=NAME` with a hostile weights file."""
    def setup(folder: Path) -> list[str]:
        if callable(content):
            content(folder / name)
        else:
            (folder / name).write_bytes(content)
        return ["export", "demo:tiny-vit", "--out", "o", "--no-validate", "--prune", f"fastervlm:4,debias={name}"]
    return setup


def _npy(array: np.ndarray, cut: int = 0) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        buffer = io.BytesIO()
        np.save(buffer, array, allow_pickle=True)
        data = buffer.getvalue()
        path.write_bytes(data[: len(data) - cut])
    return write


def _sparse(size: int) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        with path.open("wb") as handle:
            handle.truncate(size)
    return write


SECRET = b"password=hunter2 0.5 0.5"
LONG = "a" * 5000  # 5000 byte tokens: far past demo:tiny-llama's 1024 positions

CASES = [
    # prompts and generation lengths (demo:tiny-llama: byte tokens, 1024 positions)
    Case("run-prompt-not-utf8", _generate("--prompt", "caf\udce9 au lait"), "--prompt is not valid UTF-8 text"),
    Case("run-prompt-too-long", _generate("--prompt", LONG), "the prompt (5000 tokens) plus --max-new-tokens (16) "
                                                            "exceeds the model's 1024 positions"),
    Case("run-prompt-plus-new-tokens-too-long", _generate("--prompt", "a" * 1000, "--max-new-tokens", "100"),
         "plus --max-new-tokens (100) exceeds the model's 1024 positions"),
    Case("run-prompt-empty", _generate("--prompt", ""), "the prompt is empty"),
    Case("run-two-prompts-to-a-decoder", _generate("--prompt", "a", "--prompt", "b"), "exactly one --prompt"),
    Case("run-max-new-tokens-zero", _generate("--prompt", "hi", "--max-new-tokens", "0"),
         "--max-new-tokens must be from 1 to 1048576 (got 0)"),
    Case("run-max-new-tokens-negative", _generate("--prompt", "hi", "--max-new-tokens", "-5"), "(got -5)"),
    Case("run-max-new-tokens-absurd", _generate("--prompt", "hi", "--max-new-tokens", str(10**12)),
         "(got 1000000000000)"),
    Case("run-threads-absurd", _generate("--prompt", "hi", "--threads", "1000000"), "--threads must be from 1 to"),
    Case("run-image-on-text-decoder", _generate("--prompt", "hi", "--image", "img.png", image=_image),
         "--image needs a VLM export"),
    # --image-tokens (demo:tiny-llava pruned with a run-time budget: 1 to 64)
    Case("run-image-tokens-zero", _generate("--prompt", "hi", "--image", "img.png", "--image-tokens", "0",
                                            kind="llava", image=_image), "budget must be from 1 to 64 (got 0)"),
    Case("run-image-tokens-negative", _generate("--prompt", "hi", "--image", "img.png", "--image-tokens", "-3",
                                                kind="llava", image=_image), "(got -3)"),
    Case("run-image-tokens-too-many", _generate("--prompt", "hi", "--image", "img.png", "--image-tokens", "100000",
                                                kind="llava", image=_image), "budget must be from 1 to 64 (got 100000)"),
    Case("run-image-tokens-on-a-vision-encoder", _vision(_image, "--image-tokens", "3"),
         "--image-tokens sets a VLM's visual-token budget"),
    Case("run-prompt-on-a-vision-encoder", _vision(_image, "--prompt", "hi"), "--prompt needs a language model"),
    # images (a fake vision export: the image is refused before any session is made)
    Case("run-image-truncated", _vision(_truncated_png), "is truncated or corrupt"),
    Case("run-image-bomb", _vision(_write(_png(40000, 40000))), "a decompression bomb"),
    Case("run-image-bomb-warning-size", _vision(_write(_png(10000, 10000))), "a decompression bomb"),
    Case("run-image-huge-header-truncated-data", _vision(_write(_png(2000, 2000))), "is truncated or corrupt"),
    Case("run-image-is-a-folder", _vision(lambda f: (f / "img.png").mkdir()), "is a folder; give an image file"),
    Case("run-image-random-bytes", _vision(_write(bytes(range(256)) * 16)), "not an image file Pillow can read"),
    Case("run-image-empty", _vision(_write(b"")), "not an image file Pillow can read"),
    Case("run-image-missing", lambda f: (fake_export(f / "exp"), ["run", "exp", "--image", "none.png"])[1],
         "does not exist"),
    # debias weights for pruning (read at export time): never echoed, bounded before reading
    Case("debias-text-not-numbers", _debias("w.txt", SECRET), "entry 1 is not a number", ("o",)),
    Case("debias-json-not-a-list", _debias("w.json", json.dumps({"weights": [1, 2]}).encode()),
         "is not a flat list of numbers", ("o",)),
    Case("debias-json-nested", _debias("w.json", b"[[1, 2], [3]]"), "is not a flat list of numbers", ("o",)),
    Case("debias-json-bad", _debias("w.json", b"[1, 2,"), "is not valid JSON", ("o",)),
    Case("debias-not-utf8", _debias("w.txt", b"0.5 \xff\xfe 0.5"), "is not UTF-8 text", ("o",)),
    Case("debias-npy-truncated", _debias("w.npy", _npy(np.ones(5000, np.float32), cut=100)), "is truncated", ("o",)),
    Case("debias-npy-pickled-objects", _debias("w.npy", _npy(np.array([1, "x"], dtype=object))), "not numbers",
         ("o",)),
    Case("debias-npy-garbage", _debias("w.npy", SECRET), "not a valid .npy array", ("o",)),
    Case("debias-too-large", _debias("w.txt", _sparse(65 * 1024**2)), "more than the 67108864", ("o",)),
    Case("debias-is-a-folder", _debias("w.txt", lambda p: p.mkdir()), "is a folder", ("o",)),
    Case("debias-wrong-count", _debias("w.txt", b"1 2 3"), "holds 3 weights", ("o",)),
]
