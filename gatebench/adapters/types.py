"""The plain, torch-free records of a checkpoint: its gates, training metadata and summary.

They live here (not in gatebench.checkpoint) so adapter family modules can build ``GateEntry``
values and take ``CheckpointInfo`` without importing the reader; import them from here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, cast


@dataclass(frozen=True)
class GateEntry:
    """One gate: its raw value, its effect tanh(raw) and whether its output projection is zero."""

    key: str
    layer: str
    kind: str                     # "gate" (user family), "alpha_attn" or "alpha_dense" (gligen)
    width: int | None
    raw: float
    out_proj_key: str | None = None
    out_proj_zero: bool | None = None   # None: the projection is not in the file

    @property
    def effective(self) -> float:
        return math.tanh(self.raw) if math.isfinite(self.raw) else float("nan")


@dataclass(frozen=True)
class TrainingMeta:
    """What the training code recorded; every field optional for foreign checkpoints."""

    step: int | None = None
    epoch: int | None = None
    init_scheme: str | None = None
    gate_init: float | None = None
    scale_min: float | None = None
    scale_max: float | None = None
    data_sha256: str | None = None
    uncond_boxes: str | None = None     # what a caption-dropped sample's adapter got (>= 0.2)
    gate_history: tuple[tuple[int, float, float, float, float], ...] = ()

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any] | None) -> "TrainingMeta":
        raw = dict(raw or {})
        # rows of five (step, mean, std, min, max): readers/checkpoint_header.py checks the width
        history = cast("tuple[tuple[int, float, float, float, float], ...]", tuple(
            tuple(float(v) if i else int(v) for i, v in enumerate(row))
            for row in raw.get("gate_history", ())))
        known: dict[str, Any] = {k: raw.get(k) for k in ("step", "epoch", "init_scheme", "gate_init", "scale_min",
                                         "scale_max", "data_sha256", "uncond_boxes")}
        return cls(**known, gate_history=history)


@dataclass(frozen=True)
class CheckpointInfo:
    """Everything `gates` needs from one checkpoint file, without the adapter weights."""

    path: Path
    sha256: str
    size_bytes: int
    format: str                    # a family name (a bare file) or "gatebench"
    family: str                    # a name in gatebench.adapters.families.FAMILIES
    gates: tuple[GateEntry, ...]
    training: TrainingMeta = field(default_factory=TrainingMeta)
    adapter_config: Mapping[str, Any] = field(default_factory=dict)
    base_model: Mapping[str, Any] = field(default_factory=dict)
    # The CFG treatment this adapter was made for (``uncond_boxes = "reference"``), set by
    # checkpoint.inspect_checkpoint from its family's rule: the user's inference grounds both
    # halves; diffusers' GLIGEN pipeline gives the unconditional half null objects; a gatebench
    # checkpoint says how its caption-dropped samples trained (before 0.2: adapter off).
    reference_uncond: str = "grounded"

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(sorted({g.width for g in self.gates if g.width is not None}))
