"""The user family as gatebench sees it: how its files are recognised and their gates read,
the forward config a file implies, and the runtime that hooks its adapters onto a base UNet.

Kept apart from adapters/user.py, which is the adapter module itself (and near 400 lines).
Files: the user's bare ``torch.save(state_dict)`` of per-width adapters,
``dim_{D}.gated_attn.gate`` (optional DDP ``module.`` prefix), see ARCHITECTURE.md ("The user's formats").
"""
from __future__ import annotations

import dataclasses
import re
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import torch

from gatebench.adapters.family import AdapterFamily, all_zero, gate_value
from gatebench.adapters.fit import load_state_checked
from gatebench.adapters.types import CheckpointInfo, GateEntry
from gatebench.adapters.user import AdapterSet, Grounding, inject, resolve_config, uses_phrases
from gatebench.adapters.write_meter import WriteMeter
from gatebench.errors import CheckpointError
from gatebench.readers.checkpoint_header import check_user_state

if TYPE_CHECKING:
    from gatebench.models.base import BaseModel

_USER_GATE = re.compile(r"^(?:module\.)?dim_(\d+)\.gated_attn\.gate$")


class UserAdapterRuntime:
    """The user's per-width adapters, applied by forward hooks after every attn2."""

    family = "user"
    phrase_key = "base"             # the base model's own phrase encoding
    fixed_slots: int | None = None  # boxes padded to the batch's maximum: masks make it exact

    def __init__(self, info: CheckpointInfo, state: dict[str, torch.Tensor], base: BaseModel) -> None:
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
        self._unet = base.unet
        self.injection = inject(base.unet, self.adapters)
        self.uses_phrases = uses_phrases(self.config, base.kind)
        self.phrase_encoding = base.phrase_encoding if self.uses_phrases else (
            f"none: the user's inference passes no phrase vectors on a {base.kind} base (context "
            f"= the boxes' position features alone; adapter_config phrases 'kolors-only')")

    def grounded(self, grounding: Grounding | None) -> AbstractContextManager[None]:
        if grounding is not None and not self.uses_phrases:
            grounding = dataclasses.replace(grounding, phrases=None)
        return self.injection.grounded(grounding)

    def measuring(self, meter: WriteMeter | None) -> AbstractContextManager[None]:
        return self.injection.measuring(meter)

    def remove(self) -> None:
        self.injection.remove()

    def attach(self) -> None:
        """Hook the loaded adapters on again after ``remove`` (nothing while attached): a run's
        preflight load is the one its generation uses (plan.LoadedAdapters)."""
        if not self.injection.handles:
            self.injection = inject(self._unet, self.adapters)


def recognise(keys: Sequence[str]) -> bool:
    """Any ``dim_{D}.gated_attn.gate`` key makes a file a user-family one."""
    return any(_USER_GATE.match(key) for key in keys)


def read_gates(state: Mapping[str, Any], path: Path) -> tuple[GateEntry, ...]:
    """One gate per width, sorted by width; ``to_out`` is the projection the gate multiplies."""
    gates: list[GateEntry] = []
    for key in state:
        match = _USER_GATE.match(key)
        if match:
            width = int(match.group(1))
            base = key[: -len("gate")]
            proj = [base + "to_out.weight", base + "to_out.bias"]
            gates.append(GateEntry(key=key, layer=f"dim_{width}", kind="gate", width=width,
                                   raw=gate_value(state[key], key, path), out_proj_key=proj[0],
                                   out_proj_zero=all_zero(state, proj, path)))
    return tuple(sorted(gates, key=lambda g: (g.width or 0, g.key)))


def forward_config(header: Mapping[str, Any], state: Mapping[str, Any]) -> dict:
    """A recorded config, completed (old gatebench files keep their forward), else the user's
    reference sized from the state; a gates-only file keeps what it recorded, so `gates` works
    and loading the adapter says why not."""
    recorded = dict(header.get("adapter_config") or {})
    try:
        return resolve_config(recorded) if recorded.get("widths") else \
            AdapterSet.config_from_state(state)
    except CheckpointError:
        return recorded


def reference_uncond(info: CheckpointInfo) -> str:
    """The user's inference grounds both CFG halves; a gatebench file says how it trained."""
    if info.format == "gatebench":
        return info.training.uncond_boxes or "off"
    return "grounded"


USER_FAMILY = AdapterFamily(name="user", example_key="dim_640.gated_attn.gate",
                            recognise=recognise, read_gates=read_gates,
                            forward_config=forward_config, reference_uncond=reference_uncond,
                            runtime=UserAdapterRuntime, check_state=check_user_state)
