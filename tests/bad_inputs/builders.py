"""Small files the hostile cases start from: a valid attention graph, external data, a fake export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def attention_model() -> onnx.ModelProto:
    """A tiny eager attention site (the golden builder of the graph tests)."""
    from graphs_golden import Dialect, build

    return build(Dialect(layers=1, heads=2, kv_heads=2)).model


def write_attention(folder: Path, name: str = "model.onnx") -> str:
    onnx.save_model(attention_model(), folder / name)
    return name


def write_external(folder: Path, location: str, *, name: str = "model.onnx", data_bytes: int | None = None) -> str:
    """A one-initializer model whose weight [16] float32 lives in `location`; writes `location` (inside
    the folder, `data_bytes` long, default 64) unless it is absolute or leads out."""
    weight = numpy_helper.from_array(np.zeros(16, np.float32), "w")
    weight.ClearField("raw_data")
    weight.data_location = TensorProto.EXTERNAL
    entry = weight.external_data.add()
    entry.key, entry.value = "location", location
    graph = helper.make_graph([helper.make_node("Identity", ["w"], ["y"])], "g", [],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [16])], initializer=[weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    (folder / name).write_bytes(model.SerializeToString())
    return name


def write_image(path: Path, size: int = 32) -> None:
    from PIL import Image

    Image.fromarray(np.full((size, size, 3), 128, np.uint8)).save(path)


def fake_export(folder: Path, family: str = "vision", **fields: object) -> Path:
    """A folder with a manifest of `family` naming vision.onnx (a valid tiny graph); `fields` override
    manifest fields."""
    folder.mkdir(parents=True, exist_ok=True)
    write_attention(folder, "vision.onnx")
    manifest: dict[str, object] = {
        "format": "edgeattn.manifest/1", "family": family, "model": "fake",
        "components": {"vision": {"file": "vision.onnx", "inputs": [], "outputs": []}},
        "tokenizer": None, "vision": {"image_size": 32, "mean": [0.5] * 3, "std": [0.5] * 3, "num_image_tokens": 4},
    }
    manifest.update(fields)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder
