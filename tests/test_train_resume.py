"""`gatebench train --resume FILE | RUN_DIR`: which file a run continues from (train/resume.py).

Built from small real files (gatebench checkpoints with and without resume state, the user's
bare state dict) so that no model trains here; tests/test_train.py resumes a real run from its
folder through the CLI.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from gatebench.adapters.user import AdapterSet
from gatebench.checkpoint import save_checkpoint
from gatebench.errors import CheckpointError
from gatebench.train.resume import has_resume_state, newest_resumable, resume_source
from tests.builders import user_state

CONFIG = AdapterSet([16, 32], 8).config


def _save(path: Path, gate: float, step: int, *, resume: bool = True, mtime: int = 0) -> Path:
    """A checkpoint as the trainer writes it (step recorded; resume state unless told not)."""
    save_checkpoint(path, user_state(gate), family="user", adapter_config=CONFIG,
                    training={"step": step}, extra={"resume": {"step": step}} if resume else None)
    if mtime:
        os.utime(path, ns=(mtime, mtime))
    return path


def _run(folder: Path) -> Path:
    """What `gatebench train --save-every 2 --max-steps 4` leaves: step_2, step_4 and final
    (step 4, the same tensors as step_4), then the user's weights-only file, written last."""
    _save(folder / "step_2.pt", 0.1, 2, mtime=10**18)
    _save(folder / "step_4.pt", 0.2, 4, mtime=2 * 10**18)
    _save(folder / "final.pt", 0.2, 4, mtime=3 * 10**18)
    bare = folder / "spatial_adapter_final.pt"
    torch.save(user_state(0.2), bare)
    os.utime(bare, ns=(4 * 10**18, 4 * 10**18))
    return folder


def test_a_run_folder_resumes_from_its_newest_resumable_checkpoint(tmp_path: Path) -> None:
    run = _run(tmp_path / "run")
    assert not has_resume_state(run / "spatial_adapter_final.pt")    # the newest file
    assert resume_source(run) == run / "final.pt"
    assert resume_source(run / "step_2.pt") == run / "step_2.pt"     # --resume FILE still works


def test_the_series_order_decides_not_the_modification_time(tmp_path: Path) -> None:
    run = _run(tmp_path / "run")
    (run / "final.pt").unlink()
    os.utime(run / "step_2.pt", ns=(5 * 10**18, 5 * 10**18))         # touched after step_4
    (run / "step_6.pt").write_bytes(b"PK\x03\x04 a save cut short")  # unreadable: skipped
    assert resume_source(run) == run / "step_4.pt"


def test_a_weights_only_file_is_one_line_naming_the_file_with_the_state(tmp_path: Path) -> None:
    run = _run(tmp_path / "run")
    with pytest.raises(CheckpointError) as caught:
        resume_source(run / "spatial_adapter_final.pt")
    line = caught.value.render()
    assert "\n" not in line and "weights-only" in line and "spatial_adapter_final.pt" in line
    assert f"resume from {run / 'final.pt'}, which has it" in line
    assert f"--resume {run}" in line
    (run / "final.pt").unlink()
    (run / "step_4.pt").unlink()
    with pytest.raises(CheckpointError, match=r"resume from .*step_2\.pt, which has it"):
        resume_source(run / "spatial_adapter_final.pt")


def test_a_folder_without_any_resumable_checkpoint_says_so(tmp_path: Path) -> None:
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    torch.save(user_state(0.3), theirs / "checkpoint-2000.pt")      # the user's own trainer
    _save(theirs / "exported.pt", 0.3, 2000, resume=False)
    assert newest_resumable(theirs) is None
    with pytest.raises(CheckpointError, match="got none"):
        resume_source(theirs)
    with pytest.raises(CheckpointError, match=r"weights-only .*step_N\.pt with --save-every"):
        resume_source(theirs / "checkpoint-2000.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        resume_source(theirs / "missing.pt")
