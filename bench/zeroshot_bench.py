"""Benchmark (not a test): per-image cost of a zero-shot detector's query modes on a 6-phrase
layout: ``joined`` (one forward over "a. b. c. d. e. f."), ``per_phrase`` (six rows sharing one
backbone pass per image) and, for reference, ``per_phrase`` without the shared backbone.

Default: the tiny random Grounding DINO of bench/zeroshot_fixtures.py (64-px processor), so the
figures show the structure of the cost, not a real model's; ``--folder`` times a real local one
(e.g. a save_pretrained Grounding DINO on a GPU box). Median over ``--repeats`` rounds (the modes
interleaved in each round) of ``--images`` images each, after one warm-up call; wall time and the
process's CPU time (steadier on a shared machine).

Usage: python bench/zeroshot_bench.py [--folder DIR | --shape tiny|t] [--device cpu|cuda] [--images 8]
       [--repeats 5] [--threads 1] [--out FILE.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Literal

import torch
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.zeroshot_fixtures import (  # noqa: E402
    make_grounding_dino_t_shaped,
    make_tiny_grounding_dino,
)
from gatebench.metrics.zeroshot import ZeroShotDetector  # noqa: E402
from gatebench.protocol import DetectionSpec  # noqa: E402

PHRASES = ["cat", "dog", "red car", "bird", "apple", "chair"]


def images(n: int, size: int) -> list[Image.Image]:
    out = []
    for i in range(n):
        img = Image.new("RGB", (size, size), (200, 210, 220))
        pen = ImageDraw.Draw(img)
        for k in range(6):
            x, y = (k % 3) * size // 3, (k // 3) * size // 2
            pen.rectangle([x + 4, y + 4, x + size // 4, y + size // 3],
                          fill=((40 * k + 30 * i) % 255, 90, 200 - 30 * k))
        out.append(img)
    return out


def detector(folder: Path, device: str, query: Literal["joined", "per_phrase"],
             shared: bool = True) -> ZeroShotDetector:
    spec = DetectionSpec(query=query, batch_size=6 if query == "per_phrase" else 1)
    det = ZeroShotDetector.from_folder(folder, spec, device=device)
    det.share_backbone = shared       # False: the reference, every row its own backbone
    return det


def once(det: ZeroShotDetector, imgs: list, device: str) -> tuple[float, float]:
    """(wall, CPU) seconds per image of one call over ``imgs``."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter(), time.process_time()
    det.detect_phrases(imgs, [PHRASES] * len(imgs))
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return ((time.perf_counter() - wall) / len(imgs), (time.process_time() - cpu) / len(imgs))


def measure(folder: Path, device: str, imgs: list, repeats: int) -> dict[str, dict[str, float]]:
    """Modes interleaved round by round (a loaded machine slows them alike); medians."""
    modes = {"joined": detector(folder, device, "joined"),
             "per_phrase": detector(folder, device, "per_phrase"),
             "per_phrase_unshared": detector(folder, device, "per_phrase", shared=False)}
    for mode, det in modes.items():
        wall, cpu = once(det, imgs[:1], device)                 # warm-up
        print(f"warm-up {mode}: {1e3 * wall:.1f} ms wall, {1e3 * cpu:.1f} ms CPU per image",
              file=sys.stderr, flush=True)
    times: dict[str, list[tuple[float, float]]] = {m: [] for m in modes}
    for r in range(repeats):
        for mode, det in modes.items():
            times[mode].append(once(det, imgs, device))
            print(f"round {r + 1} {mode}: {1e3 * times[mode][-1][0]:.1f} ms wall, "
                  f"{1e3 * times[mode][-1][1]:.1f} ms CPU per image", file=sys.stderr, flush=True)
    return {m: {"wall_ms": round(1e3 * statistics.median(t[0] for t in ts), 2),
                "cpu_ms": round(1e3 * statistics.median(t[1] for t in ts), 2)}
            for m, ts in times.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path)
    parser.add_argument("--shape", choices=("tiny", "t"), default="tiny",
                        help="without --folder: the tests' tiny model, or Grounding DINO-T's shape")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        build = make_grounding_dino_t_shaped if args.shape == "t" else make_tiny_grounding_dino
        folder = args.folder or build(Path(tmp) / "grounding-dino")
        imgs = images(args.images, args.size)
        figures = measure(folder, args.device, imgs, args.repeats)
    record = {"model": str(args.folder) if args.folder else
              f"random Grounding DINO ({'tiny' if args.shape == 'tiny' else 'T-shaped'})",
              "device": args.device, "threads": args.threads, "phrases": len(PHRASES),
              "images": args.images, "image_size": args.size, "per_image": figures,
              "per_phrase_over_joined_cpu": round(figures["per_phrase"]["cpu_ms"]
                                                  / figures["joined"]["cpu_ms"], 2)}
    print(json.dumps(record, indent=2))
    if args.out:
        args.out.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
