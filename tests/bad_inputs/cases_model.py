"""`export` from hostile Hugging Face model folders: a config.json of the wrong shape, type or size, weights
that are not safetensors, an index that leads out of the folder, a broken tokenizer or preprocessor config."""

from __future__ import annotations

import atexit
import json
import os
import random
import shutil
import struct
import tempfile
from pathlib import Path
from typing import Any, Callable

from bad_inputs.harness import Case

OUT = ("o",)
TINY_LLAMA = {"model_type": "llama", "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1,
              "num_attention_heads": 2, "num_key_value_heads": 1, "vocab_size": 16}

# Real (loadable) tiny folders, written once per test process and copied into each case that needs one.
_CACHE = Path(tempfile.gettempdir()) / f"edgeattn-bad-model-folders-{os.getpid()}"
atexit.register(shutil.rmtree, _CACHE, True)


def _cached(name: str, build: Callable[[Path], Any]) -> Path:
    path = _CACHE / name
    if not path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
        build(path)
    return path


def _real(kind: str, folder: Path) -> Path:
    """A copy of a saved tiny model: "llama" (with the byte tokenizer) or "clip" (a vision tower)."""
    from models import hf_folders

    builders = {"llama": lambda p: hf_folders.tiny_decoder("llama", p), "clip": lambda p: hf_folders.tiny_vision("clip", p)}
    model = folder / "m"
    shutil.copytree(_cached(kind, builders[kind]), model)
    return model


def safetensors_bytes(header: dict[str, Any] | bytes, data: bytes = b"", length: int | None = None) -> bytes:
    """A safetensors file: 8-byte little-endian header length, the header, the data. `length` overrides the
    declared header length (to lie about it)."""
    blob = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(blob) if length is None else length) + blob + data


VALID_WEIGHTS = safetensors_bytes({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, bytes(8))


def _folder(config: bytes | dict[str, Any] | list[Any] = TINY_LLAMA, weights: bytes = VALID_WEIGHTS,
            weights_name: str = "model.safetensors", extra: dict[str, bytes] | None = None):
    """A model folder `m` with config.json, one weights file and `extra` files; exported to `o`."""
    def setup(folder: Path) -> list[str]:
        model = folder / "m"
        model.mkdir()
        text = config if isinstance(config, bytes) else json.dumps(config).encode()
        (model / "config.json").write_bytes(text)
        (model / weights_name).write_bytes(weights)
        for name, content in (extra or {}).items():
            (model / name).write_bytes(content)
        return ["export", "m", "--out", "o", "--no-validate"]
    return setup


def _config(**fields: Any) -> dict[str, Any]:
    return {**TINY_LLAMA, **fields}


def _real_folder(kind: str, change: Callable[[Path], None]):
    def setup(folder: Path) -> list[str]:
        change(_real(kind, folder))
        return ["export", "m", "--out", "o", "--no-validate"]
    return setup


def _edit_config(**fields: Any) -> Callable[[Path], None]:
    def change(model: Path) -> None:
        config = json.loads((model / "config.json").read_text())
        (model / "config.json").write_text(json.dumps({**config, **fields}))
    return change


def _write(name: str, content: bytes) -> Callable[[Path], None]:
    return lambda model: (model / name).write_bytes(content)


def _truncate_weights(model: Path) -> None:
    data = (model / "model.safetensors").read_bytes()
    (model / "model.safetensors").write_bytes(data[: len(data) // 2])


def _index(weight_map: Any) -> dict[str, bytes]:
    return {"model.safetensors.index.json": json.dumps({"metadata": {}, "weight_map": weight_map}).encode()}


_RANDOM = random.Random(0).randbytes(4096)
_F32 = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}

CASES = [
    # config.json
    Case("model-config-is-a-list", _folder([{"model_type": "llama"}]), "holds a JSON list, not an object", OUT),
    Case("model-config-not-utf8", _folder(b'{"model_type": "ll\xffama"}'), "is not UTF-8 text", OUT),
    Case("model-config-bad-json", _folder(b'{"model_type": "llama",'), "is not valid JSON", OUT),
    Case("model-config-deep-nesting", _folder(b"[" * 100000 + b"]" * 100000), "nests too deeply", OUT),
    Case("model-config-huge-file", _folder(b'{"model_type": "llama"}' + b" " * (17 * 1024**2)),
         "more than the 16777216", OUT),
    Case("model-type-not-a-string", _folder({"model_type": ["llama"]}), '"model_type" must be a string', OUT),
    Case("model-type-missing", _folder({"hidden_size": 8}), 'has no "model_type"', OUT),
    Case("model-hidden-size-string", _folder(_config(hidden_size="64")), '"hidden_size" must be a whole number', OUT),
    Case("model-layers-absurd", _folder(_config(num_hidden_layers=10**9)),
         '"num_hidden_layers" is 1000000000; it must be from 1 to 1024', OUT),
    Case("model-vocab-absurd", _folder(_config(vocab_size=10**12)), '"vocab_size" is 1000000000000', OUT),
    Case("model-size-negative", _folder(_config(intermediate_size=-5)), '"intermediate_size" is -5', OUT),
    Case("model-size-bool", _folder(_config(num_attention_heads=True)), '"num_attention_heads" must be a whole number',
         OUT),
    Case("model-eps-string", _folder(_config(rms_norm_eps="tiny")), '"rms_norm_eps" must be a finite', OUT),
    Case("model-eos-not-an-id", _folder(_config(eos_token_id="</s>")), '"eos_token_id" must be a token id', OUT),
    Case("model-text-config-a-string", _folder({"model_type": "llava", "text_config": "llama"}),
         '"text_config" must be an object', OUT),
    Case("model-llava-without-parts", _folder({"model_type": "llava"}), 'needs "text_config" and "vision_config"', OUT),
    Case("model-quantized", _folder(_config(quantization_config={"quant_method": "gptq"})), "quantized checkpoint", OUT),
    Case("model-heads-not-divisible", _folder(_config(num_attention_heads=4, num_key_value_heads=3)),
         "must be a multiple of num_key_value_heads", OUT),
    Case("model-config-far-larger-than-weights",
         _folder(_config(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, vocab_size=32000,
                         num_attention_heads=32, num_key_value_heads=32)),
         "the config does not belong to these weights", OUT),
    # weights
    Case("model-weights-empty", _folder(weights=b""), "is empty (0 bytes); re-download", OUT),
    Case("model-weights-random-bytes", _folder(weights=_RANDOM), "is not a safetensors file or is truncated", OUT),
    Case("model-weights-absurd-header-length", _folder(weights=safetensors_bytes(b"{}", length=2**62)),
         "header length 4611686018427387904", OUT),
    Case("model-weights-header-not-json", _folder(weights=safetensors_bytes(b"{not json}  ")),
         "corrupt safetensors header", OUT),
    Case("model-weights-header-a-list", _folder(weights=safetensors_bytes(b"[1, 2]")), "corrupt safetensors header",
         OUT),
    Case("model-weights-unknown-dtype",
         _folder(weights=safetensors_bytes({"w": {**_F32, "dtype": "Q9"}}, bytes(8))), "unknown dtype 'Q9'", OUT),
    Case("model-weights-offsets-outside",
         _folder(weights=safetensors_bytes({"w": {"dtype": "F32", "shape": [1000], "data_offsets": [0, 4000]}},
                                           bytes(16))), "lies outside the file", OUT),
    Case("model-weights-shape-disagrees",
         _folder(weights=safetensors_bytes({"w": {**_F32, "shape": [3]}}, bytes(8))), "but its data_offsets give 8",
         OUT),
    Case("model-weights-overlap",
         _folder(weights=safetensors_bytes({"a": _F32, "b": _F32}, bytes(8))), "overlapping or missing tensor data",
         OUT),
    Case("model-weights-no-tensors", _folder(weights=safetensors_bytes({"__metadata__": {}})), "holds no tensors", OUT),
    Case("model-weights-truncated", _real_folder("llama", _truncate_weights), "truncated or corrupt", OUT),
    Case("model-weights-other-name", _folder(weights_name="weights.safetensors"),
         "neither model.safetensors nor model.safetensors.index.json", OUT),
    Case("model-weights-a-folder", lambda f: (_folder()(f), (f / "m" / "x.safetensors").mkdir())[0],
         "is not a regular file", OUT),
    Case("model-index-leads-out", _folder(weights_name="model-00001.safetensors",
                                          extra=_index({"w": "../outside/secret.safetensors"})),
         "is not a *.safetensors file name in the model folder", OUT),
    Case("model-index-shard-missing", _folder(weights_name="model-00001.safetensors",
                                              extra=_index({"w": "model-00002.safetensors"})),
         "'model-00002.safetensors', which is missing", OUT),
    Case("model-weights-do-not-fit-config", _real_folder("llama", _edit_config(hidden_size=128)),
         "do not fit the sizes in its config.json", OUT),
    # tokenizer and image preprocessing
    Case("model-tokenizer-json-garbage", _real_folder("llama", _write("tokenizer.json", _RANDOM)),
         "cannot load the tokenizer", OUT),
    Case("model-tokenizer-config-a-list", _real_folder("llama", _write("tokenizer_config.json", b"[]")),
         "tokenizer_config.json holds a JSON list", OUT),
    Case("model-preprocessor-bad-json", _real_folder("clip", _write("preprocessor_config.json", b"{'image_mean': 1")),
         "preprocessor_config.json is not valid JSON", OUT),
    Case("model-preprocessor-std-zero",
         _real_folder("clip", _write("preprocessor_config.json", json.dumps({"image_std": [0, 0, 0]}).encode())),
         '"image_std" must be three positive numbers', OUT),
    Case("model-preprocessor-mean-strings",
         _real_folder("clip", _write("preprocessor_config.json", json.dumps({"image_mean": "0.5"}).encode())),
         '"image_mean" must be three finite numbers', OUT),
    Case("model-image-size-absurd", _real_folder("clip", _edit_config(image_size=10**6)), '"image_size" is 1000000',
         OUT),
]
