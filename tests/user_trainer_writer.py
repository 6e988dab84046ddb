"""A writer that saves checkpoints the way the user's trainer does (issue 31), for `gates` and
`watch` tests.

What it copies of ``scripts/train_spatial_adapter.py`` at the fork's HEAD (seed/formats.md):
- ``checkpoint-{N}.pt`` every ``save_every`` global steps, then ``spatial_adapter_final.pt``;
- bare fp16 state dicts (``dim_{D}.position_net.*``, ``text_proj.*``, ``gated_attn.*``) with
  nothing inside that records the step;
- the init the user trains from: gate 0.1 (stored in fp16 as 0.09998) with ``to_out`` 0;
- ``torch.save`` straight to the final name: opened with truncation, written in ``chunks``
  pieces with ``pause_s`` between them, no temp file, no rename, no fsync, so a half-written file
  sits at the final name while it writes (``on_chunk`` lets a test look at it between chunks;
  ``stop_after`` leaves it torn for good, as an interrupted save does);
- the final file holds the last step's tensors: the same as the last checkpoint's when the step
  count is a multiple of ``save_every``, in a file whose bytes differ (torch.save names the
  archive after the file);
- a rerun into the same folder overwrites the same names (it cannot resume).

The "training" is a deterministic stand-in: the gate moves by ``gate_rate`` per step and
``to_out`` grows from 0, each step's weights a pure function of (seed, step).
"""
from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from gatebench.adapters.user import AdapterSet

FINAL_NAME = "spatial_adapter_final.pt"


@dataclass(frozen=True)
class UserTrainerWriter:
    """One run of the user's trainer into ``folder`` (tiny widths: tests run on CPU)."""

    folder: Path
    widths: tuple[int, ...] = (16, 32)
    text_dim: int = 8
    save_every: int = 2
    gate_init: float = 0.1
    gate_rate: float = 1e-4          # per step; Adam at --lr 1e-4 moves a gate about this much
    out_rate: float = 1e-3           # to_out's scale grows by this per step (from 0)
    seed: int = 0
    chunks: int = 16
    pause_s: float = 0.0

    def state_at(self, step: int) -> dict[str, torch.Tensor]:
        """The adapter after ``step`` steps, as the trainer saves it: every tensor fp16."""
        torch.manual_seed(self.seed)
        adapters = AdapterSet(list(self.widths), self.text_dim)
        g = torch.Generator().manual_seed(self.seed * 100_003 + step)
        with torch.no_grad():
            for adapter in adapters.values():
                attn = adapter.gated_attn
                attn.gate.fill_(self.gate_init + self.gate_rate * step)
                scale = self.out_rate * step
                attn.to_out.weight.copy_(scale * torch.randn(attn.to_out.weight.shape, generator=g))
                attn.to_out.bias.copy_(scale * torch.randn(attn.to_out.bias.shape, generator=g))
        return {k: v.detach().to(torch.float16).clone() for k, v in adapters.state_dict().items()}

    def save(self, path: Path, state: dict[str, torch.Tensor],
             on_chunk: Callable[[int, Path], None] | None = None,
             stop_after: int | None = None) -> Path:
        """torch.save's bytes (the archive named after ``path``, as torch.save(path) names it)
        written in place in ``chunks`` pieces; ``on_chunk(i, path)`` after piece i is flushed;
        ``stop_after``: the save is interrupted after that many pieces."""
        with tempfile.TemporaryDirectory() as scratch:
            staged = Path(scratch) / path.name
            torch.save(state, staged)
            data = staged.read_bytes()
        size = -(-len(data) // self.chunks)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as f:                       # truncates: the old file is gone now
            for i in range(self.chunks):
                if stop_after is not None and i >= stop_after:
                    return path
                f.write(data[i * size:(i + 1) * size])
                f.flush()
                if on_chunk is not None:
                    on_chunk(i, path)
                if self.pause_s and i < self.chunks - 1:
                    time.sleep(self.pause_s)
        return path

    def run(self, steps: int, on_chunk: Callable[[int, Path], None] | None = None,
            interrupt: tuple[str, int] | None = None) -> list[Path]:
        """Train ``steps`` steps: every checkpoint, then the final file (the paths written).
        ``interrupt=(name, k)``: the trainer dies after k chunks of that file's save."""
        written = []
        names = [f"checkpoint-{n}.pt" for n in range(self.save_every, steps + 1, self.save_every)]
        for name in [*names, FINAL_NAME]:
            step = int(name.split("-")[1][:-3]) if name != FINAL_NAME else steps
            stop = interrupt[1] if interrupt is not None and interrupt[0] == name else None
            written.append(self.save(self.folder / name, self.state_at(step), on_chunk, stop))
            if stop is not None:
                break
        return written
