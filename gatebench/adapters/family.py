"""What an adapter family is to gatebench: one frozen record of the hooks the reader and the
loader call, plus the tensor helpers every family's gate reader shares.

A family module (adapters/user_runtime.py, adapters/gligen.py) builds one ``AdapterFamily``;
adapters/families.py lists them. gatebench.checkpoint and load_adapter only loop over that list,
so a new family is a new module and one entry there, with no edit to the reader.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence

import torch

from gatebench.errors import CheckpointError

if TYPE_CHECKING:
    from gatebench.adapters.registry import AdapterRuntime
    from gatebench.adapters.types import CheckpointInfo, GateEntry
    from gatebench.models.base import BaseModel


def no_check(state: Mapping[str, Any], path: Path) -> None:
    """The default ``check_state``: a family with no keys to vet before recognition."""


@dataclass(frozen=True)
class AdapterFamily:
    """One adapter family's hooks. ``recognise`` sees the state dict's keys; the first family
    (in FAMILIES order) that recognises a file reads its gates. ``runtime(info, state, base)``
    attaches the adapter to a loaded base model (state: keys without a DDP ``module.``).
    ``check_state`` runs on every file before recognition, so a value under a family's own keys
    that would fail deep inside it is refused first, whichever family the file turns out to be."""

    name: str
    example_key: str              # shown when no family recognises a file
    recognise: Callable[[Sequence[str]], bool]
    read_gates: Callable[[Mapping[str, Any], Path], "tuple[GateEntry, ...]"]
    forward_config: Callable[[Mapping[str, Any], Mapping[str, Any]], dict]
    reference_uncond: Callable[["CheckpointInfo"], str]
    runtime: Callable[[CheckpointInfo, dict[str, torch.Tensor], BaseModel], AdapterRuntime]
    check_state: Callable[[Mapping[str, Any], Path], None] = no_check


def gate_value(tensor: Any, key: str, path: Path) -> float:
    """A gate's raw value: the first element of a non-empty tensor, as float."""
    if not isinstance(tensor, torch.Tensor) or tensor.numel() < 1:
        got = (f"an empty tensor of shape {tuple(tensor.shape)}" if isinstance(tensor, torch.Tensor)
               else type(tensor).__name__)
        raise CheckpointError(f"expected gate '{key}' to be a tensor with one value, got {got}",
                              path=path)
    return float(tensor.detach().reshape(-1)[0].float())


def all_zero(state: Mapping[str, Any], keys: Iterable[str], path: Path) -> bool | None:
    """Whether the present ``keys`` (an output projection) are all zero; None if none present."""
    present = [k for k in keys if k in state]
    if not present:
        return None
    for key in present:
        if not isinstance(state[key], torch.Tensor):
            raise CheckpointError(f"expected '{key}' to be a tensor, got "
                                  f"{type(state[key]).__name__}", path=path,
                                  hint="the file is not a saved adapter state dict")
    return all(bool((state[k].float() == 0).all()) for k in present)
