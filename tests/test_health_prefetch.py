"""Image health started during generation (metrics/health_prefetch.py) gives the verdicts
``assess`` gives alone, and the score stage takes them instead of computing them again."""
from __future__ import annotations

import numpy as np
import pytest

from gatebench.errors import MetricError
from gatebench.metrics import health_prefetch as prefetch_module
from gatebench.metrics.health import assess
from gatebench.metrics.health_prefetch import HealthPrefetch, assess_with
from gatebench.metrics.twin_cache import TwinCache


def _images(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (24, 24, 3), dtype=np.uint8) for _ in range(n)]


def test_prefetched_verdicts_equal_assess_alone() -> None:
    images, twins = _images(6), _images(6, seed=1)
    with HealthPrefetch(garbled_threshold=0.5, blank_threshold=0.5, twin_cache=TwinCache(),
                        workers=2) as health:
        for i, (image, twin) in enumerate(zip(images, twins, strict=True)):
            health.submit(f"a{i}", image, twin if i % 2 else None, f"t{i}")
        for i, (image, twin) in enumerate(zip(images, twins, strict=True)):
            assert health.take(f"a{i}", 0.5, 0.5) == assess(image, twin if i % 2 else None)
        assert health.take("never", 0.5, 0.5) is None
        assert health.take("a0", 0.4, 0.5) is None      # other thresholds: not this verdict
        assert len(health) == 6


def test_the_score_stage_takes_prefetched_verdicts_and_computes_the_rest(monkeypatch) -> None:
    images = _images(4)
    calls = []
    real = prefetch_module.assess_many

    def counted(batch, *args, **kwargs):
        calls.append(len(batch))
        return real(batch, *args, **kwargs)

    monkeypatch.setattr(prefetch_module, "assess_many", counted)
    with HealthPrefetch(garbled_threshold=0.5, blank_threshold=0.5) as health:
        health.submit("k0", images[0])
        health.submit("k2", images[2])
        got = assess_with(health, ["k0", "k1", "k2", "k3"], images, [None] * 4,
                          garbled_threshold=0.5, blank_threshold=0.5, twin_cache=None,
                          twin_keys=[None] * 4)
    assert got == [assess(image) for image in images] and calls == [2]


def test_an_error_in_a_prefetched_verdict_is_raised_where_it_is_taken(monkeypatch) -> None:
    def broken(image, *args, **kwargs):
        raise MetricError("expected finite pixel values for the health cues, got NaN/inf")

    monkeypatch.setattr(prefetch_module, "assess", broken)
    with HealthPrefetch(garbled_threshold=0.5, blank_threshold=0.5) as health:
        health.submit("bad", _images(1)[0])
        with pytest.raises(MetricError, match="finite pixel values"):
            health.take("bad", 0.5, 0.5)


def test_the_prefetch_runs_only_where_a_core_is_free_of_generation(monkeypatch) -> None:
    import torch

    from gatebench import run

    monkeypatch.setattr(run, "health_workers", lambda: 2)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert not run._prefetch_pays("auto", "cpu")          # every core samples: it would compete
    assert run._prefetch_pays("auto", "cuda:0") and run._prefetch_pays("on", "cpu")
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert run._prefetch_pays("auto", "cpu") and not run._prefetch_pays("off", "cuda")
