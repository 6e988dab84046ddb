"""The reference the batched pipeline is measured against: a loop in the style of diffusers'
``StableDiffusionGLIGENPipeline``, one layout and one gate scale per call.

For each image: encode its prompt (and the negative prompt) and phrases, build its grounding
(padded to ``max_boxes`` as the pipeline pads to 30), run the whole denoising loop with CFG for
that one image, decode it and write its PNG synchronously. It draws the same images as
gatebench (same seeds, scheduler, CFG, grounded steps, unconditional-row treatment), so
``compare_images`` checks both paths made the same pictures. This is a reference, not a copy of
gatebench: what it shares with gatebench is the base model's calls and the adapter runtime.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from bench.generation_world import World
from bench.timing import device_sync
from gatebench.adapters.registry import AdapterRuntime
from gatebench.adapters.user import Grounding
from gatebench.checkpoint import load_adapter
from gatebench.generate import ImageJob, grounded_steps, layout_seed, resolve_uncond
from gatebench.image_cache import write_png
from gatebench.metrics.timing import StageTimer

ImageKey = tuple[str, float]          # (layout id, gate scale)


def loop_jobs(world: World, root: Path, limit: int | None) -> list[ImageJob]:
    """Layout-major (layout 0 at every scale, then layout 1, ...), as a per-layout script runs;
    scale 0 is the base model alone, as gatebench makes it."""
    seed = world.protocol.seed
    scales = sorted(set(world.protocol.generation.gate_scales) | {0.0})
    jobs = [ImageJob(lay, s, layout_seed(seed, lay.layout_id),
                     root / f"{lay.layout_id}__s{s:g}.png")
            for lay in world.layouts for s in scales]
    return jobs[:limit] if limit else jobs


def _grounding(world: World, job: ImageJob, vectors: torch.Tensor, cfg: bool) -> Grounding:
    """One image's boxes, phrases and mask padded to max_boxes (the pipeline's max_objs)."""
    base, s = world.base, world.settings
    objects = job.layout.objects[: s.max_boxes]
    n = s.max_boxes
    boxes, phrases, mask = (torch.zeros(1, n, 4), torch.zeros(1, n, base.phrase_dim),
                            torch.zeros(1, n))
    if objects:
        boxes[0, :len(objects)] = torch.tensor([o.bbox for o in objects])
        phrases[0, :len(objects)] = vectors.float().cpu()
        mask[0, :len(objects)] = 1.0
    scale = torch.tensor([job.gate_scale])
    if cfg:
        uncond = resolve_uncond(s.uncond_boxes, world.info.reference_uncond)
        boxes, phrases = torch.cat([boxes, boxes]), torch.cat([phrases, phrases])
        mask = torch.cat([mask if uncond == "grounded" else torch.zeros_like(mask), mask])
        scale = torch.cat([torch.zeros_like(scale) if uncond == "off" else scale, scale])
    return Grounding(boxes.to(base.device), phrases.to(base.device), mask.to(base.device),
                     scale.to(base.device))


@torch.no_grad()
def loop_one(world: World, adapter: AdapterRuntime, job: ImageJob, timer: StageTimer) -> None:
    """One image, start to finish, its phases charged to ``timer``."""
    base, s = world.base, world.settings
    cfg = s.guidance_scale > 1.0
    with timer.phase("encode"):
        cond = base.encode_prompts([job.layout.caption])
        emb = base.encode_negative().cat(cond) if cfg else cond
        objects = job.layout.objects[: s.max_boxes]
        vectors = base.encode_phrases([o.name for o in objects], max_length=s.phrase_max_length)
    with timer.phase("unet"):
        grounding = _grounding(world, job, vectors, cfg) if job.gate_scale != 0.0 else None
        shape = base.latent_shape(s.height, s.width)
        noise = torch.randn(shape, generator=torch.Generator().manual_seed(job.seed))[None]
        scheduler = base.make_scheduler(s.scheduler)
        scheduler.set_timesteps(s.steps, device=base.device)
        x = noise.to(base.device, base.dtype) * scheduler.init_noise_sigma
        kwargs = base.unet_kwargs(emb, s.height, s.width)
        active_steps = grounded_steps(s.grounding_fraction, s.steps)
        for i, t in enumerate(scheduler.timesteps):
            model_in = scheduler.scale_model_input(torch.cat([x, x]) if cfg else x, t)
            active = grounding if i < active_steps else None
            with adapter.grounded(active):
                pred = base.unet(model_in, t, encoder_hidden_states=emb.hidden, **kwargs).sample
            if cfg:
                uncond, text = pred.chunk(2)
                pred = uncond + s.guidance_scale * (text - uncond)
            x = scheduler.step(pred, t, x).prev_sample
    with timer.phase("decode"):
        image = torch.nan_to_num(base.decode(x).float().cpu(), nan=0.0).clamp(0, 1)[0]
    with timer.phase("png_write"):
        array = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        write_png(job.path, array, {"layout_id": job.layout.layout_id, "gate_scale": job.gate_scale,
                                    "seed": job.seed})


def run_loop(world: World, root: Path, limit: int | None) -> dict[str, Any]:
    """Up to ``limit`` images one per call; the adapter is loaded once (a pipeline holds it for
    the session). ``paths``: (layout id, scale) -> PNG, for ``compare_images``."""
    root.mkdir(parents=True, exist_ok=True)
    todo = loop_jobs(world, root, limit)
    sync = device_sync(world.device)
    timer = StageTimer(sync=sync)
    sync()
    t0 = time.perf_counter()
    adapter = load_adapter(world.ckpt, world.base, world.info)
    try:
        for job in todo:
            loop_one(world, adapter, job, timer)
    finally:
        adapter.remove()
    sync()
    wall = time.perf_counter() - t0
    return {"images": len(todo), "generate_s": wall, "phases": dict(timer.seconds),
            "paths": {(j.layout.layout_id, j.gate_scale): j.path for j in todo}}


def compare_images(loop_paths: Mapping[ImageKey, Path],
                   batched_paths: Mapping[ImageKey, Path]) -> dict[str, Any]:
    """Both paths draw the same images: max |difference| over pixels (0-255)."""
    from PIL import Image  # noqa: PLC0415

    worst, equal, total = 0, 0, 0
    for key, path in loop_paths.items():
        with Image.open(path) as a, Image.open(batched_paths[key]) as b:
            x = np.asarray(a.convert("RGB"), dtype=np.int16)
            y = np.asarray(b.convert("RGB"), dtype=np.int16)
        diff = np.abs(x - y)
        worst = max(worst, int(diff.max()))
        equal += int((diff == 0).sum())
        total += diff.size
    return {"images": len(loop_paths), "max_abs_diff": worst,
            "equal_pixel_share": equal / total if total else None}
