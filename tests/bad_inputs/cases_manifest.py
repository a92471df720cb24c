"""`run` on export folders whose manifest is hostile: paths out of the folder, wrong types, missing
fields, files that are not what they claim."""

from __future__ import annotations

from pathlib import Path

from bad_inputs.builders import fake_export, write_image
from bad_inputs.harness import Case


def _run(**fields: object):
    def setup(folder: Path) -> list[str]:
        fake_export(folder / "exp", **fields)
        write_image(folder / "img.png")
        return ["run", "exp", "--image", "img.png"]
    return setup


def _manifest_text(text: bytes):
    def setup(folder: Path) -> list[str]:
        fake_export(folder / "exp")
        (folder / "exp" / "manifest.json").write_bytes(text)
        return ["run", "exp"]
    return setup


def _truncated_component(folder: Path) -> list[str]:
    fake_export(folder / "exp")
    data = (folder / "exp" / "vision.onnx").read_bytes()
    (folder / "exp" / "vision.onnx").write_bytes(data[: len(data) // 3])
    write_image(folder / "img.png")
    return ["run", "exp", "--image", "img.png"]


def _component_links_out(folder: Path) -> list[str]:
    fake_export(folder / "exp")
    (folder / "exp" / "vision.onnx").unlink()
    (folder / "exp" / "vision.onnx").symlink_to(folder.parent / "outside" / "secret.txt")
    write_image(folder / "img.png")
    return ["run", "exp", "--image", "img.png"]


_OUT = {"vision": {"file": "../outside/secret.txt"}}
_ABS = {"vision": {"file": "/etc/passwd"}}

CASES = [
    Case("manifest-file-escapes", _run(components=_OUT), "leads outside"),
    Case("manifest-file-absolute", _run(components=_ABS), "absolute path"),
    Case("manifest-file-symlink-out", _component_links_out, "symlink"),
    Case("manifest-file-not-a-string", _run(components={"vision": {"file": 7}}), "components.vision"),
    Case("manifest-tokenizer-escapes", _run(tokenizer="../outside"), "leads outside"),
    Case("manifest-not-json", _manifest_text(b"{not json"), "not valid JSON"),
    Case("manifest-a-list", _manifest_text(b"[1, 2, 3]"), "not a JSON object"),
    Case("manifest-not-utf8", _manifest_text(b'{"format": "\xff"}'), "UTF-8"),
    Case("manifest-wrong-format", _run(format="something/9"), "format"),
    Case("manifest-unknown-family", _run(family="spaceship"), "family"),
    Case("manifest-no-components", _run(components=[]), "components"),
    Case("manifest-vision-size-string", _run(vision={"image_size": "big", "mean": [0, 0, 0], "std": [1, 1, 1]}),
         "vision.image_size"),
    Case("manifest-vision-size-absurd", _run(vision={"image_size": 10**9, "mean": [0, 0, 0], "std": [1, 1, 1]}),
         "vision.image_size"),
    Case("manifest-vision-std-zero", _run(vision={"image_size": 32, "mean": [0, 0, 0], "std": [0, 0, 0]}),
         "vision.std"),
    Case("manifest-decoder-missing-geometry", _run(family="decoder", components={
        "embed": {"file": "vision.onnx"}, "decoder": {"file": "vision.onnx"}}), "'decoder'"),
    Case("manifest-vlm-missing-component", _run(family="vlm"), "'embed' component"),
    Case("manifest-truncated-component", _truncated_component, "vision.onnx"),
    Case("run-not-a-folder", lambda f: ["run", "nowhere"], "not a folder"),
]
