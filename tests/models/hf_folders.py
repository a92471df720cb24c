"""Tiny Hugging Face model folders (config.json + safetensors + tokenizer) written by code."""

from __future__ import annotations

from pathlib import Path

import torch


def save_folder(model, folder: Path, tokenizer=None) -> Path:
    model.save_pretrained(folder, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    return folder


def tiny_decoder(kind: str, folder: Path) -> Path:
    """A 2-layer Llama-family LM (``llama``, ``qwen2`` or ``mistral``) with the demo byte tokenizer."""
    import transformers

    from edgeattn.exporter.demo import EOS_ID, VOCAB_SIZE, byte_tokenizer

    common = dict(
        vocab_size=VOCAB_SIZE, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, eos_token_id=EOS_ID, tie_word_embeddings=False,
    )
    config = {
        "llama": transformers.LlamaConfig,
        "qwen2": transformers.Qwen2Config,
        "mistral": transformers.MistralConfig,
    }[kind](**common)
    torch.manual_seed(1)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    return save_folder(model, folder, byte_tokenizer())


def tiny_bert(folder: Path) -> Path:
    import transformers

    folder.mkdir(parents=True, exist_ok=True)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [chr(c) for c in range(ord("a"), ord("z") + 1)]
    words += ["the", "cat", "dog", "sat", "on", "mat", "##s"]
    (folder / "vocab.txt").write_text("\n".join(words) + "\n")
    tokenizer = transformers.BertTokenizerFast(vocab_file=str(folder / "vocab.txt"))
    config = transformers.BertConfig(
        vocab_size=len(words), hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=64,
    )
    torch.manual_seed(2)
    return save_folder(transformers.BertModel(config, add_pooling_layer=False).eval(), folder, tokenizer)


def tiny_vision(kind: str, folder: Path) -> Path:
    """A 2-layer vision encoder: ``clip``, ``siglip`` or ``dinov2``."""
    import transformers

    common = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=28)
    torch.manual_seed(3)
    if kind == "clip":
        model = transformers.CLIPVisionModel(transformers.CLIPVisionConfig(patch_size=7, **common))
    elif kind == "siglip":
        model = transformers.SiglipVisionModel(transformers.SiglipVisionConfig(patch_size=7, **common))
    else:
        model = transformers.Dinov2Model(transformers.Dinov2Config(patch_size=14, **common))
    return save_folder(model.eval(), folder)


def torchscript_bert_fp16(path: Path) -> Path:
    """A 2-layer fp16 BERT (head size 16) written by torch's TorchScript ONNX exporter (`dynamo=False`, what
    Optimum and most model zoos used): a third-party graph, with Transformers' bidirectional padding mask built
    as `Where(Expand(And(geometry, padding)), 0, finfo.min)` from the shape of the hidden states."""
    import transformers

    config = transformers.BertConfig(vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=128, max_position_embeddings=64, attn_implementation="eager")
    torch.manual_seed(0)

    class Encoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = transformers.BertModel(config).eval().half()

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    ids, mask = torch.randint(0, 100, (2, 16)), torch.ones(2, 16, dtype=torch.int64)
    axes = {0: "batch", 1: "sequence"}
    torch.onnx.export(Encoder().eval(), (ids, mask), str(path), input_names=["input_ids", "attention_mask"],
                      output_names=["last_hidden_state"], dynamic_axes={"input_ids": axes, "attention_mask": axes},
                      opset_version=17, dynamo=False)
    return path
