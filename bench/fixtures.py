"""What the benches run on, built offline from configs with random weights: diffusers base-model
folders (tiny, SD1.5-structured mini, SD1.5), user-format adapters, layouts, and evaluation
models (a YOLO detector, a CLIP backend, an FID feature extractor) of real architectures; and the
hostile checklist's inputs (the shapes world's images with perfect detections, a PNG bomb).

Why here and not in tests/: bench/ never imports tests/ (tests/test_architecture.py), and a bench
number is only as good as its fixture is stable: these builders change only with the benches.
"""
from __future__ import annotations

import json
import string
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from gatebench.adapters.user import AdapterSet
from gatebench.layouts import Layout, LayoutObject
from gatebench.metrics.clip_score import TransformersClip
from gatebench.metrics.detect import COCO80_NAMES, YoloDetector, import_ultralytics
from gatebench.metrics.fid import ModuleExtractor
from gatebench.protocol import ASSETS_DIR, DetectionSpec

# --- SD1.5-shaped configs (runwayml/stable-diffusion-v1-5's unet / vae / text_encoder configs) ----
SD15_UNET: dict[str, Any] = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                      "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32, downsample_padding=1,
    flip_sin_to_cos=True, freq_shift=0, act_fn="silu", norm_eps=1e-5)
SD15_VAE: dict[str, Any] = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, norm_num_groups=32,
    block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4, sample_size=512, act_fn="silu",
    force_upcast=False)          # SD1.5's own vae config has no force_upcast: it decodes in fp16
SD15_TEXT: dict[str, Any] = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                 num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
                 projection_dim=768)
SD15_SCHEDULER: dict[str, Any] = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                      clip_sample=False, set_alpha_to_one=False, steps_offset=1)
SD15_WIDTHS = (320, 640, 1280)
# The same structure at a size a CPU runs in seconds (used by --dry-run to exercise every step).
MINI_UNET: dict[str, Any] = {**SD15_UNET, "sample_size": 8, "layers_per_block": 1,
             "block_out_channels": (32, 64, 128, 128)}
MINI_VAE: dict[str, Any] = {**SD15_VAE, "sample_size": 64, "layers_per_block": 1,
            "block_out_channels": (32, 32, 64, 64)}
MINI_TEXT: dict[str, Any] = {**SD15_TEXT, "num_hidden_layers": 1, "intermediate_size": 768}
MINI_WIDTHS = (32, 64, 128)
# The tests' tiny-sd (CLIP 32 -> UNet 32/64 -> VAE x2, 16x16 images), built from these configs.
TINY_UNET: dict[str, Any] = dict(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                 block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D",) * 2,
                 up_block_types=("CrossAttnUpBlock2D",) * 2, cross_attention_dim=32,
                 attention_head_dim=8, norm_num_groups=16)
TINY_VAE: dict[str, Any] = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 16),
                layers_per_block=1, norm_num_groups=8, down_block_types=("DownEncoderBlock2D",) * 2,
                up_block_types=("UpDecoderBlock2D",) * 2, sample_size=16)
TINY_TEXT: dict[str, Any] = dict(vocab_size=1000, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                 num_attention_heads=4, max_position_embeddings=77, projection_dim=32)
TINY_WIDTHS = (32, 64)
BASES: dict[str, tuple[dict[str, Any], dict[str, Any], dict[str, Any], tuple[int, ...]]] = {
    "tiny": (TINY_UNET, TINY_VAE, TINY_TEXT, TINY_WIDTHS),
    "sd15-mini": (MINI_UNET, MINI_VAE, MINI_TEXT, MINI_WIDTHS),
    "sd15": (SD15_UNET, SD15_VAE, SD15_TEXT, SD15_WIDTHS)}

PHRASES = ("person", "dog", "cat", "car", "bicycle", "bus", "horse", "bird", "chair", "cup",
           "bottle", "clock", "umbrella", "train", "boat", "sheep")
_MERGES = [("r", "e"), ("re", "d</w>"), ("c", "i"), ("ci", "r"), ("l", "e</w>"), ("o", "n</w>"),
           ("a", "r"), ("e", "e"), ("b", "l"), ("s", "q"), ("u", "a")]


def clip_tokenizer(folder: Path, pad_token: str = "<|endoftext|>") -> Any:
    """A CLIPTokenizer over a tiny byte-level BPE vocabulary (lowercase letters, digits, a
    little punctuation, each with its ``</w>`` form, a few merges), saved to ``folder``;
    ``pad_token`` "!" makes SDXL's second tokenizer."""
    from transformers import CLIPTokenizer  # noqa: PLC0415

    folder.mkdir(parents=True, exist_ok=True)
    vocab: dict[str, int] = {}
    for ch in string.ascii_lowercase + string.digits + "!,.'-":
        vocab[ch] = len(vocab)
        vocab[ch + "</w>"] = len(vocab)
    for a, b in _MERGES:
        vocab.setdefault(a + b, len(vocab))
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp)
        (raw / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
        (raw / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n"
                                                                  for a, b in _MERGES),
                                        encoding="utf-8")
        tokenizer = CLIPTokenizer(str(raw / "vocab.json"), str(raw / "merges.txt"),
                                  pad_token=pad_token, model_max_length=77)
        tokenizer.save_pretrained(folder)
    return tokenizer


def _special_ids(tokenizer: Any) -> dict[str, Any]:
    return {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id}


def write_base_folder(directory: Path, size: str, build_device: torch.device) -> Path:
    """A StableDiffusionPipeline folder of ``size`` (``BASES``) with random weights in fp16."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel  # noqa: PLC0415
    from transformers import CLIPTextConfig, CLIPTextModel  # noqa: PLC0415

    unet_config, vae_config, text_config, _ = BASES[size]
    folder = directory / size
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = clip_tokenizer(folder / "tokenizer")
    for seed, (cls, config, name) in enumerate(((UNet2DConditionModel, unet_config, "unet"),
                                                (AutoencoderKL, vae_config, "vae"))):
        torch.manual_seed(seed)
        with torch.device(build_device):
            model: Any = cls(**config)      # diffusers' models: untyped (registered configs)
        model.to(torch.float16).to("cpu").save_pretrained(folder / name)
        del model
    torch.manual_seed(2)
    with torch.device(build_device):
        text: Any = CLIPTextModel(CLIPTextConfig(**text_config, **_special_ids(tokenizer)))
    text.to(torch.float16).to("cpu").save_pretrained(folder / "text_encoder")
    del text
    if build_device.type == "cuda":
        torch.cuda.empty_cache()
    scheduler: Any = DDIMScheduler(**SD15_SCHEDULER)
    scheduler.save_pretrained(folder / "scheduler")
    components = {"unet": ("diffusers", "UNet2DConditionModel"),
                  "vae": ("diffusers", "AutoencoderKL"),
                  "text_encoder": ("transformers", "CLIPTextModel"),
                  "tokenizer": ("transformers", "CLIPTokenizer"),
                  "scheduler": ("diffusers", "DDIMScheduler"), "safety_checker": (None, None),
                  "feature_extractor": (None, None)}
    index = {"_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.42.1",
             **{k: list(v) for k, v in components.items()}, "requires_safety_checker": False}
    (folder / "model_index.json").write_text(json.dumps(index, indent=2), encoding="utf-8")
    return folder


def random_adapters(widths: Sequence[int], text_dim: int, *, gate: float = 0.5,
                    weight_gain: float = 1.0, seed: int = 0) -> AdapterSet:
    """A user-format AdapterSet whose adapters really act: random ``to_out`` (the trainer
    starts it at zero), every matrix scaled by ``weight_gain``, every gate at ``gate``."""
    torch.manual_seed(seed)
    adapters = AdapterSet(list(widths), text_dim)
    with torch.no_grad():
        if weight_gain != 1.0:
            for p in adapters.parameters():
                if p.ndim == 2:
                    p.mul_(weight_gain)
        for adapter in adapters.values():
            adapter.gated_attn.gate.fill_(gate)
    return adapters.eval()


def write_adapter(path: Path, widths: Sequence[int], text_dim: int) -> Path:
    """A user-format checkpoint (a bare state dict) of ``random_adapters``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.clone() for k, v in random_adapters(widths, text_dim).state_dict().items()}
    torch.save(state, path)
    return path


def make_layouts(count: int, seed: int = 0) -> list[Layout]:
    """1-4 boxes each, COCO phrases (the detector can name them), an English caption."""
    rng = np.random.default_rng(seed)
    layouts = []
    for i in range(count):
        objects = []
        for _ in range(int(rng.integers(1, 5))):
            x1, y1 = rng.uniform(0.0, 0.6, size=2)
            w, h = rng.uniform(0.2, 0.4, size=2)
            objects.append(LayoutObject(str(rng.choice(PHRASES)),
                                        (float(x1), float(y1), float(min(x1 + w, 1.0)),
                                         float(min(y1 + h, 1.0)))))
        caption = "a photo of " + " and ".join(f"a {o.name}" for o in objects)
        layouts.append(Layout(f"bench_{i:04d}", caption, tuple(objects), caption_en=caption))
    return layouts


def write_real_images(folder: Path, count: int, height: int, width: int) -> list[Path]:
    """Random-pixel PNGs standing in for the real images of the FID reference."""
    from gatebench.image_cache import write_png  # noqa: PLC0415

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    paths = []
    for i in range(count):
        path = folder / f"real_{i}.png"
        write_png(path, rng.integers(0, 256, (height, width, 3), dtype=np.uint8), {})
        paths.append(path)
    return paths


# --- evaluation models (random weights, real architectures) -----------------------------------------
def build_clip(kind: str, directory: Path, device: torch.device) -> TransformersClip:
    """``tiny``: a 2-layer CLIP on 32-px images; ``vit-l-14``: ViT-L/14's shape (as the oracle
    protocol's chinese-clip-vit-large-patch14) with SD1.5's text tower."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor  # noqa: PLC0415

    tokenizer = clip_tokenizer(directory / f"clip-{kind}-tokenizer")
    special = _special_ids(tokenizer)
    if kind == "tiny":
        config = CLIPConfig(
            text_config={"vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 37,
                         "num_hidden_layers": 2, "num_attention_heads": 4,
                         "max_position_embeddings": 77, **special},
            vision_config={"image_size": 32, "patch_size": 8, "hidden_size": 32,
                           "intermediate_size": 37, "num_hidden_layers": 2,
                           "num_attention_heads": 4},
            projection_dim=16)
        image_processor = CLIPImageProcessor(size={"shortest_edge": 32},
                                             crop_size={"height": 32, "width": 32})
    else:
        config = CLIPConfig(
            text_config={**SD15_TEXT, **special},
            vision_config={"image_size": 224, "patch_size": 14, "hidden_size": 1024,
                           "intermediate_size": 4096, "num_hidden_layers": 24,
                           "num_attention_heads": 16, "hidden_act": "quick_gelu"},
            projection_dim=768)
        image_processor = CLIPImageProcessor()
    torch.manual_seed(0)
    with torch.device(device):
        model = CLIPModel(config).eval()
    processor = CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)
    return TransformersClip(model, processor, device=str(device), name=f"bench-{kind}")


def build_fid(kind: str, device: torch.device) -> ModuleExtractor:
    """``conv``: a 2-layer conv net on 32 px; ``inception``: torch-fidelity's FID architecture."""
    torch.manual_seed(0)
    if kind == "conv":
        net = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, stride=2, padding=1), torch.nn.ReLU(),
                                  torch.nn.Conv2d(16, 32, 3, stride=2, padding=1), torch.nn.ReLU(),
                                  torch.nn.AdaptiveAvgPool2d(1))
        return ModuleExtractor(net.eval().to(device), name="bench-conv", input_size=32,
                               device=str(device))
    from torchvision.models import inception_v3  # noqa: PLC0415

    net = inception_v3(weights=None, aux_logits=False, init_weights=False)
    net.fc = torch.nn.Identity()
    return ModuleExtractor(net.eval().to(device), name="bench-inception", input_size=299,
                           device=str(device))


def build_detector(yaml: str, imgsz: int, device: torch.device) -> YoloDetector:
    """An ultralytics model built from its yaml (random weights) that names the COCO classes."""
    model = import_ultralytics().YOLO(yaml)
    model.model.names = dict(enumerate(COCO80_NAMES))   # a yaml-built model names classes "0".."79"
    return YoloDetector(model, DetectionSpec(imgsz=imgsz),
                        device="cpu" if device.type == "cpu" else str(device))


# --- hostile inputs (bench/hostile_checklist.py and tests/test_hostile.py) --------------------------
def world_images(folder: Path, n: int = 4) -> tuple[Path, Path, Path]:
    """n of the shapes world's test images, their layouts and PERFECT detections (the GT boxes,
    world labels): (images folder, layouts.jsonl, detections.jsonl)."""
    import shutil  # noqa: PLC0415

    data = ASSETS_DIR / "data"
    rows = [json.loads(line) for line in
            (data / "test.jsonl").read_text(encoding="utf-8").splitlines()[:n]]
    images = folder / "images"
    images.mkdir()
    for row in rows:
        shutil.copy(data / "images" / "test" / row["image_path"], images)
    layouts = folder / "layouts.jsonl"
    layouts.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                       encoding="utf-8")
    detections = folder / "detections.jsonl"
    detections.write_text("".join(json.dumps({"image": r["image_path"], "detections": [
        {"bbox": o["bbox"], "label": o["name_en"], "score": 0.9} for o in r["objects"]]}) + "\n"
        for r in rows), encoding="utf-8")
    return images, layouts, detections


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims width x height (no pixels): a decompression bomb to refuse."""
    import struct  # noqa: PLC0415
    import zlib  # noqa: PLC0415

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height,
                                                                     8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b""))
    return path
