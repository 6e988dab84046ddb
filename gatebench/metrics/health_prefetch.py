"""Image health off the critical path: computed on a background thread while the sampler makes
the next batch, then taken by the score stage instead of computed there.

Why: image health is CPU work (CIELAB, Sobel, a local SSIM map per image) and generation keeps
the accelerator busy with the CPU mostly idle; run after generation, health was the largest
share of scoring (a world run on a GPU: scoring 29 s, generation 7 s). The numbers are the
numbers ``assess`` gives alone (same image, same twin, same thresholds: the cues never mix
images), so they do not depend on whether, or when, they were prefetched.
"""
from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Sequence

import numpy as np

from gatebench.metrics.health import ImageHealth, assess, assess_many, health_workers
from gatebench.metrics.twin_cache import TwinCache


class HealthPrefetch:
    """Futures of ``assess`` by image key (its path as a string).

    One image at a time while the sampler runs (on a 2-core CPU the sampler keeps the other
    core; bench/generation_bench.py measures what it costs generation); once the score stage
    asks for the first verdict, generation is over and what is still queued drains on every
    worker (``health_workers``)."""

    def __init__(self, *, garbled_threshold: float, blank_threshold: float,
                 twin_cache: TwinCache | None = None, workers: int | None = None) -> None:
        self.garbled_threshold = garbled_threshold
        self.blank_threshold = blank_threshold
        self.twin_cache = twin_cache
        self._workers = max(1, health_workers() if workers is None else workers)
        self._pool = ThreadPoolExecutor(max_workers=self._workers, thread_name_prefix="health")
        self._permits = threading.Semaphore(1)     # one at a time while generating
        self._draining = False
        self._futures: dict[str, Future[ImageHealth]] = {}
        self._lock = threading.Lock()

    def submit(self, key: str, image: np.ndarray, reference: np.ndarray | None = None,
               twin_key: str | None = None) -> None:
        """Start ``assess(image, reference)``; a key already submitted is left as it is."""
        with self._lock:
            if key in self._futures:
                return
            self._futures[key] = self._pool.submit(
                self._assess, image, reference, twin_key if reference is not None else None)

    def _assess(self, image: np.ndarray, reference: np.ndarray | None,
                twin_key: str | None) -> ImageHealth:
        with self._permits:
            return assess(image, reference, garbled_threshold=self.garbled_threshold,
                          blank_threshold=self.blank_threshold, twin_cache=self.twin_cache,
                          twin_key=twin_key)

    def drain(self) -> None:
        """Generation is over: what is still queued may use every worker."""
        with self._lock:
            if self._draining:
                return
            self._draining = True
        for _ in range(self._workers - 1):
            self._permits.release()

    def take(self, key: str, garbled_threshold: float, blank_threshold: float
             ) -> ImageHealth | None:
        """The prefetched verdict of ``key`` (waiting for it), or None when it was not
        prefetched or under other thresholds; an error of ``assess`` is raised here, where the
        score stage would have raised it."""
        if (garbled_threshold, blank_threshold) != (self.garbled_threshold,
                                                    self.blank_threshold):
            return None
        with self._lock:
            future = self._futures.get(key)
        if future is None:
            return None
        self.drain()
        return future.result()

    def __len__(self) -> int:
        return len(self._futures)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> "HealthPrefetch":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def assess_with(prefetch: HealthPrefetch | None, keys: Sequence[str], images: Sequence[Any],
                references: Sequence[Any], *, garbled_threshold: float, blank_threshold: float,
                twin_cache: TwinCache | None, twin_keys: Sequence[Any]) -> list[ImageHealth]:
    """Each image's verdict, in order: prefetched where it was, ``assess_many`` for the rest."""
    taken = [prefetch.take(k, garbled_threshold, blank_threshold) if prefetch is not None
             else None for k in keys]
    rest = [i for i, h in enumerate(taken) if h is None]
    if rest:
        made = assess_many([images[i] for i in rest], [references[i] for i in rest],
                           garbled_threshold=garbled_threshold, blank_threshold=blank_threshold,
                           twin_cache=twin_cache, twin_keys=[twin_keys[i] for i in rest])
        for i, health in zip(rest, made, strict=True):
            taken[i] = health
    return [h for h in taken if h is not None]
