import re
from pathlib import Path

import pytest
import torch

from gatebench.checkpoint import inspect_checkpoint, save_checkpoint
from gatebench.gates import analyse, to_json
from gatebench.protocol import GateThresholds
from gatebench.readers.logs import read_logs
from tests.builders import user_state, write_series, write_tensorboard, write_train_log

T = GateThresholds()
COLLAPSE = [3.0, 2.5, 2.0, 1.5, 1.0, 0.5, 0.29]          # the user's "before the fix" curve
RISING = [0.0, 0.01, 0.05, 0.1, 0.3, 0.5, 0.8]           # the user's "after the fix" curve


def codes(report) -> set[str]:
    return {f.code for f in report.findings}


def test_collapse_series_sorted_by_epoch_not_name(tmp_path: Path) -> None:
    # 10 epochs so that name order (epoch_1, epoch_10, epoch_2, ...) differs from epoch order.
    values = [3.0, 2.8, 2.5, 2.2, 2.0, 1.5, 1.0, 0.7, 0.5, 0.29]
    paths = write_series(tmp_path, values)
    report = analyse([inspect_checkpoint(p) for p in sorted(paths)], [], T)
    assert [p.x for p in report.trajectory] == list(range(1, 11))
    assert report.trajectory[-1].gate_mean == pytest.approx(0.29)
    assert "collapse" in codes(report) and report.verdict == "fail"
    collapse = next(f for f in report.findings if f.code == "collapse")
    assert "3 " in collapse.message or "3 (" in collapse.message
    assert "90%" in collapse.message


ARCH = "single_box_unlocalisable"


def test_single_box_finding_once_for_user_forward_with_the_share_of_layouts(tmp_path: Path) -> None:
    paths = write_series(tmp_path, [0.1, 0.2, 0.3])
    report = analyse([inspect_checkpoint(p) for p in paths], [], T, box_counts=[1, 2, 1, 0, 3])
    found = [f for f in report.findings if f.code == ARCH]
    assert len(found) == 1 and found[0].severity == "warn"      # one, not one per checkpoint
    assert "60% of the 5 evaluated layouts are affected (2 with one box, 1 with none)" in \
        found[0].message
    # a null slot (or region attention) removes the limit: no finding
    from gatebench.adapters.user import AdapterSet
    from gatebench.checkpoint import save_checkpoint
    adapters = AdapterSet([640], 4096, null_slot=True)
    save_checkpoint(tmp_path / "null.pt", adapters.state_dict(), family="user",
                    adapter_config=adapters.config)
    assert ARCH not in codes(analyse([inspect_checkpoint(tmp_path / "null.pt")], [], T))


def test_rising_series_is_healthy_apart_from_early_near_zero(tmp_path: Path) -> None:
    paths = write_series(tmp_path, RISING)
    report = analyse([inspect_checkpoint(p) for p in paths], [], T)
    assert codes(report) <= {"near_zero", "single_box_unlocalisable"}   # the architecture's limit
    assert report.verdict in ("pass", "warn")
    assert report.checkpoints[-1].findings == ()


def test_deadlock_needs_gate_and_to_out_zero(tmp_path: Path) -> None:
    dead = tmp_path / "dead.pt"
    torch.save(user_state(0.0, zero_out=True), dead)
    report = analyse([inspect_checkpoint(dead)], [], T)
    assert "deadlock" in codes(report) and report.verdict == "fail"
    alive = tmp_path / "alive.pt"
    torch.save(user_state(0.0, zero_out=False), alive)
    assert "deadlock" not in codes(analyse([inspect_checkpoint(alive)], [], T))


def test_nan_gate(tmp_path: Path) -> None:
    path = tmp_path / "nan.pt"
    torch.save(user_state((float("nan"), 0.2)), path)
    report = analyse([inspect_checkpoint(path)], [], T)
    assert "nan" in codes(report) and report.verdict == "fail"
    doc = to_json(report)
    assert doc["checkpoints"][0]["gates"][0]["raw"] == "nan"


def test_saturated_and_near_zero(tmp_path: Path) -> None:
    sat = tmp_path / "sat.pt"
    torch.save(user_state(3.0), sat)
    assert codes(analyse([inspect_checkpoint(sat)], [], T)) == {"saturated", ARCH}
    small = tmp_path / "small.pt"
    torch.save(user_state(0.001), small)
    assert codes(analyse([inspect_checkpoint(small)], [], T)) == {"near_zero", ARCH}


def test_falling_is_a_warning_below_collapse(tmp_path: Path) -> None:
    paths = write_series(tmp_path, [0.3, 0.5, 0.48, 0.45, 0.40])
    report = analyse([inspect_checkpoint(p) for p in paths], [], T)
    assert "falling" in codes(report) and "collapse" not in codes(report)
    assert report.verdict == "warn"
    assert "phrase-dropout" in report.findings[0].message


def test_falling_from_a_large_gate_points_at_the_init(tmp_path: Path) -> None:
    """The user's 3.0 start: a fall is the beginning of the collapse, so the hint is the init."""
    paths = write_series(tmp_path, [3.0, 2.6, 2.2, 1.8])
    falling = [f for f in analyse([inspect_checkpoint(p) for p in paths], [], T).findings
               if f.code == "falling"]
    assert falling and "--init gligen" in falling[0].message


def _ours(path: Path, gate: float, step: int, **training) -> Path:
    return save_checkpoint(path, user_state(gate), family="user",
                           adapter_config={"widths": [16, 32], "text_dim": 8},
                           training={"step": step, **training})


def test_not_learning_from_recorded_init(tmp_path: Path) -> None:
    path = _ours(tmp_path / "step_5000.pt", 0.1, 5000, init_scheme="zero-out", gate_init=0.1)
    report = analyse([inspect_checkpoint(path)], [], T)
    assert "not_learning" in codes(report) and report.verdict == "fail"
    fresh = _ours(tmp_path / "step_0.pt", 0.1, 0, init_scheme="zero-out", gate_init=0.1)
    assert "not_learning" not in codes(analyse([inspect_checkpoint(fresh)], [], T))


def test_extrapolated_scale(tmp_path: Path) -> None:
    path = _ours(tmp_path / "step_10.pt", 0.4, 10, scale_min=0.5, scale_max=1.0)
    report = analyse([inspect_checkpoint(path)], [], T, gate_scales=(0.0, 0.5, 1.0, 2.0))
    finding = next(f for f in report.findings if f.code == "extrapolated_scale")
    assert finding.severity == "warn" and "2" in finding.message


def test_single_checkpoint_history_is_a_trajectory(tmp_path: Path) -> None:
    history = [[i * 100, v, 0, 0, 0] for i, v in enumerate(COLLAPSE)]
    path = _ours(tmp_path / "final.pt", 0.29, 700, gate_history=history)
    report = analyse([inspect_checkpoint(path)], [], T)
    assert "collapse" in codes(report)


def test_train_log_and_tensorboard_trajectories(tmp_path: Path) -> None:
    rows = [(100 * (i + 1), v, 0.1, v - 0.1, v + 0.1) for i, v in enumerate(COLLAPSE)]
    log = write_train_log(tmp_path / "train.log", rows)
    series = read_logs(log)
    assert series[0].kind == "train.log"
    assert list(series[0].gate_points["step"]) == [100, 200, 300, 400, 500, 600, 700]
    assert series[0].frame["loss"].iloc[0] == pytest.approx(0.12)
    assert "collapse" in codes(analyse([], series, T))
    tb = write_tensorboard(tmp_path / "tb", [100, 200, 300], [0.0, 0.05, 0.1])
    tb_series = read_logs(tb)
    assert tb_series[0].kind == "tensorboard"
    assert list(tb_series[0].frame["gate_mean"]) == pytest.approx([0.0, 0.05, 0.1])
    assert analyse([], tb_series, T).verdict == "pass"


def test_log_stuck_at_zero_is_not_learning(tmp_path: Path) -> None:
    rows = [(s, 0.0, 0.0, 0.0, 0.0) for s in range(100, 3100, 100)]
    report = analyse([], read_logs(write_train_log(tmp_path / "train.log", rows)), T)
    finding = next(f for f in report.findings if f.code == "not_learning")
    assert "deadlock" in finding.message


def test_jsonl_log(tmp_path: Path) -> None:
    path = tmp_path / "train_log.jsonl"
    path.write_text('{"step": 10, "gate_mean": 0.01, "loss": 0.2}\n'
                    '{"step": 20, "gate_mean": 0.02, "loss": 0.1}\n')
    series = read_logs(path)[0]
    assert series.kind == "jsonl" and list(series.frame["loss"]) == [0.2, 0.1]


def test_checkpoints_from_different_runs_are_separate_series(tmp_path: Path) -> None:
    """runA's healthy rise next to runB's collapse: no trajectory across the two folders."""
    rising = write_series(tmp_path / "runA", RISING)
    collapsing = write_series(tmp_path / "runB", COLLAPSE)
    final_a, final_b = rising[-1], collapsing[-1]
    # one checkpoint per run (0.8 then 0.29 by epoch number): not a collapse
    pair = analyse([inspect_checkpoint(p) for p in (final_a, final_b)], [], T)
    assert "collapse" not in codes(pair) and not pair.trajectory_findings
    both = analyse([inspect_checkpoint(p) for p in rising + collapsing], [], T)
    collapses = [f for f in both.findings if f.code == "collapse"]
    assert [f.subject for f in collapses] == ["checkpoint series runB/"]
    assert {p.series for p in both.trajectory} == {"runA/", "runB/"}
    single = analyse([inspect_checkpoint(p) for p in collapsing], [], T)
    assert {p.series for p in single.trajectory} == {""}
    assert [f.subject for f in single.findings if f.code == "collapse"] == ["checkpoint series"]


def test_trajectory_plot_draws_one_line_per_run(tmp_path: Path) -> None:
    from gatebench.render.gates import plot_trajectory

    paths = write_series(tmp_path / "runA", RISING) + write_series(tmp_path / "runB", COLLAPSE)
    report = analyse([inspect_checkpoint(p) for p in paths], [], T)
    import matplotlib.pyplot as plt

    created: list = []
    original = plt.subplots
    plt.subplots = lambda *a, **k: created.append(original(*a, **k)) or created[-1]
    try:
        assert plot_trajectory(report, tmp_path / "t.png") is not None
    finally:
        plt.subplots = original
    lines = created[0][1].get_lines()
    labels = sorted(line.get_label() for line in lines if not line.get_label().startswith("_"))
    assert labels == ["runA/ (by epoch)", "runB/ (by epoch)"]


def test_gates_markdown_rows_keep_their_columns(tmp_path: Path) -> None:
    """The saturated finding's "|tanh(gate)|" must not add table cells (written "\\|": GFM's
    escaped pipe, rendered "|")."""
    from gatebench.render.gates import render_markdown

    path = tmp_path / "sat.pt"
    torch.save(user_state(3.0), path)
    text = render_markdown(analyse([inspect_checkpoint(path)], [], T))
    findings = [line for line in text.splitlines() if line.startswith("| warn")]
    assert findings and all(len(re.findall(r"(?<!\\)\|", line)) == 5 for line in findings)
    assert any("\\|tanh" in line for line in findings)
