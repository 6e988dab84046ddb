"""What every adapter family's runtime offers the sampler: the ``AdapterRuntime`` protocol.

A runtime hides its family: the sampler only sets a ``Grounding`` (boxes, phrase vectors, mask,
per-sample gate scale) around each UNet call, and optionally a ``WriteMeter`` that records where
the adapter writes. Families are listed in gatebench.adapters.families (``FAMILIES``);
gatebench.checkpoint.load_adapter builds the runtime a checkpoint's family names.
"""
from __future__ import annotations

from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from gatebench.adapters.types import CheckpointInfo
    from gatebench.adapters.user import Grounding
    from gatebench.adapters.write_meter import WriteMeter


class AdapterRuntime(Protocol):
    family: str
    info: CheckpointInfo
    phrase_key: str               # which phrase encoding its grounding needs (the cache key)
    phrase_encoding: str          # that encoding, in words (results record it)
    fixed_slots: int | None       # boxes padded to this many slots (None: the batch's maximum)

    def grounded(self, grounding: Grounding | None) -> AbstractContextManager[None]: ...

    def measuring(self, meter: WriteMeter | None) -> AbstractContextManager[None]: ...

    def attach(self) -> None: ...

    def remove(self) -> None: ...


class OwnPhraseRuntime(AdapterRuntime, Protocol):
    """A runtime whose ``phrase_key`` is not ``"base"`` (GLIGEN: the pooler output) encodes its
    phrases itself; the sampler caches the vectors under that key."""

    def encode_phrases(self, phrases: list[str]) -> torch.Tensor: ...
