"""A complete tiny evaluation world for `run` tests: base, checkpoint, layouts, images, protocol."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from tests.builders import user_state
from tests.model_builders import UNET_WIDTHS, make_tiny_pixel

COLOURS = {"red": (220, 40, 40), "blue": (40, 60, 220), "green": (40, 170, 60)}
LAYOUTS = [
    ("a red square", [("red square", (0.1, 0.1, 0.5, 0.5))]),
    ("a blue square and a green square", [("blue square", (0.05, 0.5, 0.45, 0.95)),
                                          ("green square", (0.55, 0.1, 0.95, 0.5))]),
    ("a green square", [("green square", (0.3, 0.3, 0.8, 0.8))]),
    ("红色方块", [("red square", (0.5, 0.5, 0.9, 0.9))]),
    ("a blue square", [("blue square", (0.2, 0.1, 0.7, 0.6))]),
]


def write_layouts(folder: Path, size: int = 16) -> Path:
    images = folder / "real"
    images.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (caption, objects) in enumerate(LAYOUTS):
        image = Image.new("RGB", (size, size), (235, 235, 225))
        pen = ImageDraw.Draw(image)
        for name, box in objects:
            pen.rectangle([v * size for v in box], fill=COLOURS[name.split()[0]])
        name = f"layout_{i}.png"
        image.save(images / name)
        rows.append({"image_path": name, "caption": caption,
                     "objects": [{"name": n, "name_en": n, "bbox": list(b)} for n, b in objects]})
    path = folder / "layouts.jsonl"
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n",
                    encoding="utf-8")
    return path


def write_checkpoint(path: Path, gate: float = 0.5, *, zero_out: bool = False,
                     widths=UNET_WIDTHS, text_dim: int = 32) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(user_state(gate, widths=widths, text_dim=text_dim, zero_out=zero_out), path)
    return path


def write_protocol(folder: Path, base: Path, layouts: Path, *, steps: int = 2,
                   scales: str = "[0.0, 1.0, 2.0]", extra: str = "") -> Path:
    text = f'''name = "tiny"
seed = 7
[data]
layouts = "{layouts}"
image_dir = "{layouts.parent / 'real'}"
min_area = 0.0
min_side = 0.0
[models]
base_model = "{base}"
[generation]
gate_scales = {scales}
steps = {steps}
guidance_scale = 2.0
scheduler = "DDIMScheduler"
batch_size = 4
dtype = "fp32"
[scoring]
bootstrap = 50
[[targets]]
metric = "garbled_rate"
op = "<"
threshold = 1.01
[[targets]]
metric = "iou50_rate"
op = ">"
threshold = 0.7
gate_scales = [1.0]
{extra}'''
    path = folder / "tiny.toml"
    path.write_text(text, encoding="utf-8")
    return path


def tiny_world(folder: Path) -> dict[str, Path]:
    base = make_tiny_pixel(folder)
    layouts = write_layouts(folder)
    return {"base": base, "layouts": layouts, "ckpt": write_checkpoint(folder / "ckpt" / "epoch_3.pt"),
            "protocol": write_protocol(folder, base, layouts), "root": folder}
