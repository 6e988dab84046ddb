"""Tiny diffusers-format base-model folders, built offline in a few seconds each.

Each ``make_tiny_*`` writes the same layout as the real release (``model_index.json``, ``unet/``,
``vae/``, ``text_encoder[_2]/``, ``tokenizer[_2]/``, ``scheduler/``) with random weights and
deliberately distinct widths, so a mixed-up encoder or a wrong concat shows up as a shape error:

==========  =========================  ==================  ==================  ===========
kind        text encoder(s) hidden     cross_attention     pooled (add embed)  image/latent
==========  =========================  ==================  ==================  ===========
sd          CLIP 32                    32                  -                   16 px / 8
sdxl        CLIP 32 + CLIP-proj 48     80                  24 (+6*8)           16 px / 8
kolors      ChatGLM 32 (text_proj)     48                  32 (+6*8)           16 px / 8
pixel       CLIP 32                    32                  -                   16 px RGB
==========  =========================  ==================  ==================  ===========

The CLIP tokenizers use a real byte-level BPE vocabulary (lowercase letters, digits, a little
punctuation, each with its ``</w>`` word-final form, a few merges, ``<|startoftext|>`` and
``<|endoftext|>``); the ChatGLM tokenizer is diffusers' own ``ChatGLMTokenizer`` over a
sentencepiece BPE model trained here in-process (byte fallback on, like ChatGLM3's).
"""
from __future__ import annotations

import io
import json
import tempfile
from pathlib import Path

import torch

from bench.fixtures import clip_tokenizer

UNET_WIDTHS = (32, 64)
ADD_TIME_DIM = 8
SAMPLE = 8            # latent side; the VAE halves, so images are 16 x 16

_SP_CORPUS = ["red circle", "green square", "blue triangle", "yellow circle", "a red circle on the left",
              "a cat and a dog on the grass", "one small green square", "the big blue triangle",
              "红色的圆", "绿色的方块", "一只猫在左边，一只狗在右边，草地背景", "摩托车",
              "戴着红色头盔的人"]


def _model_index(folder: Path, class_name: str, components: dict[str, tuple[str | None, str | None]],
                 **extra) -> None:
    index = {"_class_name": class_name, "_diffusers_version": "0.42.1"}
    index.update({name: list(lib_cls) for name, lib_cls in components.items()})
    index.update(extra)
    (folder / "model_index.json").write_text(json.dumps(index, indent=2), encoding="utf-8")


def _clip_text(folder: Path, hidden: int, *, projection: int | None = None, seed: int = 0):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(vocab_size=1000, hidden_size=hidden, intermediate_size=2 * hidden,
                            num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77,
                            projection_dim=projection or hidden, bos_token_id=0, eos_token_id=2,
                            pad_token_id=1)
    torch.manual_seed(seed)
    model = (CLIPTextModelWithProjection if projection else CLIPTextModel)(config).eval()
    model.save_pretrained(folder)
    return model


def _unet(folder: Path, *, in_channels: int = 4, cross: int, seed: int = 0, sample_size: int = SAMPLE,
          **extra):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=sample_size, in_channels=in_channels, out_channels=in_channels, layers_per_block=1,
        block_out_channels=UNET_WIDTHS, down_block_types=("CrossAttnDownBlock2D",) * 2,
        up_block_types=("CrossAttnUpBlock2D",) * 2, cross_attention_dim=cross, attention_head_dim=8,
        norm_num_groups=16, **extra)
    unet.save_pretrained(folder)
    return unet


def _vae(folder: Path, seed: int = 0):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4,
                        block_out_channels=(16, 16), layers_per_block=1, norm_num_groups=8,
                        down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, sample_size=2 * SAMPLE)
    vae.save_pretrained(folder)
    return vae


def _scheduler(folder: Path, **overrides) -> None:
    from diffusers import DDIMScheduler

    config = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                  clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    config.update(overrides)
    DDIMScheduler(**config).save_pretrained(folder)


def make_tiny_sd(directory: str | Path) -> Path:
    """A tiny StableDiffusionPipeline folder (CLIP 32 -> UNet 32/64, VAE x2)."""
    folder = Path(directory) / "tiny-sd"
    folder.mkdir(parents=True, exist_ok=True)
    _unet(folder / "unet", cross=32)
    _vae(folder / "vae")
    _clip_text(folder / "text_encoder", 32)
    clip_tokenizer(folder / "tokenizer")
    _scheduler(folder / "scheduler")
    _model_index(folder, "StableDiffusionPipeline", {
        "unet": ("diffusers", "UNet2DConditionModel"), "vae": ("diffusers", "AutoencoderKL"),
        "text_encoder": ("transformers", "CLIPTextModel"), "tokenizer": ("transformers", "CLIPTokenizer"),
        "scheduler": ("diffusers", "DDIMScheduler"), "safety_checker": (None, None),
        "feature_extractor": (None, None)}, requires_safety_checker=False)
    return folder


def make_tiny_sdxl(directory: str | Path) -> Path:
    """A tiny StableDiffusionXLPipeline folder (CLIP 32 + CLIP-with-projection 48, text_time)."""
    folder = Path(directory) / "tiny-sdxl"
    folder.mkdir(parents=True, exist_ok=True)
    pooled = 24
    _unet(folder / "unet", cross=32 + 48, addition_embed_type="text_time",
          addition_time_embed_dim=ADD_TIME_DIM,
          projection_class_embeddings_input_dim=pooled + 6 * ADD_TIME_DIM)
    _vae(folder / "vae")
    _clip_text(folder / "text_encoder", 32, seed=1)
    _clip_text(folder / "text_encoder_2", 48, projection=pooled, seed=2)
    clip_tokenizer(folder / "tokenizer")
    clip_tokenizer(folder / "tokenizer_2", pad_token="!")      # as SDXL's second tokenizer
    _scheduler(folder / "scheduler")
    _model_index(folder, "StableDiffusionXLPipeline", {
        "unet": ("diffusers", "UNet2DConditionModel"), "vae": ("diffusers", "AutoencoderKL"),
        "text_encoder": ("transformers", "CLIPTextModel"),
        "text_encoder_2": ("transformers", "CLIPTextModelWithProjection"),
        "tokenizer": ("transformers", "CLIPTokenizer"), "tokenizer_2": ("transformers", "CLIPTokenizer"),
        "scheduler": ("diffusers", "DDIMScheduler")}, force_zeros_for_empty_prompt=True)
    return folder


def _chatglm_tokenizer(folder: Path):
    """diffusers' ChatGLMTokenizer over a sentencepiece BPE model trained here (~0.1 s)."""
    import sentencepiece as spm
    from diffusers.pipelines.kolors.tokenizer import ChatGLMTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_SP_CORPUS * 4), model_writer=model, vocab_size=400, model_type="bpe",
        character_coverage=1.0, byte_fallback=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        hard_vocab_limit=False, minloglevel=2)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "tokenizer.model").write_bytes(model.getvalue())
        tokenizer = ChatGLMTokenizer(str(Path(tmp) / "tokenizer.model"))
        tokenizer.save_pretrained(folder)
    return tokenizer


def _chatglm(folder: Path, vocab: int, seed: int = 0):
    """A 2-layer ChatGLM3-shaped encoder (multi-query attention, RMSNorm, rope, qkv bias)."""
    from diffusers.pipelines.kolors.text_encoder import ChatGLMConfig, ChatGLMModel

    config = ChatGLMConfig(num_layers=2, padded_vocab_size=vocab, hidden_size=32, ffn_hidden_size=64,
                           kv_channels=8, num_attention_heads=4, seq_length=256, add_qkv_bias=True,
                           multi_query_attention=True, multi_query_group_num=2, original_rope=True,
                           use_cache=False, torch_dtype="float32")
    torch.manual_seed(seed)
    model = ChatGLMModel(config, empty_init=False)
    with torch.no_grad():   # RMSNorm weights start as torch.empty even without skip_init
        for name, param in model.named_parameters():
            if "layernorm" in name:
                param.fill_(1.0)
            else:
                param.normal_(0.0, 0.2 if "word_embeddings" in name else 0.05)
    model.eval().save_pretrained(folder)
    return model


def make_tiny_kolors(directory: str | Path) -> Path:
    """A tiny KolorsPipeline folder (ChatGLM 32 -> text_proj -> UNet cross 48, text_time)."""
    folder = Path(directory) / "tiny-kolors"
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = _chatglm_tokenizer(folder / "tokenizer")
    vocab = -(-tokenizer.vocab_size // 64) * 64
    _chatglm(folder / "text_encoder", vocab)
    _unet(folder / "unet", cross=48, encoder_hid_dim_type="text_proj", encoder_hid_dim=32,
          addition_embed_type="text_time", addition_time_embed_dim=ADD_TIME_DIM,
          projection_class_embeddings_input_dim=32 + 6 * ADD_TIME_DIM)
    _vae(folder / "vae")
    _scheduler(folder / "scheduler")
    _model_index(folder, "KolorsPipeline", {
        "unet": ("diffusers", "UNet2DConditionModel"), "vae": ("diffusers", "AutoencoderKL"),
        "text_encoder": ("kolors", "ChatGLMModel"), "tokenizer": ("kolors", "ChatGLMTokenizer"),
        "scheduler": ("diffusers", "DDIMScheduler")}, force_zeros_for_empty_prompt=False)
    return folder


def make_tiny_pixel(directory: str | Path) -> Path:
    """A tiny GatebenchPixelPipeline folder: UNet on 16 x 16 RGB pixels, no VAE."""
    folder = Path(directory) / "tiny-pixel"
    folder.mkdir(parents=True, exist_ok=True)
    _unet(folder / "unet", in_channels=3, cross=32, seed=3, sample_size=2 * SAMPLE)
    _clip_text(folder / "text_encoder", 32, seed=3)
    clip_tokenizer(folder / "tokenizer")
    _scheduler(folder / "scheduler", beta_schedule="linear", beta_start=0.0001, beta_end=0.02)
    _model_index(folder, "GatebenchPixelPipeline", {
        "unet": ("diffusers", "UNet2DConditionModel"), "text_encoder": ("transformers", "CLIPTextModel"),
        "tokenizer": ("transformers", "CLIPTokenizer"), "scheduler": ("diffusers", "DDIMScheduler")})
    return folder
