"""Training configuration: one frozen dataclass, built from the CLI flags (the user's names)."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

# The user's own warnings (README "Training").
GATE_INIT_WARNING = ("do not set --gate-init-value: the gate is initialised by the init scheme "
                     "(0 for gligen); a large initial gate with a random to_out is how the old "
                     "checkpoints collapsed (3.0 -> 0.29)")
FREEZE_GATE_WARNING = "do not use --freeze-gate: let the gate learn"


@dataclass(frozen=True)
class TrainConfig:
    mixed_data: Path
    base_model: Path
    output_dir: Path
    image_dir: Path | None = None
    batch_size: int = 2
    epochs: int = 1
    max_steps: int | None = None
    lr: float = 1e-4
    adapter_lr: float | None = None       # unused default: same as lr
    warmup_steps: int = 100
    weight_decay: float = 0.01
    max_grad_norm: float = 0.5           # the user's trainer clips at 0.5
    phrase_dropout: float = 0.1
    caption_dropout: float = 0.1          # CFG training: caption "" for that sample
    uncond_boxes: Literal["grounded", "off"] = "grounded"   # a caption-dropped sample's boxes:
    #   grounded = kept (matches the user's inference, which grounds both CFG halves); off = the
    #   adapter is off for it (the shipped world's series; evaluate those with uncond_boxes "off")
    save_epoch: bool = False
    save_every: int | None = None
    log_every: int = 100
    log_gate_stats: bool = False
    log_tensorboard: bool = False
    min_area: float = 0.02
    max_area: float = 0.95
    min_side: float = 0.03
    max_boxes: int = 30
    scale_min: float = 1.0
    scale_max: float = 1.0
    init: Literal["gligen", "zero-out", "legacy", "deadlock"] = "gligen"
    scale_sampling: Literal["per-step", "per-sample"] = "per-step"   # the user's: one s per step
    adapter_query: Literal["attn2_output", "stream"] = "attn2_output"
    fourier: Literal["user", "nerf"] = "user"
    text_proj: Literal["user", "always"] = "user"
    phrases: Literal["kolors-only", "always"] = "kolors-only"    # the user's: none off Kolors
    null_slot: bool = False
    box_mask: bool = False
    gate_init_value: float | None = None
    freeze_gate: bool = False
    seed: int = 0
    resume: Path | None = None
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    grad_accum: int = 1
    device: str = "auto"
    num_workers: int = 0
    resolution: int | None = None          # default: the base model's own size

    def to_dict(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}
