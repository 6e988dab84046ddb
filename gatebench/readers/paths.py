"""What a path on the `gates` command line means: a checkpoint file, or a folder of them and
of the training logs beside them."""
from __future__ import annotations

from pathlib import Path

from gatebench.errors import GatebenchError

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".safetensors")


def expand_paths(paths: tuple[Path, ...]) -> tuple[list[Path], list[Path]]:
    """Files stay as given; a folder contributes its checkpoints and its training logs."""
    checkpoints: list[Path] = []
    log_dirs: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix in CHECKPOINT_SUFFIXES)
            checkpoints += found
            if (any(path.glob("*.log")) or any(path.glob("*.jsonl"))
                    or any(path.rglob("events.out.tfevents*"))):
                log_dirs.append(path)
            if not found and path not in log_dirs:
                raise GatebenchError("expected checkpoints (*.pt, *.safetensors, ...) or training "
                                     "logs in the folder, found neither", path=path)
        else:
            checkpoints.append(path)
    return checkpoints, log_dirs
