"""The stage timer (gatebench/metrics/timing.py): the hook bench/generation_bench.py times the real
generate_all / score_sets through. It sums named phases, syncs at their edges, refuses nesting,
and the score stage charges it every phase it names without changing a number."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gatebench.layouts import Layout, LayoutObject
from gatebench.metrics.detect import Detection
from gatebench.metrics.fid import ModuleExtractor
from gatebench.metrics.timing import StageTimer, phase
from gatebench.protocol import DataSpec, Protocol, ScoringSpec
from gatebench.score import ImageItem, score_images
from tests.builders import TinyFeatures

PROTOCOL = Protocol(name="test", data=DataSpec(min_area=0.0, max_area=1.0, min_side=0.0),
                    scoring=ScoringSpec(bootstrap=50))
BOX_A = (0.1, 0.1, 0.5, 0.5)


def draw(path: Path, seed: int, noise: bool = False, size: int = 32) -> Path:
    """A grey image with a red square at BOX_A; ``noise``: random colours instead."""
    pixels = np.full((size, size, 3), 200, np.uint8)
    pixels[3:16, 3:16] = (220, 30, 30)
    if noise:
        pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def test_phases_sum_sync_at_their_edges_and_do_not_nest() -> None:
    syncs: list[str] = []
    timer = StageTimer(sync=lambda: syncs.append("sync"))
    with timer.phase("a"):
        pass
    with timer.phase("a"):
        pass
    with timer.phase("b"):
        pass
    assert timer.calls == {"a": 2, "b": 1} and set(timer.seconds) == {"a", "b"}
    assert all(v >= 0 for v in timer.seconds.values())
    assert timer.total() == pytest.approx(sum(timer.seconds.values()))
    assert syncs == ["sync"] * 6                     # each phase's start and end
    with pytest.raises(RuntimeError, match="not to nest, got 'inner' inside 'outer'"):
        with timer.phase("outer"):
            with timer.phase("inner"):
                pass
    with timer.phase("after"):                       # the failed nesting closed cleanly
        pass
    assert timer.calls["outer"] == 1 and "inner" not in timer.calls


def test_no_timer_is_one_shared_no_op() -> None:
    assert phase(None, "x") is phase(None, "y")
    with phase(None, "x"):
        pass


def test_score_images_charges_its_phases_and_changes_no_number(tmp_path: Path) -> None:
    items, real = [], []
    for i in range(3):
        layout = Layout(f"L{i}", "red square", (LayoutObject("red square", BOX_A),))
        base = draw(tmp_path / f"s0_{i}.png", i)
        strong = draw(tmp_path / f"s2_{i}.png", i, noise=True)
        real.append(draw(tmp_path / f"real_{i}.png", 10 + i, noise=True))
        items += [ImageItem(base, layout, 0.0), ImageItem(strong, layout, 2.0, base)]
    detections = {it.image_path.name: [Detection(BOX_A, "red square", 0.9)] for it in items}
    kwargs = dict(detections=detections, detector_labels={"red square"},
                  fid_extractor=ModuleExtractor(TinyFeatures(), name="tiny", input_size=16),
                  real_images=real, cache_dir=tmp_path / "cache")
    timer = StageTimer()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")          # small-N FID warnings: not this test's subject
        plain = score_images(items, PROTOCOL, **kwargs)
        timed = score_images(items, PROTOCOL, **kwargs, timer=timer)
    assert {"pixels", "image_health", "fid_features", "detection", "metric:iou50_rate",
            "metric:garbled_rate", "metric:fid", "metric:kid", "metric:ap50"} <= set(timer.seconds)
    assert "clip" not in timer.seconds               # no CLIP configured: no phase opened
    # one chunk of 6 images; aggregation once over all and once per gate scale (3 sets)
    assert timer.calls["pixels"] == 1 and timer.calls["metric:fid"] == 3
    assert json.dumps(timed.to_dict(), sort_keys=True) == json.dumps(plain.to_dict(),
                                                                     sort_keys=True)
