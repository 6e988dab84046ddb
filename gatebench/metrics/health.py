"""Image health: a "garbled" (花屏) score and a "blank" flag, calibrated on the user's real images.

A too-strong adapter (the user's Kolors with the gate forced to 3.0) does not make slightly worse
images: it makes colour garbage (streaks, confetti) or a near-black frame. Cues (images are first
resized to 256 px on the long side, BOX down / nearest up, so no cue depends on resolution;
the speckle share is taken at native size when smaller):

* ``colour_edges``: mean CIELAB a*b* Sobel magnitude (colour-edge strength in Delta-E per pixel,
  scikit-image ``rgb2lab`` + ``sobel``). Real garbage is colour-busy everywhere; clean scenes, even
  busy stylised ones, change colour only at object borders. The one cue that separates the real
  calibration images (below).
* ``colour_noise``: share of pixels whose chroma (Cb, Cr) differs from its 3x3 median by > 0.15
  (isolated colour speckle; catches per-pixel synthetic noise).
* ``vivid``: share of pixels with HSV saturation > 0.75 and value > 0.3 (saturated blotches; the
  all-blue real garbage image is 100 % vivid).

Absolute score: ``max(colour_edges / (2 * 7.3), colour_noise / 0.2, (vivid - 0.5) / 0.4)`` clipped
to [0, 1]; ``garbled = score > garbled_threshold`` (0.5) and not blank. With the gate-0 twin (same
seed) the score is ``min(absolute, relative)``: only INCREASES over the twin count (so a colourful
scene whose twin is equally colourful is excused), and an image that kept its twin's structure
(local SSIM map of L*, torchmetrics: >= 0.6 full excuse, <= 0.2 none) has its vivid and
colour-edge increases excused pixel by pixel, so a clean image recoloured or changed where its
structure survives is not flagged, while a region turned to garbage (structure lost) still
counts. Colour speckle is never excused.

Calibration (``bench/health_calibration.py``; 18 real 1024 px Kolors outputs of the user's model,
labelled by eye; downscaled copies in tests/data/health). ``colour_edges`` at 256 px:
garbled 8.9, 9.0, 11.4, 11.6, 26.2; clean 0.7-3.7 for 10 of 12, learned_02 (dense engraving
texture) 6.0, learned_04 (vivid purple circuit-board pattern) 22.7; blank 0.6. Cues tried and
dropped (a one-off study at 256 px; no threshold separated garbled from clean): BRISQUE (the
``brisque`` 0.2.0 package, weight-free SVM shipped in the wheel, but it breaks on numpy 2.4 and
scored garbled 24-84 vs clean 13-67), mean HSV saturation (garbled 0.51-1.00, clean up to 0.52),
luminance std (0.12-0.28 vs up to 0.13), horizontal/vertical gradient anisotropy (streaks are
vertical, 0.89-2.38, but so are trees: up to 1.64), orientation coherence, spectral slope,
canny edge density and edge length, colourfulness, colour-cluster counts per 16 px patch, and the
old colour-noise share (<= 0.10 on real garbage). piq/pyiqa were not used: their no-reference
measures download weights. No CLIP-IQA cue: CLIP is optional here, and a score that changes
with whichever CLIP a protocol configures would not be comparable across protocols.
Threshold 7.3 is the geometric midpoint of the largest error-minimising gap (6.0 .. 8.9);
learned_04 stays the one flagged clean image (of 12; in ``run`` a gate-0 twin as colour-busy as
it excuses such an image: 3.0_04 against learned_04 scores 0.33). Leave-one-out (threshold re-derived on 17, the 18th
judged): 15/17 non-blank images right (learned_04 and learned_02 wrong: without learned_02 the gap
is 3.7 .. 8.9 and its 6.0 falls above the midpoint). Synthetic corruptions of the 12 clean images
(``gatebench.metrics.corruptions``), share flagged at strength 0.1 / 0.3 / 0.6, absolute | vs the
uncorrupted twin: colour noise 1.00 1.00 1.00 | 0.92 1.00 1.00; streaks 1.00 1.00 1.00 | 0.58
1.00 1.00; blotches 0.08 0.67 1.00 | 0.00 0.00 1.00 (flat 80 % blotches over a tenth to a third
of the image keep the L* structure beneath, so the twin excuses them). Uncorrupted images score
<= 0.41 apart from learned_04. Twin mode on the calibration pairs (gate-3.0 image vs the
learned-gate image of the same prompt): 01, 06, 17 garbled flagged (0.78, 0.58, 0.85), 04 missed
(0.33: its twin, learned_04, is as colour-busy), clean 07 0.01; each clean image vs an unrelated
clean one <= 0.21 (learned_04 1.00). Shapes world (32 px, upscaled): 500 ground-truth images
garbled <= 0.18; the good adapter (good_step_4000, 24 layouts) at scales 0 / 0.5 / 1 / 2 scores at
most 0.40 / 0.04 / 0.03 / 0.08 (scale 0 absolute, others vs the twin; scale 1 absolute <= 0.34).

Blank (near-black, near-white, near-uniform): ``max(grey * (35 - L*p99) / 20, grey * (L*p1 - 75)
/ 20, (8 - spread) / 8)`` clipped, spread = Delta-E standard deviation over the image, grey =
``(40 - C*p99) / 20`` clipped (a black or white frame is achromatic; dark saturated blue garbage
and a yellow disc on a pale ground are not blank). The real black frame: L*p99 20.6, C*p99 14.7
-> 0.72; the darkest clean image (a black kitchen) L*p99 38.3 -> 0.01; the dark all-blue garbage
L*p99 29.8, C*p99 126, spread 11.7 -> 0 (it stays garbled). The shapes world's 500 ground-truth
images: blank <= 0.01 with the chroma guard (0.43 without: a yellow disc on a pale ground).
``blank = blank_score > blank_threshold`` (0.5).

Speed (2 shared CPU cores, ms per image, old per-call code -> now, one thread (two threads)):
32 px alone 13.7 -> 8.9 (5.9), with its twin 36.7 -> 27.1, 17.5 (14.0) once the twin's maps are
cached as in a run; 1024 px alone 39.5 -> 19.7 (11.0), with its twin 89.9 -> 48.7, cached 27.1
(19.3); the same numbers bit for bit (tests/test_health_fast.py). How: one decode
and conversion per image (the speckle share reuses the working pixels when they are the same
size), an exact min/max median-of-9 network instead of scipy's median_filter, channel maxima
without an axis reduction, both L* percentiles from one partition, a twin's maps made once per
run (TwinCache, metrics/twin_cache.py: the gate-0 image is the twin of every checkpoint and
scale) and the images of a chunk assessed on threads (assess_many); torchmetrics' SSIM is
restated op for op (metrics/ssim.py, same float32 numbers) so that scoring does not import
torchmetrics (0.5-3 s). What is left is mostly the CIELAB conversion, Sobel and SSIM's 11x11
convolution.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from gatebench.errors import MetricError
from gatebench.metrics.images import ImageLike, to_pil_rgb
from gatebench.metrics.spec import BLANK_THRESHOLD, GARBLED_THRESHOLD
from gatebench.metrics.ssim import ssim_full
from gatebench.metrics.twin_cache import TwinCache

WORK_SIDE = 256
CHROMA_DEVIATION = 0.15
NOISE_FULL = 0.2          # colour-noise share (or its increase) that scores 1.0
VIVID_SATURATION = 0.75
VIVID_VALUE = 0.3
VIVID_START, VIVID_SPAN = 0.5, 0.4       # absolute vivid share: 0.5 -> 0, 0.9 -> 1
VIVID_DELTA_SPAN = 0.6                   # vivid increase over the reference that scores 1.0
EDGE_THRESHOLD = 7.3      # colour-edge strength (Delta-E a*b* per pixel) that scores 0.5
EDGE_CLEAN = 2.5          # median clean image: an increase of 2 * (7.3 - 2.5) over the twin = 1.0
SSIM_NO_EXCUSE, SSIM_FULL_EXCUSE = 0.2, 0.6
BLACK_L, LIGHT_L, L_SPAN = 35.0, 75.0, 20.0
FLAT_SPREAD = 8.0
GREY_CHROMA, CHROMA_SPAN = 20.0, 20.0    # C* p99 <= 20: achromatic; >= 40: coloured, not blank


@dataclass(frozen=True)
class ImageHealth:
    """One image's verdict: a blank image is never also counted as garbled."""

    garbled_score: float
    garbled: bool
    blank_score: float
    blank: bool


def _work_size(size: tuple[int, int], upscale: bool) -> tuple[int, int] | None:
    """(width, height) an image of ``size`` is resized to (WORK_SIDE on the long side), or None
    when it keeps its size (smaller images are only upscaled when ``upscale``)."""
    if max(size) > WORK_SIDE or (upscale and max(size) < WORK_SIDE):
        scale = WORK_SIDE / max(size)
        return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))
    return None


def _resized(pil: Any, upscale: bool) -> Any:
    """``pil`` at the working size: BOX down / NEAREST up (see _work_size)."""
    from PIL import Image  # noqa: PLC0415

    size = _work_size(pil.size, upscale)
    if size is None:
        return pil
    return pil.resize(size, Image.Resampling.BOX if max(size) < max(pil.size) else Image.Resampling.NEAREST)


def _floats(pil: Any) -> np.ndarray:
    return np.asarray(pil, dtype=np.float64) / 255.0


def _array(image: Any, upscale: bool = True) -> np.ndarray:
    """Path / PIL / HWC array -> float64 HWC in [0, 1], resized to WORK_SIDE on the long side
    (smaller images are only upscaled when ``upscale``: per-pixel speckle must stay per-pixel)."""
    return _floats(_resized(to_pil_rgb(image), upscale))


def _pixels(image: Any, shape: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(the cue pixels, the speckle pixels) of one image, decoded and converted ONCE.

    Cue pixels: at the working size, or BOX-resized to ``shape`` for a twin. Speckle pixels: at
    native size when at most WORK_SIDE, else BOX-downscaled to it (``_array(upscale=False)``);
    when that is the size the cue pixels have, they are the same array, not made twice."""
    from PIL import Image  # noqa: PLC0415

    pil = to_pil_rgb(image)
    work = _resized(pil, True) if shape is None else pil.resize((shape[1], shape[0]), Image.Resampling.BOX)
    x = _floats(work)
    if max(pil.size) <= WORK_SIDE:          # speckle at native size
        return x, (x if work is pil else _floats(pil))
    if work.size == _work_size(pil.size, False):   # both BOX-downscaled to the same size
        return x, x
    return x, _floats(_resized(pil, False))


def _lab(x: np.ndarray) -> np.ndarray:
    from skimage.color import rgb2lab  # noqa: PLC0415

    return rgb2lab(x)


def health_stats(image: ImageLike) -> dict[str, float]:
    """Every cue of one image (shares in [0, 1], L* and Delta-E in CIELAB units)."""
    return {k: float(np.mean(v)) if isinstance(v, np.ndarray) else v
            for k, v in _maps(image).items() if k != "light"}


# The 19 compare-exchanges of the optimal median-of-9 network (Paeth; Devillard's opt_med9):
# exact (the median IS one of the nine values), so it equals scipy's 3x3 median_filter.
_MEDIAN9 = ((1, 2), (4, 5), (7, 8), (0, 1), (3, 4), (6, 7), (1, 2), (4, 5), (7, 8), (0, 3),
            (5, 8), (4, 7), (3, 6), (1, 4), (2, 5), (4, 7), (4, 2), (6, 4), (4, 2))


def _median3(a: np.ndarray) -> np.ndarray:
    """3x3 median with scipy's ``mode="reflect"`` edges (numpy's "symmetric"): the same values
    as ``scipy.ndimage.median_filter(a, size=3, mode="reflect")``, vectorised (~10x faster)."""
    h, w = a.shape
    padded = np.pad(a, 1, mode="symmetric")
    v = [padded[i:i + h, j:j + w] for i in range(3) for j in range(3)]
    for i, j in _MEDIAN9:
        v[i], v[j] = np.minimum(v[i], v[j]), np.maximum(v[i], v[j])
    return v[4]


def _speckle_share(x: np.ndarray) -> float:
    y = 0.299 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2]
    cb, cr = x[..., 2] - y, x[..., 0] - y
    dev = np.hypot(cb - _median3(cb), cr - _median3(cr))
    return float(np.mean(dev > CHROMA_DEVIATION))


def _speckle(image: Any) -> float:
    """Share of pixels whose chroma leaves its 3x3 median, at native size (at most WORK_SIDE)."""
    return _speckle_share(_array(image, upscale=False))


def _maps(image: Any, shape: tuple[int, int] | None = None) -> dict[str, Any]:
    """Per-pixel cue maps (``vivid``, ``colour_edges``, ``light``) at the working size (or
    ``shape``, for a twin), the ``colour_noise`` share, and the blank statistics."""
    from skimage.filters import sobel  # noqa: PLC0415

    x, speckle = _pixels(image, shape)
    if not np.isfinite(x).all():
        raise MetricError("expected finite pixel values for the health cues, got NaN/inf")
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    top, bottom = np.maximum(np.maximum(r, g), b), np.minimum(np.minimum(r, g), b)
    saturation = (top - bottom) / np.maximum(top, 1e-6)
    lab = _lab(x)
    edges = (np.hypot(sobel(lab[..., 1]), sobel(lab[..., 2])) if min(x.shape[:2]) >= 3
             else np.zeros(x.shape[:2]))
    light = lab[..., 0]
    light_p99, light_p1 = np.percentile(light, (99, 1))
    return {"colour_noise": _speckle_share(speckle),
            "vivid": ((saturation > VIVID_SATURATION) & (top > VIVID_VALUE)).astype(np.float64),
            "colour_edges": edges, "light": light,
            "light_p99": float(light_p99), "light_p1": float(light_p1),
            "spread": float(np.sqrt(sum(lab[..., i].var() for i in range(3)))),
            "chroma_p99": float(np.percentile(np.hypot(lab[..., 1], lab[..., 2]), 99))}


def health_workers() -> int:
    """Threads for assess_many: the CPUs this process may use, at most 8 (the cues are numpy,
    PIL and torch work that releases the GIL; 2 threads on 2 cores: ~1.6x)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:          # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(8, cpus))


def _clip01(v: float) -> float:
    return float(min(max(v, 0.0), 1.0))


def _absolute(s: dict[str, float]) -> dict[str, float]:
    return {"edges": _clip01(s["colour_edges"] / (2 * EDGE_THRESHOLD)),
            "noise": _clip01(s["colour_noise"] / NOISE_FULL),
            "vivid": _clip01((s["vivid"] - VIVID_START) / VIVID_SPAN)}


def _pair(image: Any, reference: Any, cache: TwinCache | None = None,
          key: Any = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Both images' maps at the image's working size (the twin is resized to match); the twin's
    from ``cache`` under ``key`` when both are given."""
    m = _maps(image)
    shape = m["light"].shape
    if cache is not None and key is not None:
        return m, cache.maps(key, reference, shape, _maps)
    return m, _maps(reference, shape=shape)


def _ssim_map(light: np.ndarray, ref_light: np.ndarray) -> np.ndarray:
    """Local SSIM (torchmetrics' definition, 11 px Gaussian window) of two L* maps, same shape."""
    import torch  # noqa: PLC0415

    if min(light.shape) < 11:
        raise MetricError(f"expected images of at least 11 px for SSIM, got {light.shape[1]}x"
                          f"{light.shape[0]}")
    a, b = (torch.from_numpy(v / 100.0)[None, None].float() for v in (light, ref_light))
    return ssim_full(a, b)[0, 0].double().numpy()


def structure_similarity(image: ImageLike, reference: ImageLike) -> float:
    """Mean SSIM (torchmetrics) of the two images' CIELAB lightness at the working size."""
    m, r = _pair(image, reference)
    return float(np.mean(_ssim_map(m["light"], r["light"])))


def _relative(m: dict[str, Any], ref: dict[str, Any]) -> dict[str, float]:
    """Twin-relative parts: increases over the twin; where the twin's structure survives (local
    SSIM of L* high) colour-edge and vivid increases are excused pixel by pixel."""
    excuse = np.clip((_ssim_map(m["light"], ref["light"]) - SSIM_NO_EXCUSE)
                     / (SSIM_FULL_EXCUSE - SSIM_NO_EXCUSE), 0.0, 1.0)
    counted = 1.0 - excuse
    edge_span = 2 * (EDGE_THRESHOLD - EDGE_CLEAN)
    return {"edges": _clip01(float(np.mean((m["colour_edges"] - ref["colour_edges"]) * counted))
                             / edge_span),
            "noise": _clip01((m["colour_noise"] - ref["colour_noise"]) / NOISE_FULL),
            "vivid": _clip01(float(np.mean((m["vivid"] - ref["vivid"]) * counted))
                             / VIVID_DELTA_SPAN)}


def _garbled_parts(m: dict[str, Any], ref: dict[str, Any] | None) -> dict[str, float]:
    own = _absolute({k: float(np.mean(v)) if isinstance(v, np.ndarray) else v
                     for k, v in m.items()})
    if ref is None:
        return own
    return {**_relative(m, ref), "absolute": max(own.values())}


def _garbled_from_parts(parts: dict[str, float]) -> float:
    parts = dict(parts)
    absolute = parts.pop("absolute", None)
    relative = max(parts.values())
    return relative if absolute is None else min(absolute, relative)


def _blank_parts(s: dict[str, float]) -> dict[str, float]:
    colourless = _clip01((GREY_CHROMA + CHROMA_SPAN - s["chroma_p99"]) / CHROMA_SPAN)
    return {"dark": _clip01((BLACK_L - s["light_p99"]) / L_SPAN) * colourless,
            "light": _clip01((s["light_p1"] - LIGHT_L) / L_SPAN) * colourless,
            "flat": _clip01((FLAT_SPREAD - s["spread"]) / FLAT_SPREAD)}


def garbled_components(image: ImageLike, reference: ImageLike | None = None) -> dict[str, float]:
    """Score parts in [0, 1]: ``edges``, ``noise``, ``vivid`` (absolute, or vs ``reference``).

    With a reference the parts are the twin-relative ones and an ``absolute`` entry carries the
    image's own score, which caps the result.
    """
    if reference is None:
        return _garbled_parts(_maps(image), None)
    return _garbled_parts(*_pair(image, reference))


def garbled_score(image: ImageLike, reference: ImageLike | None = None) -> float:
    """Garbled-ness in [0, 1]; above ``GARBLED_THRESHOLD`` (0.5, the protocol's default) = garbled."""
    return _garbled_from_parts(garbled_components(image, reference))


def blank_components(image: ImageLike) -> dict[str, float]:
    """Blank parts in [0, 1]: ``dark`` (near-black), ``light`` (near-white), ``flat`` (uniform)."""
    return _blank_parts(_maps(image))


def blank_score(image: ImageLike) -> float:
    """Blank-ness in [0, 1]; above ``BLANK_THRESHOLD`` (0.5, the protocol's default) = blank."""
    return max(blank_components(image).values())


def assess(image: ImageLike, reference: ImageLike | None = None, *,
           garbled_threshold: float = GARBLED_THRESHOLD, blank_threshold: float = BLANK_THRESHOLD,
           twin_cache: TwinCache | None = None, twin_key: Any = None) -> ImageHealth:
    """Both flags for one image (cues computed once); a blank image is not also garbled.

    ``twin_cache`` + ``twin_key`` (e.g. the reference's path): the reference's maps are made once
    per key and reused (same numbers; see TwinCache)."""
    m, ref = (_maps(image), None) if reference is None else _pair(image, reference, twin_cache,
                                                                  twin_key)
    g_score = _garbled_from_parts(_garbled_parts(m, ref))
    b_score = max(_blank_parts(m).values())
    blank = b_score > blank_threshold
    return ImageHealth(g_score, (g_score > garbled_threshold) and not blank, b_score, blank)


def assess_many(images: Sequence[ImageLike],
                references: Sequence[ImageLike | None] | None = None, *,
                garbled_threshold: float = GARBLED_THRESHOLD,
                blank_threshold: float = BLANK_THRESHOLD,
                twin_cache: TwinCache | None = None, twin_keys: Sequence[Any] | None = None,
                workers: int | None = None) -> list[ImageHealth]:
    """``assess`` of each image (with its reference, or None) on a thread pool, in order.

    Every image's numbers are computed exactly as ``assess`` computes them alone (no cue mixes
    images), so they do not depend on ``workers`` or on the batch. ``twin_keys``: one key per
    image for ``twin_cache`` (None where there is no reference)."""
    n = len(images)
    refs = list(references) if references is not None else [None] * n
    keys = list(twin_keys) if twin_keys is not None else [None] * n
    if len(refs) != n or len(keys) != n:
        raise MetricError(f"expected one reference and one twin key per image ({n}), got "
                          f"{len(refs)} and {len(keys)}")

    def one(i: int) -> ImageHealth:
        return assess(images[i], refs[i], garbled_threshold=garbled_threshold,
                      blank_threshold=blank_threshold, twin_cache=twin_cache, twin_key=keys[i])

    workers = min(n, health_workers() if workers is None else max(1, workers))
    if workers <= 1:
        return [one(i) for i in range(n)]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="health") as pool:
        return list(pool.map(one, range(n)))
