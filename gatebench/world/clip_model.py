"""The shapes world's small open_clip model: tokenizer, preprocess, loading and image features.

Architecture: ``open_clip.model.CLIP`` built from the config dict stored next to the weights
(a ViT image tower for 32x32 input, a small causal text transformer pooled at the end-of-text
token). Weights: safetensors (fp16 on disk, fp32 in memory).

Tokenizer: a word-level tokenizer over the world's own vocabulary, in BOTH languages
(``WorldTokenizer``). Why not open_clip's BPE ``SimpleTokenizer``: it would work on Chinese only
as UTF-8 byte pieces (about 3 tokens per character), and its 49,408-row embedding table
(6.3 M parameters at width 128, 12 MB in fp16) would be >97% untrained rows in a world with ~25
distinct words. The world tokenizer maps every world caption exactly (English split into words,
Chinese segmented by longest match over the world's terms: 一个 / 红色 / 圆形 / 和 / 、 ...), and
anything else maps to ``<unk>`` - this model is for scoring world prompts only.

Public API::

    model, tokenize, preprocess = load_world_clip(weights_path, config_path)
    model.encode_image(preprocess(pil)[None]); model.encode_text(tokenize(["一个红色圆形"]))
    model.image_features(images01)   # (B, 3, H, W) floats in [0, 1] -> (B, D), FID/KID features
    model(images01)                  # the same, so ``ModuleExtractor(model, input_size=32)`` works

``gatebench.metrics.clip_score.OpenClip(model, preprocess, tokenize)`` wraps it as a CLIP backend.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from gatebench.files import atomic_output, atomic_write_text

PAD, UNK, SOT, EOT = "<pad>", "<unk>", "<sot>", "<eot>"
SPECIALS = (PAD, UNK, SOT, EOT)
WORLD_VOCAB_EN = ("a", "an", "and", "the", "with", "of", "one", "two", "three",
                  "red", "green", "blue", "yellow", "square", "circle", "triangle",
                  "squares", "circles", "triangles", ",", ".")
WORLD_VOCAB_ZH = ("一个", "一", "个", "和", "、", "，", "。", "与", "两个", "三个",
                  "红色", "绿色", "蓝色", "黄色", "正方形", "方形", "圆形", "三角形")

_PIECE = re.compile(r"[A-Za-z]+|\d+|\s+|[^\sA-Za-z\d]+")
_ASCII_PUNCT = re.compile(r"[^\x00-\x7f]")

DEFAULT_MEAN = (0.5, 0.5, 0.5)
DEFAULT_STD = (0.25, 0.25, 0.25)


class WorldTokenizer:
    """Words of the world's vocabulary -> ids; ``tokenizer(texts) -> LongTensor (N, ctx)``.

    Rows are ``<sot> tokens... <eot> <pad>...``; text longer than the context is cut and still
    ends with ``<eot>`` (the model pools there).
    """

    def __init__(self, vocab: Sequence[str], context_length: int = 16) -> None:
        if tuple(vocab[:len(SPECIALS)]) != SPECIALS:
            raise ValueError(f"expected the vocabulary to start with {SPECIALS}, got "
                             f"{tuple(vocab[:len(SPECIALS)])}")
        self.vocab = list(vocab)
        self.index = {w: i for i, w in enumerate(self.vocab)}
        self.context_length = int(context_length)
        self.pad_id, self.unk_id = self.index[PAD], self.index[UNK]
        self.sot_id, self.eot_id = self.index[SOT], self.index[EOT]
        self._cjk_terms = sorted((w for w in self.vocab if _ASCII_PUNCT.search(w)),
                                 key=len, reverse=True)

    @classmethod
    def default(cls, context_length: int = 16) -> "WorldTokenizer":
        return cls(list(SPECIALS) + list(WORLD_VOCAB_EN) + list(WORLD_VOCAB_ZH), context_length)

    def words(self, text: str) -> list[str]:
        out: list[str] = []
        for piece in _PIECE.findall(text.strip().lower()):
            if piece.isspace():
                continue
            if piece.isascii():
                out.extend(re.findall(r"[a-z]+|\d+|[^\sa-z\d]", piece))
                continue
            i = 0
            while i < len(piece):   # longest match over the vocabulary's non-ASCII terms
                for term in self._cjk_terms:
                    if piece.startswith(term, i):
                        out.append(term)
                        i += len(term)
                        break
                else:
                    out.append(piece[i])
                    i += 1
        return out

    def encode(self, text: str) -> list[int]:
        ids = [self.index.get(w, self.unk_id) for w in self.words(text)]
        return [self.sot_id] + ids[:self.context_length - 2] + [self.eot_id]

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> torch.Tensor:
        if isinstance(texts, str):
            texts = [texts]
        ctx = context_length or self.context_length
        out = torch.full((len(texts), ctx), self.pad_id, dtype=torch.long)
        for i, text in enumerate(texts):
            ids = self.encode(text)
            if len(ids) > ctx:
                ids = ids[:ctx - 1] + [self.eot_id]
            out[i, :len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out

    def config(self) -> dict[str, Any]:
        return {"type": "world-words", "vocab": self.vocab, "context_length": self.context_length}


def default_model_cfg(vocab_size: int, context_length: int = 16, image_size: int = 32,
                      embed_dim: int = 128, width: int = 128, vision_layers: int = 4,
                      text_layers: int = 2, patch_size: int = 4) -> dict[str, Any]:
    """The open_clip ``CLIP(embed_dim, vision_cfg, text_cfg)`` arguments of the world model."""
    return {
        "embed_dim": embed_dim,
        "vision_cfg": {"image_size": image_size, "patch_size": patch_size, "width": width,
                       "layers": vision_layers, "head_width": 32, "mlp_ratio": 4.0},
        "text_cfg": {"context_length": context_length, "vocab_size": vocab_size, "width": width,
                     "heads": width // 32, "layers": text_layers, "mlp_ratio": 4.0,
                     "pad_id": 0, "eos_id": SPECIALS.index(EOT), "pool_type": "eos"},
    }


class WorldClip(nn.Module):
    """An open_clip ``CLIP`` plus the world's input normalisation and feature helpers."""

    mean: torch.Tensor      # (1, 3, 1, 1) buffers, registered in __init__
    std: torch.Tensor

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        from open_clip.model import CLIP  # noqa: PLC0415

        self.config = config
        cfg = config["model_cfg"]
        self.clip = CLIP(cfg["embed_dim"], cfg["vision_cfg"], cfg["text_cfg"])
        pre = config.get("preprocess", {})
        self.image_size = int(pre.get("image_size", cfg["vision_cfg"]["image_size"]))
        mean = torch.tensor(pre.get("mean", DEFAULT_MEAN), dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(pre.get("std", DEFAULT_STD), dtype=torch.float32).view(1, 3, 1, 1)
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)

    # -- the open_clip interface (inputs already preprocessed / tokenized) -----------------
    def encode_image(self, pixels: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        return self.clip.encode_image(pixels, normalize=normalize)

    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        return self.clip.encode_text(tokens, normalize=normalize)

    @property
    def logit_scale(self) -> nn.Parameter:
        return self.clip.logit_scale

    # -- helpers ---------------------------------------------------------------------------
    def normalize_images(self, images01: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> the tower's input (resized bilinearly if H, W differ)."""
        x = images01.float()
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear",
                              align_corners=False, antialias=True)
        return (x - self.mean) / self.std

    def image_features(self, images01: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """(B, 3, H, W) floats in [0, 1] -> (B, embed_dim) image embeddings (L2-normalised)."""
        return self.encode_image(self.normalize_images(images01), normalize=normalize)

    def forward(self, images01: torch.Tensor) -> torch.Tensor:
        return self.image_features(images01)


def make_preprocess(image_size: int, mean: Sequence[float] = DEFAULT_MEAN,
                    std: Sequence[float] = DEFAULT_STD):
    """PIL image (or path) -> normalised (3, S, S) tensor; bicubic resize when the size differs."""
    from PIL import Image  # noqa: PLC0415

    mean_t = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def preprocess(image: Any) -> torch.Tensor:
        if isinstance(image, (str, Path)):
            with Image.open(image) as im:
                image = im.convert("RGB")
        image = image.convert("RGB")
        if image.size != (image_size, image_size):
            image = image.resize((image_size, image_size), Image.Resampling.BICUBIC)
        x = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
        x = x.view(image_size, image_size, 3).permute(2, 0, 1).float() / 255.0
        return (x - mean_t) / std_t

    return preprocess


def build_world_clip(config: dict[str, Any]) -> tuple[WorldClip, WorldTokenizer, Any]:
    tok_cfg = config["tokenizer"]
    tokenizer = WorldTokenizer(tok_cfg["vocab"], tok_cfg["context_length"])
    model = WorldClip(config)
    pre = config.get("preprocess", {})
    preprocess = make_preprocess(model.image_size, pre.get("mean", DEFAULT_MEAN),
                                 pre.get("std", DEFAULT_STD))
    return model, tokenizer, preprocess


def new_config(image_size: int = 32, context_length: int = 16, **model_kwargs: Any) -> dict[str, Any]:
    tokenizer = WorldTokenizer.default(context_length)
    return {"format": "gatebench-world-clip/1",
            "model_cfg": default_model_cfg(len(tokenizer.vocab), context_length, image_size,
                                           **model_kwargs),
            "tokenizer": tokenizer.config(),
            "preprocess": {"image_size": image_size, "mean": list(DEFAULT_MEAN),
                           "std": list(DEFAULT_STD)}}


def save_world_clip(model: WorldClip, weights_path: str | Path, config_path: str | Path,
                    extra: dict[str, Any] | None = None, fp16: bool = True) -> None:
    """safetensors weights (of the inner open_clip CLIP; fp16 by default) + the JSON config."""
    from safetensors.torch import save_file  # noqa: PLC0415

    dtype = torch.float16 if fp16 else torch.float32
    state = {k: v.detach().to("cpu", dtype).contiguous() for k, v in model.clip.state_dict().items()}
    with atomic_output(Path(weights_path)) as tmp:
        save_file(state, str(tmp), metadata={"format": "gatebench-world-clip/1"})
    config = dict(model.config)
    if extra:
        config.update(extra)
    atomic_write_text(Path(config_path), json.dumps(config, ensure_ascii=False, indent=1) + "\n")


def load_world_clip(weights_path: str | Path, config_path: str | Path, device: str = "cpu"
                    ) -> tuple[WorldClip, WorldTokenizer, Any]:
    """``(model, tokenize_fn, preprocess_fn)``; the model is fp32, in eval mode, on ``device``."""
    from safetensors.torch import load_file  # noqa: PLC0415

    config = json.loads(Path(config_path).read_text(encoding="utf-8"))
    model, tokenizer, preprocess = build_world_clip(config)
    state = {k: v.float() for k, v in load_file(str(weights_path)).items()}
    model.clip.load_state_dict(state, strict=True)
    return model.to(device).eval(), tokenizer, preprocess


def image_features(model: WorldClip, images01: torch.Tensor, normalize: bool = True,
                   batch_size: int = 256) -> torch.Tensor:
    """(B, 3, H, W) floats in [0, 1] -> (B, D) features, without gradients, in batches."""
    outs = []
    with torch.no_grad():
        for start in range(0, images01.shape[0], batch_size):
            outs.append(model.image_features(images01[start:start + batch_size], normalize))
    return torch.cat(outs) if outs else torch.zeros(0, model.config["model_cfg"]["embed_dim"])
