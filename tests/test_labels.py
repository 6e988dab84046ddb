"""Checkpoint labels (runA/final.pt vs runB/final.pt) and the terminal metrics table."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

from rich.console import Console

from gatebench.render.terminal import render_run
from gatebench.rundir.saved import checkpoint_labels, label_map, row_label
from gatebench.verdict import TargetRow

GOLDEN = Path(__file__).parent / "data" / "golden" / "run"


def test_labels_are_the_shortest_unique_path_suffix() -> None:
    assert checkpoint_labels(["ckpt/epoch_1.pt", Path("ckpt/epoch_2.pt")]) == {
        "ckpt/epoch_1.pt": "epoch_1.pt", "ckpt/epoch_2.pt": "epoch_2.pt"}
    assert checkpoint_labels(["runs/runA/final.pt", "runs/runB/final.pt", "runs/runA/best.pt"]) == {
        "runs/runA/final.pt": "runA/final.pt", "runs/runB/final.pt": "runB/final.pt",
        "runs/runA/best.pt": "best.pt"}
    three = checkpoint_labels(["a/x/final.pt", "b/x/final.pt", "c/y/final.pt"])
    assert three == {"a/x/final.pt": "a/x/final.pt", "b/x/final.pt": "b/x/final.pt",
                     "c/y/final.pt": "y/final.pt"}
    # one path the tail of another: the shorter one is labelled by all it has
    nested = checkpoint_labels(["x/final.pt", "run/x/final.pt"])
    assert nested == {"x/final.pt": "x/final.pt", "run/x/final.pt": "run/x/final.pt"}
    assert checkpoint_labels(["runA/final.pt", "runA/final.pt"]) == {"runA/final.pt": "final.pt"}
    assert checkpoint_labels([]) == {}


def test_rows_of_older_results_fall_back_to_the_file_name() -> None:
    assert row_label({"checkpoint": "runA/final.pt", "label": "runA/final.pt"}) == "runA/final.pt"
    assert row_label({"checkpoint": "runA/final.pt"}) == "final.pt"
    old = json.loads((GOLDEN / "results.json").read_text(encoding="utf-8"))
    assert label_map(old) == {"ckpt/epoch_1.pt": "epoch_1.pt", "ckpt/epoch_2.pt": "epoch_2.pt"}


def _result(results: dict) -> SimpleNamespace:
    out = Path("runs/eval")
    return SimpleNamespace(results=results, gate_report=SimpleNamespace(findings=[]),
                           targets=[TargetRow(**t) for t in results["targets"]], out_dir=out,
                           paths={"report": out / "report.md"}, comparison=None)


def _same_named_golden() -> dict:
    """The golden run as if its two checkpoints were runA/final.pt and runB/final.pt."""
    results = json.loads((GOLDEN / "results.json").read_text(encoding="utf-8"))
    rename = {"ckpt/epoch_1.pt": "runs/runA/final.pt", "ckpt/epoch_2.pt": "runs/runB/final.pt"}
    for row in results["results"]:
        row["checkpoint"] = rename[row["checkpoint"]]
        row["label"] = row["checkpoint"].removeprefix("runs/")
    for t in results["targets"]:
        t["checkpoint"] = rename.get(t["checkpoint"], t["checkpoint"])
    return results


def test_narrow_terminal_shows_headline_metrics_without_truncation() -> None:
    results = _same_named_golden()
    console = Console(width=80, record=True)
    render_run(_result(results), console)
    text = console.export_text()
    assert "…" not in text
    assert max(len(line) for line in text.splitlines() if "│" in line or "┃" in line) <= 80
    assert "runA/final.pt" in text and "runB/final.pt" in text and "│ final.pt" not in text
    assert "the full table with 95% CIs is in" in text and "runs/eval/report.md" in text
    table = text.split("targets")[0]
    for header in ("iou50", "clip", "garbled", "miou", "fid"):   # headline: targets first
        assert header in table
    assert "ap50" not in table and "region" not in table
    targets = text.split("targets")[1]              # the CI column leaves first, and says so
    assert "0.250" in targets and "[0.000, 0.500]" not in targets
    assert "(narrow terminal; 95% CI left out); the full table is in runs/eval/report.md" in text
    wide = Console(width=200, record=True)
    render_run(_result(results), wide)
    text = wide.export_text()
    assert "…" not in text and "region clip score" in text and "all matched rate" in text
    assert "narrow" not in text and "95% CIs are in" in text and "[0.000, 0.500]" in text


def test_no_metric_or_gate_line_joins_different_training_runs(tmp_path: Path) -> None:
    """runA/final.pt and runB/final.pt are two runs: no metric-vs-epoch or gate trajectory
    line may connect them; the golden run's two epochs of one folder keep theirs."""
    from gatebench.render.plots import plot_gate_trajectory, plot_metric_vs_epoch
    from gatebench.rundir.saved import is_one_training_run

    golden = json.loads((GOLDEN / "results.json").read_text(encoding="utf-8"))
    assert is_one_training_run(golden)
    assert plot_metric_vs_epoch(golden, tmp_path / "one.png") is not None
    two_runs = _same_named_golden()
    for c in two_runs["checkpoints"]:
        c["path"] = {"ckpt/epoch_1.pt": "runs/runA/final.pt",
                     "ckpt/epoch_2.pt": "runs/runB/final.pt"}[c["path"]]
    assert not is_one_training_run(two_runs)
    assert plot_metric_vs_epoch(two_runs, tmp_path / "two.png") is None
    assert plot_gate_trajectory(two_runs, tmp_path / "gates.png") is None
