"""Look at a base model (or base + adapter) while it trains: a grid of samples from val layouts.

    python -m gatebench.train.world.peek --base assets-build/base/model [--ckpt adapter.pt] \
        --out peek.png

Rows: layouts; columns: gate scales (0 = the base alone). Ground-truth boxes are drawn on the
scale>0 columns, so placement can be judged by eye.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from gatebench.checkpoint import load_adapter
from gatebench.generate import ImageJob, Sampler, SamplerSettings, layout_seed
from gatebench.layouts import load_layouts
from gatebench.models import load_base_model


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base", type=Path, required=True)
    parser.add_argument("--ckpt", type=Path, default=None)
    parser.add_argument("--layouts", type=Path, default=Path("assets-build/data/val.jsonl"))
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--scales", default="0,1")
    parser.add_argument("--out", type=Path, default=Path("peek.png"))
    parser.add_argument("--zoom", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(1)
    base = load_base_model(args.base)
    layouts = load_layouts(args.layouts, min_area=0, max_area=1, min_side=0, max_boxes=3).layouts[: args.n]
    scales = [float(s) for s in args.scales.split(",")]
    sampler = Sampler(base, SamplerSettings(args.steps, args.guidance, "DDIMScheduler", 1.0, "off",
                                            32, 32, 3))
    adapter = load_adapter(args.ckpt, base) if args.ckpt else None
    z = args.zoom
    grid = Image.new("RGB", (32 * z * len(scales), 32 * z * len(layouts)), "white")
    for col, scale in enumerate(scales):
        jobs = [ImageJob(lay, scale, layout_seed(0, lay.layout_id), Path("-")) for lay in layouts]
        images, _ = sampler.sample(jobs, adapter if scale else None)
        for row, (image, lay) in enumerate(zip(images, layouts, strict=True)):
            pil = Image.fromarray((image.permute(1, 2, 0).numpy() * 255).round().astype("uint8"))
            pil = pil.resize((32 * z, 32 * z), Image.Resampling.NEAREST)
            if scale:
                pen = ImageDraw.Draw(pil)
                for obj in lay.objects:
                    pen.rectangle([v * 32 * z for v in obj.bbox], outline=(0, 0, 0))
            grid.paste(pil, (col * 32 * z, row * 32 * z))
    grid.save(args.out)
    for lay in layouts:
        print(lay.caption_en or lay.caption)


if __name__ == "__main__":
    main()
