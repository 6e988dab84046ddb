"""Adapter families, recognised from the checkpoint and attached to a loaded base model.

An ``AdapterRuntime`` hides the family: the sampler only sets a ``Grounding`` (boxes, phrase
vectors, mask, per-sample gate scale) around each UNet call.
"""
from __future__ import annotations

import dataclasses
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol

import torch

from gatebench.adapters.user import AdapterSet, Grounding, inject, resolve_config, uses_phrases
from gatebench.checkpoint import CheckpointInfo, inspect_checkpoint, read_raw, strip_module_prefix
from gatebench.adapters.fit import load_state_checked
from gatebench.errors import CheckpointError


class AdapterRuntime(Protocol):
    family: str
    info: CheckpointInfo

    def grounded(self, grounding: Grounding | None) -> AbstractContextManager[None]: ...

    def remove(self) -> None: ...


class UserAdapterRuntime:
    """The user's per-width adapters, applied by forward hooks after every attn2."""

    family = "user"
    fixed_slots: int | None = None  # boxes padded to the batch's maximum: masks make it exact

    def __init__(self, info: CheckpointInfo, state: dict[str, torch.Tensor], base: Any) -> None:
        config = dict(info.adapter_config) if info.adapter_config.get("widths") else \
            AdapterSet.config_from_state(state)
        self.config = resolve_config(config)
        if int(config["text_dim"]) != int(base.phrase_dim):
            raise CheckpointError(
                f"expected the adapter's phrase width to equal the base model's phrase encoder "
                f"width {base.phrase_dim} ({base.phrase_encoding}), got text_dim "
                f"{config['text_dim']}", path=info.path,
                hint="this checkpoint was trained on a different base model")
        self.info = info
        self.adapters = AdapterSet.from_config(self.config)
        load_state_checked(self.adapters, state, info.path)
        # float32 whatever the UNet's dtype, as the user's inference casts its adapter
        self.adapters.to(device=base.device, dtype=torch.float32).eval().requires_grad_(False)
        self.injection = inject(base.unet, self.adapters)
        self.uses_phrases = uses_phrases(self.config, base.kind)
        self.phrase_encoding = base.phrase_encoding if self.uses_phrases else (
            f"none: the user's inference passes no phrase vectors on a {base.kind} base (context "
            f"= the boxes' position features alone; adapter_config phrases 'kolors-only')")

    def grounded(self, grounding: Grounding | None) -> AbstractContextManager[None]:
        if grounding is not None and not self.uses_phrases:
            grounding = dataclasses.replace(grounding, phrases=None)
        return self.injection.grounded(grounding)

    def remove(self) -> None:
        self.injection.remove()


def load_adapter(path: str | Path, base: Any, info: CheckpointInfo | None = None) -> AdapterRuntime:
    """Load a checkpoint's adapter onto ``base`` (a gatebench.models.BaseModel)."""
    info = info or inspect_checkpoint(path)
    raw, _ = read_raw(Path(path))
    state = strip_module_prefix({k: v for k, v in raw.items()})
    if info.family == "user":
        return UserAdapterRuntime(info, state, base)
    if info.family == "gligen":
        from gatebench.adapters.gligen import GligenAdapterRuntime
        return GligenAdapterRuntime(info, state, base)
    raise CheckpointError(f"expected adapter family 'user' or 'gligen', got {info.family!r}",
                          path=info.path)
