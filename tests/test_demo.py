"""A reduced `gatebench demo` on the shipped shapes-world assets (few layouts, few steps)."""
from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from gatebench.cli import cli


def test_reduced_demo_runs_the_whole_harness(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    result = CliRunner().invoke(cli, ["demo", "--out", str(out), "--num-samples", "4",
                                      "--steps", "3", "--device", "cpu"])
    assert result.exit_code in (0, 1), result.output      # 1: quality bars need full steps
    checks = {c["name"]: c for c in json.loads((out / "demo.json").read_text())}
    assert checks["deadlock checkpoint flagged"]["ok"]
    assert checks["detector ceiling on ground-truth images"]["ok"]
    assert checks["deadlocked adapter changes nothing (IoU rate at 1 equals scale 0)"]["ok"]
    health = checks["good adapter's scale-1 images healthy (garbled / blank rate)"]
    assert health["required"] and "/" in health["observed"]     # 3 steps: not yet a quality bar
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "## Demo expectations" in report and "Gates: legacy series" in report
    results = json.loads((out / "results.json").read_text())
    assert results["n_layouts"] == 4
    assert {r["gate_scale"] for r in results["results"]} == {0.0, 0.5, 1.0, 2.0}
    assert {"iou50_rate", "clip_score", "fid", "kid", "garbled_rate", "blank_rate"} <= set(
        results["results"][0]["metrics"])
