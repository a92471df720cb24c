"""`export` and `demo` with outputs that would lose data: the input itself, a folder around or inside it,
an existing folder that edgeattn did not write, a file."""

from __future__ import annotations

import json
from pathlib import Path

from bad_inputs.harness import Case


def _model_folder(folder: Path) -> Path:
    """A Hugging Face-like folder with the user's other files in it (the export refuses before loading)."""
    model = folder / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (model / "notes.txt").write_text("the user's own notes\n")
    return model


def _export(out: str, *extra: str, before=None):
    def setup(folder: Path) -> list[str]:
        _model_folder(folder)
        if before is not None:
            before(folder)
        return ["export", "model", "--out", out, "--no-validate", *extra]
    return setup


def _user_folder(folder: Path) -> None:
    (folder / "mine").mkdir()
    (folder / "mine" / "thesis.tex").write_text("years of work\n")


CASES = [
    Case("export-out-is-input", _export("model", "--force"), "is, holds or sits inside the input"),
    Case("export-out-inside-input", _export("model/sub", "--force"), "sits inside the input"),
    Case("export-out-holds-input", _export(".", "--force"), "holds"),
    Case("export-out-exists", _export("mine", before=_user_folder), "--force"),
    Case("export-force-over-user-folder", _export("mine", "--force", before=_user_folder), "not an edgeattn export"),
    Case("export-out-is-file", _export("afile", "--force", before=lambda f: (f / "afile").write_text("x")),
         "is a file"),
    Case("export-disk-full", lambda f: ["export", "demo:tiny-llama", "--out", "o", "--no-validate"],
         "free space or write elsewhere", file_size=64 * 1024),
    Case("export-unknown-demo", lambda f: ["export", "demo:nope", "--out", "o"], "nope", ("o",)),
    Case("export-missing-folder", lambda f: ["export", "no/such/model", "--out", "o"], "does not exist", ("o",)),
    Case("export-bad-opset", _export("o", "--opset", "99"), "opset"),
    Case("export-sparse-nan", _export("o", "--sparse", "block:keep=nan"), "finite"),
    Case("export-prune-nan", _export("o", "--prune", "fastervlm:8,layer=nan"), "layer"),
    Case("demo-out-over-user-folder", lambda f: (_user_folder(f), (f / "mine" / "demo_tiny-llama").mkdir(),
                                                 (f / "mine" / "demo_tiny-llama" / "dense").mkdir(),
                                                 (f / "mine" / "demo_tiny-llama" / "dense" / "a.txt").write_text("x"),
                                                 ["demo", "--model", "demo:tiny-llama", "--out", "mine"])[-1],
         "not an edgeattn export"),
]
