"""The vectorised image-health cues give the numbers the per-call version gave, bit for bit.

``_old_*`` below are copies of gatebench.metrics.health as it was before the cues were made
fast (one decode per image, the speckle share from the working pixels when they are the same,
a min/max median-of-9 network instead of scipy's median_filter, channel maxima without an axis
reduction, both L* percentiles in one call, twin maps cached and images assessed on threads).
``_old_ssim_map`` calls torchmetrics, which health.py now restates op for op. The parts that
did not change (the score formulas) are the module's own.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import median_filter

from gatebench.metrics import health
from gatebench.metrics.corruptions import corrupt
from gatebench.metrics.images import to_pil_rgb
from gatebench.metrics.spec import GARBLED_THRESHOLD

DATA = Path(__file__).parent / "data" / "health"


# --- the old cues, verbatim but for names ------------------------------------------------------
def _old_array(image, upscale=True):
    pil = to_pil_rgb(image)
    if max(pil.size) > health.WORK_SIDE or (upscale and max(pil.size) < health.WORK_SIDE):
        scale = health.WORK_SIDE / max(pil.size)
        size = (max(1, round(pil.size[0] * scale)), max(1, round(pil.size[1] * scale)))
        pil = pil.resize(size, Image.BOX if scale < 1 else Image.NEAREST)
    return np.asarray(pil, dtype=np.float64) / 255.0


def _old_speckle(image):
    x = _old_array(image, upscale=False)
    y = 0.299 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2]
    cb, cr = x[..., 2] - y, x[..., 0] - y
    dev = np.hypot(cb - median_filter(cb, size=3, mode="reflect"),
                   cr - median_filter(cr, size=3, mode="reflect"))
    return float(np.mean(dev > health.CHROMA_DEVIATION))


def _old_maps(image, shape=None):
    from skimage.color import rgb2lab
    from skimage.filters import sobel

    if shape is None:
        x = _old_array(image)
    else:
        x = np.asarray(to_pil_rgb(image).resize((shape[1], shape[0]), Image.BOX),
                       dtype=np.float64) / 255.0
    top, bottom = x.max(axis=-1), x.min(axis=-1)
    saturation = (top - bottom) / np.maximum(top, 1e-6)
    lab = rgb2lab(x)
    edges = (np.hypot(sobel(lab[..., 1]), sobel(lab[..., 2])) if min(x.shape[:2]) >= 3
             else np.zeros(x.shape[:2]))
    light = lab[..., 0]
    return {"colour_noise": _old_speckle(image),
            "vivid": ((saturation > health.VIVID_SATURATION)
                      & (top > health.VIVID_VALUE)).astype(np.float64),
            "colour_edges": edges, "light": light,
            "light_p99": float(np.percentile(light, 99)), "light_p1": float(np.percentile(light, 1)),
            "spread": float(np.sqrt(sum(lab[..., i].var() for i in range(3)))),
            "chroma_p99": float(np.percentile(np.hypot(lab[..., 1], lab[..., 2]), 99))}


def _old_ssim_map(light, ref_light):
    import torch
    from torchmetrics.functional.image import structural_similarity_index_measure

    a, b = (torch.from_numpy(v / 100.0)[None, None].float() for v in (light, ref_light))
    _, full = structural_similarity_index_measure(a, b, data_range=1.0, return_full_image=True)
    return full[0, 0].double().numpy()


def _old_relative(m, ref):
    excuse = np.clip((_old_ssim_map(m["light"], ref["light"]) - health.SSIM_NO_EXCUSE)
                     / (health.SSIM_FULL_EXCUSE - health.SSIM_NO_EXCUSE), 0.0, 1.0)
    counted = 1.0 - excuse
    edge_span = 2 * (health.EDGE_THRESHOLD - health.EDGE_CLEAN)
    clip01 = health._clip01
    return {"edges": clip01(float(np.mean((m["colour_edges"] - ref["colour_edges"]) * counted))
                            / edge_span),
            "noise": clip01((m["colour_noise"] - ref["colour_noise"]) / health.NOISE_FULL),
            "vivid": clip01(float(np.mean((m["vivid"] - ref["vivid"]) * counted))
                            / health.VIVID_DELTA_SPAN)}


def _old_assess(image, reference=None):
    m = _old_maps(image)
    own = health._absolute({k: float(np.mean(v)) if isinstance(v, np.ndarray) else v
                            for k, v in m.items()})
    if reference is None:
        parts = own
    else:
        if min(m["light"].shape) < 11:
            raise health.MetricError("expected images of at least 11 px for SSIM")
        ref = _old_maps(reference, shape=m["light"].shape)
        parts = {**_old_relative(m, ref), "absolute": max(own.values())}
    g = health._garbled_from_parts(parts)
    b = max(health._blank_parts(m).values())
    blank = b > health.BLANK_THRESHOLD
    return health.ImageHealth(g, (g > GARBLED_THRESHOLD) and not blank, b, blank)


# --- images: real calibration ones, corrupted, small (the shapes world), large, odd shapes -----
def _images() -> list[np.ndarray]:
    from gatebench.protocol import ASSETS_DIR

    real = [np.asarray(Image.open(p).convert("RGB")) for p in sorted(DATA.glob("*.png"))]
    world = [np.asarray(Image.open(p).convert("RGB")) for p in
             sorted((ASSETS_DIR / "data" / "images" / "test").glob("*.png"))[:4]]
    rng = np.random.default_rng(0)
    odd = [rng.integers(0, 256, shape + (3,), dtype=np.uint8)
           for shape in [(1, 1), (2, 3), (5, 7), (17, 300), (256, 255), (257, 100), (300, 300)]]
    return (real + world + odd
            + [corrupt(real[4], kind, 0.3, seed=1) for kind in ("noise", "streaks", "blotches")]
            + [np.asarray(Image.fromarray(real[0]).resize((1024, 768), Image.BICUBIC))])


IMAGES = _images()


def _same(a, b) -> bool:
    return np.array_equal(a, b) if isinstance(a, np.ndarray) else a == b


def test_cue_maps_equal_the_old_ones_bit_for_bit() -> None:
    for i, image in enumerate(IMAGES):
        old, new = _old_maps(image), health._maps(image)
        assert old.keys() == new.keys()
        for key in old:
            assert _same(old[key], new[key]), (i, image.shape, key)
        assert health.health_stats(image) == {k: float(np.mean(v)) if isinstance(v, np.ndarray)
                                              else v for k, v in old.items() if k != "light"}
        assert health._speckle(image) == _old_speckle(image)
        for shape in ((64, 48), (256, 256)):   # as a twin: resized to the image's working size
            old, new = _old_maps(image, shape=shape), health._maps(image, shape=shape)
            assert all(_same(old[k], new[k]) for k in old), (i, image.shape, shape)


def test_assess_equals_the_old_one_alone_with_a_twin_cached_and_on_threads() -> None:
    sized = [im for im in IMAGES if min(im.shape[:2]) >= 11]     # SSIM needs 11 px
    pairs = [(im, sized[(i + 3) % len(sized)]) for i, im in enumerate(sized)]
    old = [_old_assess(im) for im in IMAGES]
    assert [health.assess(im) for im in IMAGES] == old
    old_twin = [_old_assess(im, ref) for im, ref in pairs]
    assert [health.assess(im, ref) for im, ref in pairs] == old_twin
    cache = health.TwinCache()
    keys = [id(ref) for _, ref in pairs]
    for _ in range(2):                         # misses, then hits
        assert [health.assess(im, ref, twin_cache=cache, twin_key=k)
                for (im, ref), k in zip(pairs, keys, strict=True)] == old_twin
    assert cache.hits >= len(pairs)
    for workers in (1, 3):
        assert health.assess_many(IMAGES, workers=workers) == old
        assert health.assess_many([im for im, _ in pairs], [ref for _, ref in pairs],
                                  twin_cache=health.TwinCache(), twin_keys=keys,
                                  workers=workers) == old_twin


def test_twin_cache_keeps_within_its_budget_and_still_answers() -> None:
    image, ref = IMAGES[0], IMAGES[1]
    full = health.TwinCache(max_bytes=0)       # keeps nothing, computes every time
    assert health.assess(image, ref, twin_cache=full, twin_key="r") == _old_assess(image, ref)
    assert full.bytes == 0 and full.hits == 0
    with pytest.raises(Exception, match="one reference and one twin key per image"):
        health.assess_many([image, image], [ref])


@pytest.mark.parametrize("shape", [(11, 11), (11, 40), (37, 12), (256, 256), (300, 200)])
def test_ssim_restated_equals_torchmetrics_bit_for_bit(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(shape[0] + shape[1])
    light = rng.uniform(0, 100, shape)
    for ref in (light, light * 0.7 + 10, rng.uniform(0, 100, shape), np.full(shape, 50.0)):
        assert np.array_equal(health._ssim_map(light, ref), _old_ssim_map(light, ref))


def test_scoring_does_not_import_torchmetrics() -> None:
    import subprocess
    import sys

    code = ("import sys, numpy as np; from gatebench.metrics.health import assess; "
            "x = np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8); "
            "assess(x, x[::-1]); print('torchmetrics' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


@pytest.mark.parametrize("shape", [(1, 1), (1, 5), (2, 2), (3, 4), (9, 1), (31, 17), (64, 64)])
def test_median_network_equals_scipys_median_filter(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(shape[0] * 100 + shape[1])
    for values in (rng.normal(size=shape), rng.integers(0, 4, shape).astype(np.float64)):
        assert np.array_equal(health._median3(values),
                              median_filter(values, size=3, mode="reflect"))
