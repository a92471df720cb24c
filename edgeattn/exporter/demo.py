"""Built-in demo models: tiny configs with seeded random weights, and a real-parts VLM for timing.

Random weights give meaningless text but exercise every shape, export path and runtime loop.
Every demo model carries a byte-level tokenizer built in code, so nothing is downloaded.
"""

from __future__ import annotations

from typing import Any, Callable

from edgeattn.errors import ModelSourceError
from edgeattn.exporter.sources import LoadedModel

SEED = 0
# Byte-level vocabulary: 256 bytes, then the special tokens.
SPECIALS = ("<s>", "</s>", "<pad>", "<image>")
VOCAB_SIZE = 256 + len(SPECIALS)
BOS_ID, EOS_ID, PAD_ID, IMAGE_ID = 256, 257, 258, 259


def byte_tokenizer() -> Any:
    """A byte-level BPE tokenizer with no merges: every UTF-8 byte is one token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet, key=_byte_of))}
    for i, tok in enumerate(SPECIALS):
        vocab[tok] = 256 + i
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens(list(SPECIALS))
    return PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token=None
    )


def _byte_of(ch: str) -> int:
    """The byte a ByteLevel alphabet character stands for (the GPT-2 byte-to-unicode map)."""
    code = ord(ch)
    printable = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    if code in printable:
        return code
    others = [b for b in range(256) if b not in printable]
    return others[code - 256]


def _tiny_llama_config() -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
        tie_word_embeddings=False,
    )


def _tiny_llama() -> LoadedModel:
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(SEED)
    model = LlamaForCausalLM(_tiny_llama_config()).eval()
    return LoadedModel("demo:tiny-llama", "decoder", model, model.config, tokenizer=byte_tokenizer())


def _tiny_vit() -> LoadedModel:
    import torch
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(SEED)
    cfg = ViTConfig(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, image_size=32, patch_size=8
    )
    model = ViTModel(cfg, add_pooling_layer=False).eval()
    pre = {"image_size": 32, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
    return LoadedModel("demo:tiny-vit", "vision", model, model.config, image_preprocess=pre)


def _tiny_llava() -> LoadedModel:
    import torch
    from transformers import CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration

    torch.manual_seed(SEED)
    vision = CLIPVisionConfig(
        hidden_size=48, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4, image_size=64, patch_size=8
    )
    cfg = LlavaConfig(
        vision_config=vision,
        text_config=_tiny_llama_config(),
        image_token_id=IMAGE_ID,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
        tie_word_embeddings=False,
    )
    model = LlavaForConditionalGeneration(cfg).eval()
    pre = {"image_size": 64, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
    return LoadedModel("demo:tiny-llava", "vlm", model, model.config, tokenizer=byte_tokenizer(), image_preprocess=pre)


DEMOS: dict[str, tuple[str, Callable[[], LoadedModel]]] = {
    "tiny-llama": ("2-layer Llama (GQA 4/2 heads), random weights, byte tokenizer", _tiny_llama),
    "tiny-vit": ("2-layer ViT on 32x32 images, random weights", _tiny_vit),
    "tiny-llava": ("CLIP vision (64 image tokens) + projector + 2-layer Llama, random weights", _tiny_llava),
}


def load_demo(name: str) -> LoadedModel:
    if name not in DEMOS:
        known = ", ".join(f"demo:{n}" for n in DEMOS)
        raise ModelSourceError(f"unknown demo model 'demo:{name}'; built-in demos are {known}")
    return DEMOS[name][1]()
