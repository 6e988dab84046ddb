"""Image health: a "garbled" (花屏) score for saturated, smeared colour noise.

A too-strong adapter (high gate scale, e.g. the user's gate 3.0 with a random ``to_out``) does not
make slightly worse images: it makes colour garbage. Two cues, each a share of pixels:

* ``colour_noise``: pixels whose chroma (Cb, Cr) differs from its 3x3 MEDIAN by more than 0.15
  (on a 0-1 scale). A median keeps straight edges and flat regions, so clean images, even with
  hard-edged saturated shapes, stay near 0; colour noise and smears light up everywhere.
* ``vivid``: pixels with HSV saturation > 0.75 and value > 0.3 (large saturated colour blotches,
  which are low-frequency and escape the first cue).

Without a reference: ``score = max(clip(colour_noise / 0.2), clip((vivid - 0.5) / 0.4))``.
With the reference (the gate-0 twin of the same seed) only INCREASES count:
``score = max(clip(d_colour_noise / 0.2), clip(d_vivid / 0.6))``, so a legitimately colourful
scene is not penalised. ``garbled = score > threshold`` (``ScoringSpec.garbled_threshold`` 0.5).

How 0.5 was chosen (measured on 32-512 px images; tests/test_metrics.py re-checks it): clean
images (smooth backgrounds with 1-3 saturated shapes, 3 real photos) had colour_noise <= 0.013,
vivid <= 0.37, and twin-vs-twin (shapes moved) d_vivid <= 0.15, i.e. scores <= 0.25; garbled
ones (full or half-image saturated noise, 30% of the image at 60% opacity, row smears, 8x8
saturated blotches at 80% opacity) had colour_noise >= 0.26 or vivid >= 0.79 (d_vivid >= 0.42),
i.e. scores >= 0.73. The threshold sits in the middle of that gap: 10% noisy pixels, 70% vivid
pixels or +30% vivid pixels over the twin.
The chroma deviation was first 0.05; on real generations (the shapes world's base, 48 images) that
counted mild background grain as colour noise (noisy-pixel share median 0.20, max 0.63: 70% of the
base's own images "garbled"). At 0.15 the grain stays below 0.08 (ground-truth images <= 0.02)
while the synthetic colour noise still covers ~0.47 of the pixels: garbled images now score
>= 0.65 against their twin (>= 0.73 without one), clean ones still <= 0.25.
Images are box-downscaled to at most 256 px first, so the score does not depend on resolution.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from scipy.ndimage import median_filter

from gatebench.protocol import ScoringSpec
from gatebench.metrics.images import to_pil_rgb

MAX_SIDE = 256
CHROMA_DEVIATION = 0.15
NOISE_FULL = 0.2          # colour-noise share (or its increase) that scores 1.0
VIVID_SATURATION = 0.75
VIVID_VALUE = 0.3
VIVID_START, VIVID_SPAN = 0.5, 0.4       # absolute vivid share: 0.5 -> 0, 0.9 -> 1
VIVID_DELTA_SPAN = 0.6                   # vivid increase over the reference that scores 1.0
DEFAULT_THRESHOLD = ScoringSpec.garbled_threshold


def _array(image: Any) -> np.ndarray:
    """Path / PIL / HWC uint8 array -> float64 HWC in [0, 1], at most MAX_SIDE px."""
    from PIL import Image  # noqa: PLC0415

    pil = to_pil_rgb(image)
    if max(pil.size) > MAX_SIDE:
        scale = MAX_SIDE / max(pil.size)
        pil = pil.resize((max(1, round(pil.size[0] * scale)), max(1, round(pil.size[1] * scale))),
                         Image.BOX)
    return np.asarray(pil, dtype=np.float64) / 255.0


def health_stats(image: Any) -> dict[str, float]:
    """The two cues (shares of pixels in [0, 1]) for one image."""
    x = _array(image)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb, cr = b - y, r - y
    dev = np.hypot(cb - median_filter(cb, size=3, mode="reflect"),
                   cr - median_filter(cr, size=3, mode="reflect"))
    top, bottom = x.max(axis=-1), x.min(axis=-1)
    saturation = (top - bottom) / np.maximum(top, 1e-6)
    return {"colour_noise": float(np.mean(dev > CHROMA_DEVIATION)),
            "vivid": float(np.mean((saturation > VIVID_SATURATION) & (top > VIVID_VALUE)))}


def _clip01(v: float) -> float:
    return float(min(max(v, 0.0), 1.0))


def garbled_components(image: Any, reference: Any = None) -> dict[str, float]:
    """Score parts: ``noise`` and ``vivid`` in [0, 1] (absolute or vs ``reference``)."""
    s = health_stats(image)
    if reference is None:
        return {"noise": _clip01(s["colour_noise"] / NOISE_FULL),
                "vivid": _clip01((s["vivid"] - VIVID_START) / VIVID_SPAN)}
    ref = health_stats(reference)
    return {"noise": _clip01((s["colour_noise"] - ref["colour_noise"]) / NOISE_FULL),
            "vivid": _clip01((s["vivid"] - ref["vivid"]) / VIVID_DELTA_SPAN)}


def garbled_score(image: Any, reference: Any = None) -> float:
    """Garbled-ness in [0, 1]; above ``ScoringSpec.garbled_threshold`` (0.5) = garbled."""
    return max(garbled_components(image, reference).values())


def is_garbled(score: float, threshold: float = DEFAULT_THRESHOLD) -> bool:
    return score > threshold
