"""The twin-side image-health maps of references, made once per run (see ``TwinCache``)."""
from __future__ import annotations

import threading
from typing import Any, Callable

import numpy as np


class TwinCache:
    """The twin-side cue maps of references, by a caller's key (a path): in a run the gate-0
    image is the twin of every other scale's image of its layout, so its maps are made once, not
    once per checkpoint and scale. Holds at most ``max_bytes``; past that, maps are made and not
    kept (the first ones kept stay: a run scores layouts in the same order for every set).
    Thread-safe (assess_many); the numbers are the same with or without it."""

    def __init__(self, max_bytes: int = 512 << 20) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self.hits = 0
        self._maps: dict[Any, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def maps(self, key: Any, reference: Any, shape: tuple[int, int],
             make: Callable[..., dict[str, Any]]) -> dict[str, Any]:
        """The twin-side maps of ``reference`` at ``shape``: kept ones, else ``make(reference,
        shape=shape)`` (the cue maps of metrics.health), kept when the budget allows."""
        entry = self._maps.get((key, shape))
        if entry is not None:
            self.hits += 1
            return entry
        m = make(reference, shape=shape)
        entry = {"colour_noise": m["colour_noise"], "colour_edges": m["colour_edges"],
                 "light": m["light"], "vivid": m["vivid"].astype(bool)}  # 0/1: exact as bool
        size = sum(v.nbytes for v in entry.values() if isinstance(v, np.ndarray))
        with self._lock:
            if (key, shape) not in self._maps and self.bytes + size <= self.max_bytes:
                self._maps[(key, shape)] = entry
                self.bytes += size
        return entry
