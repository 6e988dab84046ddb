"""Small checkpoint and log builders shared by the tests (real formats, tiny sizes)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from gatebench.adapters.user import AdapterSet, apply_init


def user_state(gate: float | Sequence[float] = 0.0, *, widths: Sequence[int] = (16, 32),
               text_dim: int = 8, zero_out: bool = False, prefix: str = "",
               seed: int = 0) -> dict[str, torch.Tensor]:
    """A bare state dict in the user's layout (``dim_{D}.gated_attn.gate`` ...)."""
    torch.manual_seed(seed)
    adapters = AdapterSet(list(widths), text_dim)
    gates = [gate] * len(widths) if isinstance(gate, (int, float)) else list(gate)
    with torch.no_grad():
        # strict=False: repeated widths make one adapter, which takes the first gate value
        for value, adapter in zip(gates, adapters.values(), strict=False):
            adapter.gated_attn.gate.fill_(value)
            if zero_out:
                adapter.gated_attn.to_out.weight.zero_()
                adapter.gated_attn.to_out.bias.zero_()
    return {prefix + k: v.clone() for k, v in adapters.state_dict().items()}


def gligen_state(alpha_attn: float = 0.0, alpha_dense: float = 0.0, *, blocks: int = 2,
                 width: int = 16) -> dict[str, torch.Tensor]:
    """Keys as diffusers' GatedSelfAttentionDense fusers name them inside a UNet."""
    state: dict[str, torch.Tensor] = {"position_net.linears.0.weight": torch.randn(8, 4)}
    for i in range(blocks):
        p = f"down_blocks.{i}.attentions.0.transformer_blocks.0.fuser."
        state[p + "alpha_attn"] = torch.tensor(alpha_attn)
        state[p + "alpha_dense"] = torch.tensor(alpha_dense)
        state[p + "attn.to_q.weight"] = torch.randn(width, width)
        state[p + "attn.to_out.0.weight"] = torch.randn(width, width)
        state[p + "attn.to_out.0.bias"] = torch.randn(width)
        state[p + "ff.net.2.weight"] = torch.randn(width, 4 * width)
        state[p + "ff.net.2.bias"] = torch.randn(width)
    return state


def write_series(folder: Path, gates: Sequence[float], name: str = "epoch_{}.pt") -> list[Path]:
    """One user-format checkpoint per value, numbered from 1 (epoch_1.pt ... epoch_N.pt)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, value in enumerate(gates, start=1):
        path = folder / name.format(i)
        torch.save(user_state(value), path)
        paths.append(path)
    return paths


def write_train_log(path: Path, rows: Sequence[tuple[int, float, float, float, float]]) -> Path:
    lines = ["2026-01-21 10:00:00 - INFO - Starting training"]
    for step, mean, std, low, high in rows:
        lines.append(f"2026-01-21 10:00:01 - INFO - Step {step}: Gate stats - mean: {mean}, "
                     f"std: {std}, min: {low}, max: {high}")
        lines.append(f"2026-01-21 10:00:01 - INFO - Step {step}: loss: 0.12")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_tensorboard(folder: Path, steps: Sequence[int], means: Sequence[float]) -> Path:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(folder))
    for step, mean in zip(steps, means, strict=True):
        writer.add_scalar("train/gate_mean", mean, step)
        writer.add_scalar("train/loss", 0.15 - step * 1e-5, step)
        writer.add_scalar("train/lr", 1e-4, step)
    writer.close()
    return folder


def init_adapters(scheme: str, widths: Sequence[int] = (16, 32), text_dim: int = 8) -> AdapterSet:
    adapters = AdapterSet(list(widths), text_dim)
    apply_init(adapters, scheme)
    return adapters


class TinyFeatures(torch.nn.Module):
    """A small fixed conv feature extractor for FID/KID plumbing tests."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 4, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.adaptive_avg_pool2d(self.conv(x), 1).flatten(1)


def free_port() -> int:
    """A currently free TCP port on localhost for a torchrun rendezvous (fixed ports can clash)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# The write diagnostics are float32 sums over activations: their last bits depend on the batch a
# layout was sampled in (and on the thread count), so two runs that shard or batch differently
# agree to float32 rounding, not exactly. 1e-4 relative is ~1000x float32 epsilon and far below
# any difference a report shows (3 significant digits). Image metrics are read from uint8 pixels,
# which a batch does not change: they stay exact.
WRITE_DIAGNOSTICS = ("effect_in_boxes", "effect_lift", "box_attention_kappa", "effect_norm")


def assert_same_metrics(got: list[dict], expected: list[dict]) -> None:
    """Two results.json ``results`` lists: image metrics exactly, write diagnostics within
    float32 accumulation noise (value and CI bounds); the same metrics and N everywhere."""
    import pytest  # noqa: PLC0415

    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        assert set(a["metrics"]) == set(b["metrics"]), (a["checkpoint"], a["gate_scale"])
        for name, value in a["metrics"].items():
            other = b["metrics"][name]
            if name not in WRITE_DIAGNOSTICS or value is None or other is None:
                assert value == other, name
                continue
            assert value["n"] == other["n"], name
            for key in ("value", "ci_low", "ci_high"):
                if value[key] is None or other[key] is None:
                    assert value[key] == other[key], (name, key)
                else:
                    assert value[key] == pytest.approx(other[key], rel=1e-4, abs=1e-6), (name, key)
