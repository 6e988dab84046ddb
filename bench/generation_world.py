"""The generation bench's world: a size preset, and everything one bench process shares (base
model, adapter checkpoint, layouts, protocol, evaluation models), plus the SD1.5 shape check on
the meta device that --dry-run runs where no GPU is.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bench.fixtures import (
    BASES,
    SD15_TEXT,
    SD15_UNET,
    SD15_VAE,
    SD15_WIDTHS,
    build_clip,
    build_detector,
    build_fid,
    make_layouts,
    write_adapter,
    write_base_folder,
    write_real_images,
)
from gatebench.adapters.types import CheckpointInfo
from gatebench.adapters.user import AdapterSet, Grounding, attn2_widths, inject
from gatebench.checkpoint import inspect_checkpoint
from gatebench.generate import SamplerSettings
from gatebench.layouts import Layout
from gatebench.metrics.evalmodels import EvalModels
from gatebench.metrics.fid import reference_stats
from gatebench.models import load_base_model
from gatebench.plan import sampler_settings
from gatebench.protocol import DetectionSpec, GenerationSpec, Protocol, ScoringSpec


@dataclass(frozen=True)
class Preset:
    """Everything a size needs; the CPU and GPU runs differ only in these values."""

    size: str
    steps: int
    guidance_scale: float
    batch_size: int
    layouts: int
    gate_scales: tuple[float, ...]
    loop_images: int | None        # cap on the one-layout-per-call loop (it is the slow one)
    detector: str                  # ultralytics yaml (random weights)
    det_imgsz: int
    clip: str                      # "tiny" | "vit-l-14"
    fid: str                       # "conv" | "inception"
    fp16: bool


PRESETS = {
    "tiny": Preset("tiny", steps=10, guidance_scale=5.0, batch_size=16, layouts=16,
                   gate_scales=(0.0, 0.5, 1.0, 2.0), loop_images=32, detector="yolov8n.yaml",
                   det_imgsz=64, clip="tiny", fid="conv", fp16=False),
    "sd15": Preset("sd15", steps=50, guidance_scale=5.0, batch_size=16, layouts=16,
                   gate_scales=(0.0, 1.0), loop_images=8, detector="yolov8x.yaml", det_imgsz=640,
                   clip="vit-l-14", fid="inception", fp16=True),
    "sd15-mini": Preset("sd15-mini", steps=2, guidance_scale=5.0, batch_size=4, layouts=4,
                        gate_scales=(0.0, 1.0), loop_images=4, detector="yolov8n.yaml",
                        det_imgsz=64, clip="tiny", fid="conv", fp16=True),
}


@dataclass
class World:
    """One bench process's models and inputs, built once and shared by every timed path."""

    preset: Preset
    device: torch.device
    base: Any
    ckpt: Path
    info: CheckpointInfo           # the adapter checkpoint as `gatebench run` inspects it
    layouts: list[Layout]
    protocol: Protocol
    settings: SamplerSettings      # plan.sampler_settings(protocol, base), as run builds it
    eval_models: EvalModels
    folder: Path
    build_s: dict[str, float] = field(default_factory=dict)


def build_world(preset: Preset, device: torch.device, folder: Path) -> World:
    build: dict[str, float] = {}
    t0 = time.perf_counter()
    base_dir = write_base_folder(folder, preset.size, device)
    widths = BASES[preset.size][3]
    build["write_base_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    dtype = torch.float16 if preset.fp16 and device.type == "cuda" else torch.float32
    base = load_base_model(base_dir, device=device, dtype=dtype)
    build["load_base_s"] = time.perf_counter() - t0
    ckpt = write_adapter(folder / "ckpt" / "epoch_1.pt", widths, base.phrase_dim)
    generation = GenerationSpec(gate_scales=preset.gate_scales, steps=preset.steps,
                                guidance_scale=preset.guidance_scale, batch_size=preset.batch_size,
                                dtype="fp16" if dtype == torch.float16 else "fp32")
    protocol = Protocol(name=f"bench-{preset.size}", seed=7, generation=generation,
                        detection=DetectionSpec(imgsz=preset.det_imgsz),
                        scoring=ScoringSpec(bootstrap=200))
    settings = sampler_settings(protocol, base)
    t0 = time.perf_counter()
    fid = build_fid(preset.fid, device)
    real = write_real_images(folder / "real", max(8, preset.layouts), settings.height,
                             settings.width)
    eval_models = EvalModels(detector=build_detector(preset.detector, preset.det_imgsz, device),
                             clip=build_clip(preset.clip, folder, device), fid_extractor=fid,
                             reference=reference_stats(real, fid, cache_dir=folder / "refstats"))
    build["eval_models_s"] = time.perf_counter() - t0
    return World(preset, device, base, ckpt, inspect_checkpoint(ckpt),
                 make_layouts(preset.layouts), protocol, settings, eval_models, folder, build)


def _fp16(model: Any) -> Any:
    """diffusers' / transformers' models are untyped here (their configs register at run time)."""
    return model.to(torch.float16)


def meta_check() -> dict[str, Any]:
    """SD1.5 at full size on the meta device: parameter counts and a shape pass with the adapter."""
    from diffusers import AutoencoderKL, UNet2DConditionModel  # noqa: PLC0415
    from transformers import CLIPTextConfig, CLIPTextModel  # noqa: PLC0415

    report: dict[str, Any] = {}
    meta = torch.device("meta")
    with meta:
        unet, vae, text = (_fp16(UNet2DConditionModel(**SD15_UNET)),
                           _fp16(AutoencoderKL(**SD15_VAE)),
                           _fp16(CLIPTextModel(CLIPTextConfig(**SD15_TEXT))))
        adapters = AdapterSet(list(SD15_WIDTHS), text_dim=SD15_TEXT["hidden_size"]).to(torch.float16)
    for name, module in (("unet", unet), ("vae", vae), ("text_encoder", text), ("adapter", adapters)):
        n = sum(p.numel() for p in module.parameters())
        report[f"{name}_params_M"] = round(n / 1e6, 1)
        report[f"{name}_fp16_GB"] = round(2 * n / 1e9, 2)
    widths = sorted(set(attn2_widths(unet).values()))
    report["attn2_widths"] = widths
    if widths != list(SD15_WIDTHS):
        raise RuntimeError(f"expected SD1.5's attn2 widths {list(SD15_WIDTHS)}, got {widths}")
    batch, rows = PRESETS["sd15"].batch_size, 2 * PRESETS["sd15"].batch_size
    injection = inject(unet, adapters)         # raises if the adapter widths do not match
    checks: dict[str, Any] = {}
    try:
        ids = torch.zeros(batch, 77, dtype=torch.long, device=meta)
        hidden = text(ids).last_hidden_state
        checks["text_encoder"] = list(hidden.shape)
        emb = torch.empty(rows, 77, SD15_TEXT["hidden_size"], device=meta, dtype=torch.float16)
        grounding = Grounding(torch.empty(rows, 30, 4, device=meta),
                              torch.empty(rows, 30, SD15_TEXT["hidden_size"], device=meta),
                              torch.empty(rows, 30, device=meta), torch.empty(rows, device=meta))
        latents = torch.empty(rows, 4, 64, 64, device=meta, dtype=torch.float16)
        with injection.grounded(grounding):
            out = unet(latents, torch.tensor(999, device=meta), encoder_hidden_states=emb).sample
        checks["unet_with_adapter"] = list(out.shape)
        image = vae.decode(torch.empty(batch, 4, 64, 64, device=meta, dtype=torch.float16)).sample
        checks["vae_decode"] = list(image.shape)
        if tuple(image.shape) != (batch, 3, 512, 512):
            checks["error"] = f"expected VAE decode to (16, 3, 512, 512), got {tuple(image.shape)}"
    except (RuntimeError, NotImplementedError, TypeError) as exc:   # an op without a meta kernel
        checks["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    finally:
        injection.remove()
    report["meta_shapes"] = checks
    return report
