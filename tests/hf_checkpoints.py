"""Tiny random-weight Hugging Face checkpoints of every family offshelf supports, saved with `save_pretrained`
together with their image processor and (CLIP, SigLIP) a fast tokenizer trained here on a few sentences.

Nothing is downloaded: configs are built in code, weights are random (seeded), and the tokenizer is a
`tokenizers` WordPiece model wrapped as the checkpoint's `PreTrainedTokenizerFast`. Imports torch and
transformers: only the Hugging Face tests use it.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    BitImageProcessor,
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    ConvNextConfig,
    ConvNextImageProcessor,
    ConvNextModel,
    Dinov2Config,
    Dinov2Model,
    PreTrainedTokenizerFast,
    ResNetConfig,
    ResNetModel,
    SiglipConfig,
    SiglipImageProcessor,
    SiglipModel,
    ViTConfig,
    ViTImageProcessor,
    ViTModel,
)

FAMILIES = ("vit", "dinov2", "clip", "siglip", "convnext")
SENTENCES = [
    "a photo of a cat", "a photo of a dog", "a photo of a car", "a red bicycle", "an astronaut in space",
    "a cup of coffee", "a rocket on the launch pad", "a motorcycle on the road", "flowers in a garden",
    "a temple in china", "a photo of the moon", "stars in the sky",
]
TRANSFORMER = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2}
IMAGE = {"image_size": 32, "patch_size": 8}


def tokenizer(max_length: int) -> PreTrainedTokenizerFast:
    """A WordPiece tokenizer (lower-cased, [BOS] text [EOS]) trained on `SENTENCES`, as a fast tokenizer."""
    raw = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    raw.normalizer = normalizers.Lowercase()
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    raw.train_from_iterator(SENTENCES, trainers.WordPieceTrainer(
        vocab_size=80, special_tokens=["[UNK]", "[PAD]", "[BOS]", "[EOS]"]))
    special = [(token, raw.token_to_id(token)) for token in ("[BOS]", "[EOS]")]
    raw.post_processor = processors.TemplateProcessing(single="[BOS] $A [EOS]", special_tokens=special)
    return PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="[BOS]", eos_token="[EOS]", pad_token="[PAD]",
                                   unk_token="[UNK]", model_max_length=max_length)


def _text_config(tok: PreTrainedTokenizerFast, max_length: int) -> dict[str, int]:
    return {"vocab_size": len(tok), "max_position_embeddings": max_length, "intermediate_size": 37,
            "pad_token_id": tok.pad_token_id, "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id,
            **TRANSFORMER}


def build(family: str, folder: Path, seed: int = 0) -> Path:
    """Save a tiny `family` checkpoint (weights seeded by `seed`) with its processor (and tokenizer) in `folder`."""
    torch.manual_seed(seed)
    vision = {"intermediate_size": 37, **TRANSFORMER, **IMAGE}
    if family == "vit":
        ViTModel(ViTConfig(**vision)).save_pretrained(folder)
        ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    elif family == "dinov2":
        Dinov2Model(Dinov2Config(mlp_ratio=1, **TRANSFORMER, **IMAGE)).save_pretrained(folder)
        BitImageProcessor(size={"shortest_edge": 40}, crop_size={"height": 32, "width": 32}, resample=3,
                          image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225]).save_pretrained(folder)
    elif family == "clip":
        tok = tokenizer(16)
        CLIPModel(CLIPConfig(text_config=_text_config(tok, 16), vision_config=vision, projection_dim=24)
                  ).save_pretrained(folder)
        CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
        tok.save_pretrained(folder)
    elif family == "siglip":
        tok = tokenizer(12)
        SiglipModel(SiglipConfig(text_config=_text_config(tok, 12), vision_config=vision)).save_pretrained(folder)
        SiglipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
        tok.save_pretrained(folder)
    elif family == "convnext":
        ConvNextModel(ConvNextConfig(hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1])).save_pretrained(folder)
        ConvNextImageProcessor(size={"shortest_edge": 32}, crop_pct=0.875).save_pretrained(folder)
    elif family == "resnet":  # a vision model offshelf does not support
        ResNetModel(ResNetConfig(embedding_size=8, hidden_sizes=[8, 8], depths=[1, 1])).save_pretrained(folder)
        ConvNextImageProcessor(size={"shortest_edge": 32}).save_pretrained(folder)
    else:
        raise ValueError(f"unknown family {family!r}")
    return folder
