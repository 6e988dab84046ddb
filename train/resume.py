"""`gatebench train --resume`: which file a run continues from.

``--resume FILE`` continues from that file when it holds the trainer's resume state (optimizer,
LR schedule, RNG, data position). ``--resume RUN_DIR``, as HF-style trainers take it, continues
from the run's newest checkpoint that holds it, "newest" under the one series rule
(gatebench/readers/series.py: recorded step, then epoch, then the number in the name; a final
file after every numbered point; identical files one point), never by modification time alone.

Why a rule of its own: the trainer writes ``spatial_adapter_final.pt`` (the user's bare state
dict: weights only) last, so the newest file of a run is the one file it cannot resume from.
Pointing ``--resume`` at a weights-only file is one line that names the file that has the state.
"""
from __future__ import annotations

from pathlib import Path

from gatebench.adapters.types import CheckpointInfo
from gatebench.checkpoint import torch_load_safe, try_inspect_checkpoint
from gatebench.errors import CheckpointError
from gatebench.gates import checkpoint_member
from gatebench.readers.paths import CHECKPOINT_SUFFIXES
from gatebench.readers.series import order_run

STATE = "optimizer, LR schedule, RNG and data position"


def has_resume_state(path: Path) -> bool:
    """True when ``path`` is a checkpoint this trainer wrote with its resume state (memory-mapped:
    the tensors are not read). A .safetensors file holds tensors only."""
    if path.suffix == ".safetensors":
        return False
    obj = torch_load_safe(path, mmap=True)
    return isinstance(obj, dict) and isinstance(obj.get("resume"), dict)


def newest_resumable(run_dir: Path) -> Path | None:
    """The run's newest checkpoint with resume state under the series rule (within one point, the
    file written last); unreadable files are skipped; None when there is none."""
    files = sorted(p for p in run_dir.iterdir() if p.is_file() and p.suffix in CHECKPOINT_SUFFIXES)
    infos = [i for i in map(try_inspect_checkpoint, files) if isinstance(i, CheckpointInfo)]
    if not infos:
        return None
    series = order_run([checkpoint_member(info) for info in infos])
    for point in reversed(series.points):
        for member in sorted(point.members, key=lambda m: m.mtime or 0, reverse=True):
            if has_resume_state(Path(member.key)):
                return Path(member.key)
    return None


def resume_source(path: Path) -> Path:
    """The checkpoint ``--resume PATH`` continues from: the file itself, or a run folder's newest
    resumable checkpoint. A file without the state, or a folder without such a file, is one
    CheckpointError that names the file to use instead when the folder has one."""
    path = Path(path)
    if path.is_dir():
        found = newest_resumable(path)
        if found is None:
            raise CheckpointError(f"expected a run folder with a checkpoint this trainer wrote "
                                  f"(final.pt, step_N.pt, epoch_N.pt: they hold the {STATE}), "
                                  f"got none", path=path, hint="start a new run without --resume")
        return found
    if has_resume_state(path):
        return path
    found = newest_resumable(path.parent) if path.parent.is_dir() else None
    hint = (f"resume from {found}, which has it (or pass the run folder: --resume {path.parent})"
            if found is not None else "resume from a checkpoint this trainer wrote (final.pt, "
            "step_N.pt with --save-every)")
    raise CheckpointError(f"expected a training checkpoint with the {STATE}, got a weights-only "
                          f"file", path=path, hint=hint)
