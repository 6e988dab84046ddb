"""Both trainers' run folders read as one ordered series (issue 21 part 1).

The user's trainer writes bare ``checkpoint-{global_step}.pt`` and ``spatial_adapter_final.pt``;
gatebench's writes ``step_N.pt``, ``final.pt`` and ``spatial_adapter_final.pt``. A file with no
number used to sort FIRST, so a healthy rising run read as a collapse and `gates` exited 1.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from click.testing import CliRunner

from gatebench.checkpoint import save_checkpoint
from gatebench.cli import cli
from gatebench.readers.series import Member, order_run, position
from gatebench.rundir.saved import checkpoint_axis
from tests.reference_user import random_user_state

WIDTHS, TEXT_DIM = (16, 32), 8


def _bare(path: Path, gate: float, seed: int = 0) -> Path:
    """The user's trainer: a bare torch.save(state_dict)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(random_user_state(WIDTHS, TEXT_DIM, seed=seed, gate=gate), path)
    return path


def _user_run(folder: Path, gates: dict[int, float], final: float | None) -> dict[str, Path]:
    """checkpoint-{step}.pt per step, then spatial_adapter_final.pt (written last, like theirs);
    final None: the final file repeats the last checkpoint's tensors."""
    paths = {f"checkpoint-{step}.pt": _bare(folder / f"checkpoint-{step}.pt", gate, seed=i)
             for i, (step, gate) in enumerate(gates.items())}
    last_seed = len(gates) - 1
    paths["spatial_adapter_final.pt"] = _bare(
        folder / "spatial_adapter_final.pt", list(gates.values())[-1] if final is None else final,
        seed=last_seed if final is None else 99)
    return paths


def _gatebench_run(folder: Path, gates: dict[int, float]) -> list[Path]:
    """train/loop.py's files: step_N.pt every save, final.pt (the last step again, with its
    metadata) and spatial_adapter_final.pt (the same weights as a bare state dict)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (step, gate) in enumerate(gates.items()):
        state = random_user_state(WIDTHS, TEXT_DIM, seed=i, gate=gate)
        config: dict[str, Any] = {"widths": list(WIDTHS), "text_dim": TEXT_DIM}
        training: dict[str, Any] = {"step": step, "epoch": 1}
        paths.append(save_checkpoint(folder / f"step_{step}.pt", state, family="user",
                                     adapter_config=config, training=training))
    paths.append(save_checkpoint(folder / "final.pt", state, family="user",
                                 adapter_config=config, training=training))
    torch.save(state, folder / "spatial_adapter_final.pt")
    return paths + [folder / "spatial_adapter_final.pt"]


def _gates(*args: str) -> tuple[int, dict]:
    result = CliRunner().invoke(cli, ["gates", *args, "--json"])
    assert result.exit_code in (0, 1), result.output
    return result.exit_code, json.loads(result.output)


def _codes(doc: dict) -> set[str]:
    return {f["code"] for f in doc["findings"]}


def test_user_run_rising_with_final_file_is_healthy_end_to_end(tmp_path: Path) -> None:
    # 10000 after 4000 (not by name), the final file after both: 0.10 -> 0.17 -> 0.30 -> 0.80
    _user_run(tmp_path / "run", {2000: 0.10, 4000: 0.17, 10000: 0.30}, final=0.80)
    code, doc = _gates(str(tmp_path / "run"))
    assert code == 0 and "collapse" not in _codes(doc)
    traj = doc["trajectory"]
    assert traj["axis"] == "step"          # checkpoint-{global_step}: the user's global step
    assert [p["label"] for p in traj["points"]] == [
        "checkpoint-2000.pt", "checkpoint-4000.pt", "checkpoint-10000.pt",
        "spatial_adapter_final.pt"]
    assert [p["final"] for p in traj["points"]] == [False, False, False, True]
    assert traj["points"][-1]["placed_by"] == "final name" and traj["unplaced"] == []
    assert [round(p["gate_mean"], 2) for p in traj["points"]] == [0.10, 0.17, 0.30, 0.80]
    assert Path(doc["checkpoints"][-1]["path"]).name == "spatial_adapter_final.pt"
    # the terminal table says "final" where the file has no step
    table = CliRunner().invoke(cli, ["gates", str(tmp_path / "run")]).output
    assert "final" in table and "collapse" not in table


def test_user_run_real_collapse_still_fails_and_names_the_final_file(tmp_path: Path) -> None:
    _user_run(tmp_path / "run", {2000: 3.0, 4000: 2.0, 6000: 1.0}, final=0.29)
    code, doc = _gates(str(tmp_path / "run"))
    assert code == 1 and doc["verdict"] == "fail"
    collapse = next(f for f in doc["findings"] if f["code"] == "collapse")
    assert "(step 2000) to 0.29 (spatial_adapter_final.pt, the run's final file)" in \
        collapse["message"]


def test_user_final_file_identical_to_last_checkpoint_is_one_point(tmp_path: Path) -> None:
    paths = _user_run(tmp_path / "run", {2000: 0.1, 4000: 0.3}, final=None)
    os.utime(paths["spatial_adapter_final.pt"], ns=(1, 1))     # copied: oldest, same tensors
    code, doc = _gates(str(tmp_path / "run"))
    assert code == 0
    last = doc["trajectory"]["points"][-1]
    assert last["labels"] == ["checkpoint-4000.pt", "spatial_adapter_final.pt"]
    assert last["label"] == "checkpoint-4000.pt = spatial_adapter_final.pt"
    assert last["x"] == 4000 and not last["final"] and len(doc["trajectory"]["points"]) == 2


def test_gatebench_trainer_run_folds_step_final_and_bare_file(tmp_path: Path) -> None:
    _gatebench_run(tmp_path / "run", {10: 0.1, 20: 0.2, 30: 0.5})
    code, doc = _gates(str(tmp_path / "run"))
    assert code == 0 and "collapse" not in _codes(doc)
    points = doc["trajectory"]["points"]
    assert doc["trajectory"]["axis"] == "step" and [p["x"] for p in points] == [10, 20, 30]
    assert points[-1]["labels"] == ["step_30.pt", "final.pt", "spatial_adapter_final.pt"]
    assert [Path(c["path"]).name for c in doc["checkpoints"]] == [
        "step_10.pt", "step_20.pt", "step_30.pt", "final.pt", "spatial_adapter_final.pt"]


def test_gatebench_trainer_collapse_still_fails(tmp_path: Path) -> None:
    _gatebench_run(tmp_path / "run", {10: 3.0, 20: 1.5, 30: 0.29})
    code, doc = _gates(str(tmp_path / "run"))
    assert code == 1 and "collapse" in _codes(doc)


def test_unnumbered_file_goes_last_only_when_it_is_the_newest(tmp_path: Path) -> None:
    run = tmp_path / "run"
    for i, (step, gate) in enumerate({2000: 0.2, 4000: 0.4}.items()):
        os.utime(_bare(run / f"checkpoint-{step}.pt", gate, seed=i), ns=(10**9 * (i + 1),) * 2)
    adapter = _bare(run / "adapter.pt", 0.6, seed=7)
    os.utime(adapter, ns=(10**10, 10**10))                      # written last: the final file
    _, doc = _gates(str(run))
    assert doc["trajectory"]["points"][-1]["labels"] == ["adapter.pt"]
    assert doc["trajectory"]["points"][-1]["placed_by"] == "newest file"
    _bare(adapter, 0.05, seed=7)                                 # an older, different file
    os.utime(adapter, ns=(1, 1))
    code, doc = _gates(str(run))
    assert code == 0 and "collapse" not in _codes(doc)           # never guessed into the series
    assert doc["trajectory"]["unplaced"] == [str(adapter)]
    assert "adapter.pt" not in {p["label"] for p in doc["trajectory"]["points"]}
    assert Path(doc["checkpoints"][-1]["path"]).name == "adapter.pt"   # still analysed


def test_unnumbered_copy_of_a_middle_checkpoint_joins_it(tmp_path: Path) -> None:
    run = tmp_path / "run"
    _user_run(run, {2000: 0.2, 4000: 0.4, 6000: 0.5}, final=0.6)
    torch.save(torch.load(run / "checkpoint-4000.pt"), run / "best.pt")
    os.utime(run / "best.pt", ns=(1, 1))
    _, doc = _gates(str(run))
    assert [p["labels"] for p in doc["trajectory"]["points"]] == [
        ["checkpoint-2000.pt"], ["checkpoint-4000.pt", "best.pt"], ["checkpoint-6000.pt"],
        ["spatial_adapter_final.pt"]]


def test_numbered_checkpoints_with_equal_gates_stay_separate_points() -> None:
    """A frozen or deadlocked gate repeats exactly: not_learning's evidence, not one file."""
    gates = (("dim_16", "0.1"),)
    series = order_run([Member(f"run/checkpoint-{s}.pt", gates=gates) for s in (2000, 4000)]
                       + [Member("run/spatial_adapter_final.pt", gates=gates)])
    assert [p.keys for p in series.points] == [
        ["run/checkpoint-2000.pt"], ["run/checkpoint-4000.pt", "run/spatial_adapter_final.pt"]]


def test_position_from_names_and_records() -> None:
    assert position("checkpoint-2000.pt") == ("step", 2000)
    assert position("good_step_500.pt") == ("step", 500)
    assert position("epoch_10.pt") == ("epoch", 10)
    assert position("model_7.pt") == ("checkpoint number", 7)
    assert position("spatial_adapter_final.pt") is None and position("final.pt") is None
    assert position("spatial_adapter_final_v2.pt") is None          # a version, not a place
    assert position("final_epoch_3.pt") == ("epoch", 3)
    assert position("final.pt", step=30) == ("step", 30)
    assert position("final.pt", epoch=3) == ("epoch", 3)


def test_saved_run_plots_use_the_same_order() -> None:
    """rundir/saved.py's axis (metric-vs-step plots, table headings) follows the same rule."""
    gates = lambda v: [{"layer": "dim_16", "raw": v}]  # noqa: E731
    names = ("r/spatial_adapter_final.pt", "r/checkpoint-2000.pt", "r/checkpoint-4000.pt")
    user = {"results": [{"checkpoint": p} for p in names],
            "checkpoints": [{"path": "r/spatial_adapter_final.pt", "gates": gates(0.8)},
                            {"path": "r/checkpoint-2000.pt", "gates": gates(0.1)},
                            {"path": "r/checkpoint-4000.pt", "gates": gates(0.3)}]}
    assert checkpoint_axis(user) == ("checkpoint", {"r/checkpoint-2000.pt": 1.0,
                                                    "r/checkpoint-4000.pt": 2.0,
                                                    "r/spatial_adapter_final.pt": 3.0})
    ours = {"results": [{"checkpoint": p} for p in ("r/final.pt", "r/step_10.pt", "r/step_30.pt",
                                                    "r/spatial_adapter_final.pt")],
            "checkpoints": [{"path": "r/final.pt", "step": 30, "gates": gates(0.5)},
                            {"path": "r/step_10.pt", "step": 10, "gates": gates(0.1)},
                            {"path": "r/step_30.pt", "step": 30, "gates": gates(0.5)},
                            {"path": "r/spatial_adapter_final.pt", "gates": gates(0.5)}]}
    at_30 = {"r/step_30.pt": 30.0, "r/final.pt": 30.0, "r/spatial_adapter_final.pt": 30.0}
    assert checkpoint_axis(ours) == ("step", {"r/step_10.pt": 10.0, **at_30})
