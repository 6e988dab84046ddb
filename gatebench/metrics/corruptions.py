"""Synthetic colour corruptions of clean images, to check the garbled score beyond its calibration.

Each takes an HWC uint8 image, a ``strength`` in (0, 1] (the share of the image affected) and a
seed, and returns a new uint8 image. They mimic what an over-driven adapter does on real outputs:
per-pixel colour noise, vertical colour streaks, and saturated blotches.
"""
from __future__ import annotations

import numpy as np

KINDS = ("noise", "streaks", "blotches")


def _vivid(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Random saturated colours (HSV saturation ~0.95, value 0.6-1) as float RGB 0-255."""
    from PIL import Image  # noqa: PLC0415

    hsv = np.stack([rng.uniform(0, 255, shape), np.full(shape, 242.0),
                    rng.uniform(150, 255, shape)], -1).astype(np.uint8)
    return np.asarray(Image.fromarray(hsv, "HSV").convert("RGB"), dtype=np.float64)


def corrupt(image: np.ndarray, kind: str, strength: float, seed: int = 0) -> np.ndarray:
    """``noise``: that share of pixels replaced by random vivid colours; ``streaks``: that share
    of columns (in runs of 1-6) overpainted at 85 % by vertical colour streaks; ``blotches``: that
    share of a 16x16 grid of cells overpainted at 80 % by flat saturated colour."""
    if kind not in KINDS:
        raise ValueError(f"expected a corruption in {', '.join(KINDS)}, got '{kind}'")
    rng = np.random.default_rng(seed)
    a = np.asarray(image, dtype=np.float64)
    h, w = a.shape[:2]
    if kind == "noise":
        mask = (rng.random((h, w)) < strength)[..., None]
        return np.where(mask, _vivid(rng, (h, w)), a).astype(np.uint8)
    if kind == "streaks":
        cols = np.zeros(w, bool)
        while cols.mean() < strength:
            start = rng.integers(0, w)
            cols[start:start + rng.integers(1, 7)] = True
        # a streak: one colour per column, its value varying slowly down the column
        colour = _vivid(rng, (1, w)) * np.linspace(0.6, 1.0, h)[:, None, None] ** rng.uniform(
            0.5, 2.0)
        weight = cols[None, :, None] * 0.85
        return np.clip(a * (1 - weight) + colour * weight, 0, 255).astype(np.uint8)
    cells = rng.random((16, 16)) < strength
    ys, xs = (np.arange(n) * 16 // n for n in (h, w))
    mask = cells[ys][:, xs][..., None] * 0.8
    colour = _vivid(rng, (16, 16))[ys][:, xs]
    return np.clip(a * (1 - mask) + colour * mask, 0, 255).astype(np.uint8)
