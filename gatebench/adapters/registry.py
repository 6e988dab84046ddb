"""Adapter families, recognised from the checkpoint and attached to a loaded base model.

An ``AdapterRuntime`` hides the family: the sampler only sets a ``Grounding`` (boxes, phrase
vectors, mask, per-sample gate scale) around each UNet call. Which runtime a checkpoint gets is
its family's (gatebench.adapters.families.FAMILIES, re-exported here with ``family_of``).
"""
from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol

from gatebench.adapters.families import FAMILIES, family_of, recognise, register_family
from gatebench.adapters.user import Grounding
from gatebench.adapters.user_runtime import UserAdapterRuntime
from gatebench.adapters.write_meter import WriteMeter
from gatebench.checkpoint import CheckpointInfo, inspect_checkpoint, read_raw, strip_module_prefix

__all__ = ["FAMILIES", "AdapterRuntime", "UserAdapterRuntime", "family_of", "load_adapter",
           "recognise", "register_family"]


class AdapterRuntime(Protocol):
    family: str
    info: CheckpointInfo

    def grounded(self, grounding: Grounding | None) -> AbstractContextManager[None]: ...

    def measuring(self, meter: WriteMeter | None) -> AbstractContextManager[None]: ...

    def remove(self) -> None: ...


def load_adapter(path: str | Path, base: Any, info: CheckpointInfo | None = None) -> AdapterRuntime:
    """Load a checkpoint's adapter onto ``base`` (a gatebench.models.BaseModel)."""
    info = info or inspect_checkpoint(path)
    raw, _ = read_raw(Path(path))
    state = strip_module_prefix({k: v for k, v in raw.items()})
    return family_of(info.family, info.path).runtime(info, state, base)
