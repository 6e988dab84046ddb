"""Builds tests/data/golden/: a small but realistic saved run (results.json, samples.jsonl, PNGs).

Run it only to change the golden run on purpose (then re-bless the expected files):

    python -m tests.golden_builder                      # rewrites tests/data/golden/{run,...}
    GATEBENCH_UPDATE_GOLDEN=1 python -m pytest tests/test_report.py

Everything goes through gatebench's own code (score_images with a detections mapping, the gate
analysis, evaluate_targets, build_results); only CLIP and FID values, which need models, are
synthesised (seeded) and volatile fields (timestamps, paths, versions, timings) are fixed.
Two checkpoints epoch_1 / epoch_2, gate scales 0 / 1 / 2, 6 layouts of 32x32 shapes images.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from gatebench.checkpoint import inspect_checkpoint
from gatebench.gates import analyse
from gatebench.layouts import select_layouts
from gatebench.metrics.detect import Detection
from gatebench.metrics.stats import MetricValue, bootstrap_ci, mean_ci
from gatebench.protocol import load_protocol
from gatebench.rundir.results import build_results, write_json
from gatebench.rundir.samples import write_samples_jsonl
from gatebench.score import ImageItem, score_images
from gatebench.verdict import evaluate_targets
from tests.builders import user_state

GOLDEN = Path(__file__).parent / "data" / "golden" / "run"
SIZE = 32
DETECTABLE = ("red square", "blue square", "green square")
COLOURS = {"red": (215, 45, 40), "blue": (40, 70, 215), "green": (40, 160, 70),
           "yellow": (235, 200, 30)}
LAYOUTS = [
    ("a red square on the left", [("red square", (0.06, 0.25, 0.5, 0.69))]),
    ("a blue square and a green square", [("blue square", (0.05, 0.5, 0.45, 0.95)),
                                          ("green square", (0.55, 0.06, 0.95, 0.47))]),
    ("a green square above a yellow circle", [("green square", (0.3, 0.03, 0.72, 0.44)),
                                              ("yellow circle", (0.3, 0.56, 0.72, 0.97))]),
    ("红色方块", [("red square", (0.5, 0.5, 0.94, 0.94))]),
    ("a blue square", [("blue square", (0.19, 0.12, 0.72, 0.62))]),
    ("two red squares", [("red square", (0.05, 0.05, 0.45, 0.45)),
                         ("red square", (0.55, 0.55, 0.95, 0.95))]),
]
# (checkpoint, scale) -> (placement error in box widths, layouts drawn garbled)
QUALITY = {("base", 0.0): (0.9, ()), ("epoch_1", 1.0): (0.45, ()),
           ("epoch_1", 2.0): (0.3, (1, 4)), ("epoch_2", 1.0): (0.06, ()),
           ("epoch_2", 2.0): (0.04, (0, 2, 5))}
PROTOCOL = '''name = "golden-shapes"
description = "gatebench golden report fixture"
seed = 7
[data]
layouts = "{folder}/layouts.jsonl"
min_area = 0.0
min_side = 0.0
[generation]
gate_scales = [0.0, 1.0, 2.0]
steps = 20
guidance_scale = 5.0
scheduler = "DDIMScheduler"
[scoring]
bootstrap = 200
[[targets]]
metric = "iou50_rate"
op = ">"
threshold = 0.6
gate_scales = [1.0]
description = "boxes are followed"
[[targets]]
metric = "clip_score"
op = ">="
threshold = 0.255
gate_scales = [1.0]
[[targets]]
metric = "garbled_rate"
op = "<"
threshold = 0.2
[[targets]]
metric = "fid"
op = "<"
threshold = 60
gate_scales = [1.0]
'''


def _draw(layout, error: float, garbled: bool, rng: np.random.Generator, path: Path) -> list:
    """The image (objects where the adapter put them) and what a detector would find."""
    image = Image.new("RGB", (SIZE, SIZE), (232, 230, 220))
    pen = ImageDraw.Draw(image)
    dets = []
    for obj in layout.objects:
        x0, y0, x1, y1 = obj.bbox
        w, h = x1 - x0, y1 - y0
        dx, dy = rng.uniform(-error, error, size=2) * (w, h)
        box = tuple(float(np.clip(v, 0.0, 1.0)) for v in (x0 + dx, y0 + dy, x1 + dx, y1 + dy))
        colour = COLOURS[obj.name.split()[0]]
        pixels = [round(v * SIZE) for v in box]
        (pen.ellipse if "circle" in obj.name else pen.rectangle)(pixels, fill=colour)
        if obj.name in DETECTABLE:
            dets.append(Detection(box, obj.name, round(float(rng.uniform(0.6, 0.95)), 3)))
    if garbled:
        noise = rng.integers(0, 256, size=(SIZE, SIZE, 3), dtype=np.uint8)
        mask = rng.random((SIZE, SIZE, 1)) < 0.7
        image = Image.fromarray(np.where(mask, noise, np.asarray(image)).astype(np.uint8))
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, optimize=True)
    return dets


def _clip_values(samples, scale: float, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Seeded synthetic CLIP scores: grounding costs a little global CLIP, garbling a lot."""
    rng = np.random.default_rng(int(hashlib.sha256(f"{name}{scale}".encode()).hexdigest()[:8], 16))
    base = {0.0: 0.262, 1.0: 0.255 if name == "epoch_1" else 0.259, 2.0: 0.247}[scale]
    clip = base + rng.normal(0, 0.006, len(samples)) - 0.03 * samples["garbled"].to_numpy()
    region = clip - 0.04 + rng.normal(0, 0.01, len(samples))
    return clip.round(4), region.round(4)


def build(root: Path) -> dict:
    folder = Path(tempfile.mkdtemp())
    (folder / "golden.toml").write_text(PROTOCOL.replace("{folder}", str(folder)), encoding="utf-8")
    rows = [{"image_path": f"layout_{i}.png", "caption": cap,
             "objects": [{"name": n, "bbox": list(b)} for n, b in objs]}
            for i, (cap, objs) in enumerate(LAYOUTS)]
    (folder / "layouts.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False)
                                                    for r in rows) + "\n", encoding="utf-8")
    protocol = load_protocol(folder / "golden.toml")
    layouts, layouts_info = select_layouts(protocol)
    ckpts = {}
    for name, gate in (("epoch_1", 0.6), ("epoch_2", 1.2)):
        path = folder / "ckpt" / f"{name}.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(user_state(gate, widths=(32, 64), text_dim=32), path)
        ckpts[name] = inspect_checkpoint(path)
    gate_report = analyse(list(ckpts.values()), [], protocol.gates, (0.0, 1.0, 2.0))
    images = folder / "run" / "images"
    frames, result_rows, zero = [], [], None
    for name, info in ckpts.items():
        for scale in (0.0, 1.0, 2.0):
            cache = "base" if scale == 0 else name
            error, garbled = QUALITY[("base" if scale == 0 else name, scale)]
            items, dets = [], {}
            for i, lay in enumerate(layouts):
                rng = np.random.default_rng(1000 * i + int(10 * scale) + (7 if name == "epoch_2" else 0) * (scale > 0))
                path = images / cache / f"{lay.layout_id}__s{scale:g}.png"
                dets[path.name] = _draw(lay, error, i in garbled, rng, path)
                ref = images / "base" / f"{lay.layout_id}__s0.png"
                items.append(ImageItem(path, lay, scale, ref if scale else None))
            result = zero if (scale == 0 and zero) else score_images(
                items, protocol, detections=dets, detector_labels=DETECTABLE)
            zero = zero or result
            samples = result.samples.copy()
            clip, region = _clip_values(samples, scale, "base" if scale == 0 else name)
            samples["clip_score"], samples["region_clip_score"] = clip, region
            kw = {"groups": list(samples["layout_id"]), "n_boot": 200, "seed": 7}
            metrics = dict(result.metrics)
            metrics["clip_score"] = mean_ci(clip, **kw)
            counts = samples["n_boxes"].to_numpy(dtype=float)
            metrics["region_clip_score"] = bootstrap_ci(region * counts, counts, **kw)
            fid = {0.0: 41.7, 1.0: 58.3 if name == "epoch_1" else 47.9, 2.0: 71.2}[scale]
            metrics["fid"] = MetricValue(fid, None, None, len(samples))
            order = ("iou50_rate", "miou", "ap50", "ap", "all_matched_rate", "clip_score",
                     "region_clip_score", "fid", "garbled_rate")
            samples.insert(0, "checkpoint", f"{name}.pt")
            frames.append(samples)
            result_rows.append({"checkpoint": str(info.path), "checkpoint_sha256": info.sha256,
                                "gate_scale": scale, "n_images": len(items), "nonfinite_images": 0,
                                "metrics": {k: metrics[k].to_dict() for k in order},
                                "not_computed": {"kid": "kid needs at least 100 real images "
                                                        "(got 6)"}})
    targets = evaluate_targets(protocol.targets, result_rows)
    sha = lambda text: hashlib.sha256(text.encode()).hexdigest()  # noqa: E731
    models = {"base": {"kind": "pixel", "path": "models/shapes-pixel",
                       "weights": {"unet/diffusion_pytorch_model.safetensors": sha("unet"),
                                   "text_encoder/model.safetensors": sha("text")}},
              "detector": {"path": "detections.jsonl", "sha256": sha("detector"),
                           "backend": "detections file"},
              "clip": {"path": "models/shapes-clip.pt", "sha256": sha("clip"),
                       "backend": "gatebench-world", "caption_language": "zh"},
              "fid_features": {"name": "clip-image", "sha256": sha("clip")},
              "fid_reference": "6 real images from real/ (data hash 5f1d2c3b4a69, resize bilinear)"}
    import pandas as pd
    results = build_results(
        protocol=protocol, infos=list(ckpts.values()), gate_report=gate_report, rows=result_rows,
        targets=targets, models=models, layouts_info=layouts_info, n_layouts=len(layouts),
        timings={"load_s": 1.5, "generate_s": 12.25, "score_s": 2.5, "total_s": 16.25},
        generation={"generated": 30, "cached": 0, "nonfinite": 0, "world_size": 1,
                    "phrase_encoding": "pixel: word-level tokenizer -> mean embedding; dim 32",
                    "uncond_boxes": "drop", "images_total": 30,
                    "caches": [{"adapter": None, "folder": "images/base",
                                "recipe_sha256": sha("base-recipe")}]
                    + [{"adapter": f"ckpt/{n}.pt", "folder": f"images/{n}",
                        "recipe_sha256": sha(f"{n}-recipe")} for n in ckpts]},
        command=("gatebench run --ckpt ckpt/epoch_1.pt --ckpt ckpt/epoch_2.pt --protocol "
                 "golden.toml --out run"), device="cpu", ceiling=None, dtype=torch.float32,
        layout_ids=[lay.layout_id for lay in layouts])
    results.update(created="2025-01-01T00:00:00+00:00", protocol_sha256=sha("golden.toml"),
                   versions={"python": "3.11.7", "gatebench": "0.1.0", "torch": "2.4.0",
                             "numpy": "2.0.0"})
    out = root
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(folder / "run" / "images", out / "images")
    text = json.dumps(results, indent=2, ensure_ascii=False, default=str)
    write_json(out / "results.json", json.loads(text.replace(str(folder) + "/", "")))
    samples = pd.concat(frames, ignore_index=True)
    samples["image_path"] = [str(Path(p).relative_to(folder / "run")) for p in samples["image_path"]]
    write_samples_jsonl(samples, out / "samples.jsonl")
    shutil.rmtree(folder)
    return results


if __name__ == "__main__":
    torch.set_num_threads(1)
    res = build(GOLDEN)
    print(res["verdict"], [(t["checkpoint"], t["gate_scale"], t["metric"], t["passed"])
                           for t in res["targets"]])
