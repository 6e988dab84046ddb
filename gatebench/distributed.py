"""torchrun support for `gatebench run`: the process group, and collectives that every rank
reaches and that end in a clear error instead of a hang.

The hang this prevents: ultralytics' import runs its settings manager under
``torch_distributed_zero_first``, a ``barrier()`` whenever a process group exists. Only rank 0
scores, so only rank 0 imported it (lazily, loading the detector) while rank 1 already waited in
the generation-count all_reduce: two ranks in two different collectives, forever. Every
collective gatebench or a library it imports makes is now reached by every rank in the same
order, and the group has a timeout.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from datetime import timedelta
from typing import TYPE_CHECKING, Iterator

import torch

from gatebench.errors import GatebenchError

if TYPE_CHECKING:
    from gatebench.generate import GenerationStats
    from gatebench.protocol import Protocol

TIMEOUT_ENV = "GATEBENCH_DIST_TIMEOUT"     # seconds a rank waits for the others
DEFAULT_TIMEOUT_S = 1800.0


class DistributedError(GatebenchError):
    """A rank waited longer than the timeout for the others (one failed or is stuck)."""


def timeout_seconds() -> float:
    raw = os.environ.get(TIMEOUT_ENV)
    if raw is None:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise GatebenchError(f"expected ${TIMEOUT_ENV} to be a positive number of seconds, got "
                             f"{raw!r}", hint=f"e.g. {TIMEOUT_ENV}=600")
    return value


def distributed() -> tuple[int, int]:
    """(rank, world) under torchrun (gloo on CPU, nccl on GPU); (0, 1) otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo",
                                             timeout=timedelta(seconds=timeout_seconds()))
    return torch.distributed.get_rank(), world


@contextmanager
def collective(what: str) -> Iterator[None]:
    """Run a collective; a timeout (or a peer that died) becomes one clear error line."""
    try:
        yield
    except (RuntimeError, torch.distributed.DistBackendError) as exc:
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        text = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise DistributedError(
            f"rank {rank} gave up waiting for the other ranks at {what} after at most "
            f"{timeout_seconds():g} s ({text})",
            hint=f"another rank failed or is stuck: see its output above; set ${TIMEOUT_ENV} "
            f"to wait longer") from None


def import_collective_libraries(protocol: Protocol, world: int) -> None:
    """Import, on EVERY rank and at the same point, the libraries whose import is itself a
    collective (ultralytics: a barrier) before any rank can be inside another collective."""
    if world > 1 and protocol.models.detector:
        from gatebench.metrics.detect import import_ultralytics  # noqa: PLC0415

        with collective("the ultralytics import (its settings barrier)"):
            import_ultralytics()


def sum_over_ranks(stats: GenerationStats, counts: tuple[str, ...], seconds: tuple[str, ...]) -> None:
    """Sum ``stats``' count and time fields over every rank, in place."""
    values = torch.tensor([float(getattr(stats, f)) for f in counts + seconds], dtype=torch.float64)
    with collective("summing the generation counts (all_reduce)"):
        torch.distributed.all_reduce(values)
    for name, value in zip(counts + seconds, values.tolist(), strict=True):
        setattr(stats, name, int(value) if name in counts else float(value))


def barrier(what: str) -> None:
    with collective(what):
        torch.distributed.barrier()
