"""Tiny random zero-shot detectors saved as transformers folders, built offline (no hub): for
bench/zeroshot_bench.py and tests/test_zeroshot.py (bench/ never imports tests/).

Grounding DINO: a 2-stage Swin backbone (embed 16), a 2-layer BERT text encoder (hidden 32) over
a WordPiece vocabulary written here, d_model 32, 2 encoder / 2 decoder layers (1 decoder layer
fails at tie-weights), 30 queries, 64-px images. Random weights give scores around 0.5, so the
user's thresholds (box 0.35, text 0.25) keep detections: enough to test the plumbing, the token
spans and parity with the user's call, never accuracy.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

WORDS = ("cat", "dog", "red", "car", "bird", "tree", "person", "bicycle", "apple", "chair",
         "book", "cup", "a", "the", "blue", "small", "traffic", "light", "sports", "ball")
SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
PUNCT = (".", ",", "?", "!", "-")


def write_vocab(path: Path) -> Path:
    """A WordPiece vocabulary: specials, punctuation, whole words, letters and ##letters."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    tokens = [*SPECIALS, *PUNCT, *WORDS, *letters, *(f"##{c}" for c in letters)]
    path.write_text("\n".join(dict.fromkeys(tokens)) + "\n", encoding="utf-8")
    return path


def make_tiny_grounding_dino(folder: Path, seed: int = 0) -> Path:
    """save_pretrained of a random GroundingDinoForObjectDetection and its processor."""
    return _save_grounding_dino(
        folder, seed, backbone=dict(image_size=64, patch_size=4, embed_dim=16, depths=[1, 1, 1],
                                    num_heads=[1, 1, 2], window_size=4),
        levels=["stage2", "stage3"],                   # two feature levels
        text=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=37, max_position_embeddings=64),
        config=dict(d_model=32, encoder_layers=2, decoder_layers=2, encoder_ffn_dim=32,
                    decoder_ffn_dim=32, encoder_attention_heads=2, decoder_attention_heads=2,
                    num_queries=30, num_feature_levels=2, encoder_n_points=2, decoder_n_points=2,
                    max_text_len=64, two_stage=True),
        size={"shortest_edge": 64, "longest_edge": 96})


def _save_grounding_dino(folder: Path, seed: int, *, backbone: dict[str, Any], levels: list[str],
                         text: dict[str, Any], config: dict[str, Any],
                         size: dict[str, int]) -> Path:
    """A random Grounding DINO of the given shape with the small WordPiece vocabulary, saved
    with its processor (``save_pretrained``) to ``folder``."""
    import torch
    from transformers import (
        BertTokenizer,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessor,
        GroundingDinoProcessor,
        SwinConfig,
    )

    folder.mkdir(parents=True, exist_ok=True)
    vocab = write_vocab(folder / "wordpiece-vocab.txt")
    tokenizer = BertTokenizer(vocab=str(vocab), do_lower_case=True)   # a vocab.txt path
    swin = SwinConfig(**backbone)
    swin.out_features = levels
    bert = {"model_type": "bert", "vocab_size": tokenizer.vocab_size, **text}
    torch.manual_seed(seed)
    model = GroundingDinoForObjectDetection(
        GroundingDinoConfig(backbone_config=swin, text_config=bert, **config)).eval()
    image_processor = GroundingDinoImageProcessor(size=size)
    processor = GroundingDinoProcessor(image_processor=image_processor, tokenizer=tokenizer)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    vocab.unlink()
    return folder


def make_tiny_owlv2(folder: Path, seed: int = 0) -> Path:
    """save_pretrained of a random Owlv2ForObjectDetection (32-px images, 8-px patches, 2-layer
    towers) and its processor; the CLIP tokenizer has ``<|endoftext|>`` at the highest id, since
    OWL pools the text at the argmax of ``input_ids``."""
    import torch
    from transformers import (
        CLIPTokenizer,
        Owlv2Config,
        Owlv2ForObjectDetection,
        Owlv2ImageProcessor,
        Owlv2Processor,
    )

    folder.mkdir(parents=True, exist_ok=True)
    vocab: dict[str, int] = {"!": 0, "<|startoftext|>": 1}    # OWL masks queries whose id 0 is 0
    for ch in "abcdefghijklmnopqrstuvwxyz":
        vocab[ch] = len(vocab)
        vocab[ch + "</w>"] = len(vocab)
    merges: list[tuple[str, str]] = []
    for word in WORDS:      # merge letter by letter up to the whole word
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        while len(parts) > 1:
            merges.append((parts[0], parts[1]))
            vocab.setdefault(parts[0] + parts[1], len(vocab))
            parts = [parts[0] + parts[1], *parts[2:]]
    vocab["<|endoftext|>"] = len(vocab)        # the highest id
    # vocab and merges as files (the typed API's form; the tokenizer keeps its own copy)
    vocab_file, merges_file = folder / "vocab-source.json", folder / "merges-source.txt"
    vocab_file.write_text(json.dumps(vocab), encoding="utf-8")
    merges_file.write_text("#version: 0.2\n" + "".join(
        dict.fromkeys(f"{a} {b}\n" for a, b in merges)), encoding="utf-8")
    tokenizer = CLIPTokenizer(vocab=str(vocab_file), merges=str(merges_file),
                              model_max_length=16)
    vocab_file.unlink()
    merges_file.unlink()
    config = Owlv2Config(
        text_config={"vocab_size": len(vocab), "hidden_size": 32, "intermediate_size": 37,
                     "num_hidden_layers": 2, "num_attention_heads": 2,
                     "max_position_embeddings": 16, "bos_token_id": 1,
                     "eos_token_id": vocab["<|endoftext|>"],
                     "pad_token_id": vocab["<|endoftext|>"]},
        vision_config={"image_size": 32, "patch_size": 8, "hidden_size": 32,
                       "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 2},
        projection_dim=32)          # OWL's class head needs text hidden == projection
    torch.manual_seed(seed)
    model = Owlv2ForObjectDetection(config).eval()
    image_processor = Owlv2ImageProcessor(size={"height": 32, "width": 32})
    processor = Owlv2Processor(image_processor=image_processor, tokenizer=tokenizer)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def make_grounding_dino_t_shaped(folder: Path, seed: int = 0) -> Path:
    """A random model shaped as Grounding DINO-T (IDEA-Research/grounding-dino-tiny's config:
    Swin-T backbone, BERT-base text encoder, d_model 256, 6 + 6 layers, 900 queries, 4 feature
    levels, 800 px images) with the small WordPiece vocabulary: a real model's cost structure
    for the bench, without its weights (random weights cost the same)."""
    return _save_grounding_dino(
        folder, seed, backbone=dict(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24],
                                    window_size=7),
        levels=["stage2", "stage3", "stage4"],
        text=dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                  intermediate_size=3072),
        config={}, size={"shortest_edge": 800, "longest_edge": 1333})
