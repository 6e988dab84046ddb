"""Which torch device and dtype a run uses (checked before any model loads)."""
from __future__ import annotations

import os

import torch

from gatebench.errors import GatebenchError


def resolve_device(device: str) -> str:
    from gatebench.readers.protocol_values import DEVICE
    if not DEVICE.match(device):
        raise GatebenchError(f"expected --device auto, cpu, mps, cuda or cuda:N, got {device!r}",
                             hint="use --device cpu or cuda")
    if device == "auto":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        return f"cuda:{local}" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise GatebenchError(f"expected a CUDA device for --device {device}, got none available",
                             hint="use --device cpu")
    return device


def resolve_dtype(name: str, device: str) -> torch.dtype:
    if device == "cpu" and name != "fp32":
        return torch.float32  # CPU half precision is slow and inexact: fp32 there, recorded
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[name]
