"""An optional stage timer threaded through generation and scoring: named phases, wall seconds.

Why: bench/generation_bench.py measures where gatebench's own ``plan.generate_all`` and
``score_run.score_sets`` spend their time, not a copy of them, and without patching module
names. The library only opens a phase through ``phase(timer, name)``; with no timer that is one
shared no-op context, so a normal run records nothing and pays nothing.

Phase names the library opens (the bench groups them into its table's rows):
``adapter_load`` (plan.generate_all), ``pixels``, ``image_health``, ``fid_features``,
``detection``, ``clip`` (score.score_images, per chunk of images) and ``metric:<name>``
(metrics/aggregate.py: each metric computed, a per-image metric's units and CI or a set-level
metric's value).
"""
from __future__ import annotations

import time
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Callable, Iterator


def _no_sync() -> None:
    """The CPU's sync: nothing is queued."""


@dataclass
class StageTimer:
    """Summed wall seconds and calls per phase name.

    ``sync`` runs at each phase's start and end: on CUDA a ``torch.cuda.synchronize``, so a
    phase is charged its own queued GPU work, not the one before it. Phases do not nest (a
    nested one would be counted twice in the sums): opening one inside another is an error."""

    sync: Callable[[], None] = _no_sync
    seconds: dict[str, float] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)
    _open: str | None = field(default=None, repr=False)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        if self._open is not None:
            raise RuntimeError(f"expected stage timer phases not to nest, got '{name}' inside "
                               f"'{self._open}'")
        self.sync()
        self._open = name
        began = time.perf_counter()
        try:
            yield
        finally:
            self.sync()
            self._open = None
            self.add(name, time.perf_counter() - began)

    def add(self, name: str, seconds: float) -> None:
        """Charge ``seconds`` to ``name`` (one call)."""
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds
        self.calls[name] = self.calls.get(name, 0) + 1

    def total(self) -> float:
        return sum(self.seconds.values())


_NO_PHASE: AbstractContextManager[None] = nullcontext()


def phase(timer: StageTimer | None, name: str) -> AbstractContextManager[None]:
    """``timer.phase(name)``, or a shared no-op context when there is no timer."""
    return _NO_PHASE if timer is None else timer.phase(name)
