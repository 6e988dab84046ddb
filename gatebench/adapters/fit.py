"""Does an adapter's state fit the module it is loaded into? One CheckpointError naming the
file and the first offending key, instead of torch's multi-line "size mismatch" RuntimeError
(or missing ``to_out`` keys) surfacing after the base images were generated."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch

from gatebench.errors import CheckpointError


def load_state_checked(module: torch.nn.Module, state: Mapping[str, Any], path: Path | None, *,
                       what: str = "the user adapter layout",
                       hint: str = "this checkpoint was trained for a different base model") -> None:
    """``module.load_state_dict(state)`` where every mismatch is a CheckpointError."""
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"expected '{bad[0]}' to be a tensor, got "
                              f"{type(state[bad[0]]).__name__}", path=path,
                              hint="the file is not a saved adapter state dict")
    try:
        missing, unexpected = module.load_state_dict(dict(state), strict=False)
    except RuntimeError as exc:      # size mismatch: shapes that do not fit their keys
        first = next((line.strip() for line in str(exc).splitlines() if "size mismatch" in line),
                     str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        raise CheckpointError(f"expected tensors whose shapes fit {what}, got {first[:200]}",
                              path=path, hint=hint) from None
    if missing or unexpected:
        raise CheckpointError(f"expected {what}, got {len(missing)} missing keys (e.g. "
                              f"{missing[:3]}) and {len(unexpected)} unexpected keys (e.g. "
                              f"{unexpected[:3]})", path=path,
                              hint="a checkpoint without to_out weights is not a whole adapter; "
                              "save the full adapter state dict")
