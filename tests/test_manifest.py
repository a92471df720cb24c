"""The typed manifest: what an export writes reads back unchanged, typed, and a bad field is one line."""

from __future__ import annotations

import json

import pytest

from edgeattn.manifest import FORMAT, SCHEMA_VERSION, Manifest, ManifestError, read_manifest, write_manifest


def test_an_export_reads_back_typed_and_unchanged(exported) -> None:
    folder = exported("demo:tiny-llava")
    document = json.loads((folder / "manifest.json").read_text())
    manifest = read_manifest(folder)
    assert manifest.to_json() == document and FORMAT.endswith(f"/{SCHEMA_VERSION}")
    assert manifest.family == "vlm" and manifest.file_of("decoder") == "decoder.onnx"
    assert manifest.decoder.num_kv_heads == 2 and manifest.decoder.max_positions == document["decoder"]["max_positions"]
    assert manifest.vision.preprocess() == {k: document["vision"][k] for k in ("image_size", "mean", "std")}
    assert manifest.image_token_count == 64 and manifest.components["vision"].input_names() == ["pixel_values"]


@pytest.mark.parametrize(("change", "message"), [
    (lambda d: d.pop("family"), "field 'family'"),
    (lambda d: d["decoder"].update(num_layers="2"), "decoder.num_layers"),
    (lambda d: d["vision"].update(mean=[0, 0]), "vision.mean"),
    (lambda d: d.update(image_token_count=-1), "image_token_count"),
    (lambda d: d["components"]["vision"].update(file="../x.onnx"), "leads outside"),
    (lambda d: d.update(pruning=[1]), "field 'pruning'"),
    (lambda d: d.update(dtype="fp8"), "field 'dtype'"),
    (lambda d: d.update(dtype=["fp16"]), "field 'dtype'"),
])
def test_a_bad_field_is_named(exported, tmp_path, change, message) -> None:
    import shutil

    folder = tmp_path / "copy"
    shutil.copytree(exported("demo:tiny-llava"), folder)
    document = json.loads((folder / "manifest.json").read_text())
    change(document)
    with pytest.raises(ManifestError, match=message.replace(".", r"\.")):
        Manifest.from_json(document, folder)
    with pytest.raises(ManifestError):
        write_manifest(folder, document)  # nothing invalid is ever written
    assert read_manifest(folder).family == "vlm"


@pytest.mark.parametrize(("written", "read"), [(None, "fp32"), ("float32", "fp32"), ("fp16", "fp16"), ("bf16", "bf16")])
def test_dtype_reads_typed_and_older_manifests_are_fp32(exported, written, read) -> None:
    """`dtype` is the `export --dtype` name; manifests from before it (absent, or "float32") are fp32."""
    folder = exported("demo:tiny-llava")
    document = json.loads((folder / "manifest.json").read_text())
    assert document["dtype"] == "fp32" and read_manifest(folder).float_type == "float32"
    if written is None:
        document.pop("dtype")
    else:
        document["dtype"] = written
    manifest = Manifest.from_json(document, folder)
    assert manifest.dtype == read and manifest.to_json() == document
