"""`run --until-decided` in every output: the "sequential" record of results.json rendered in
report.md, LaTeX, HTML and the terminal, and refused by the schema when malformed.

A run without the record renders as before: tests/test_report.py's golden files cover that.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from rich.console import Console

from gatebench.errors import GatebenchError
from gatebench.render import rerender
from gatebench.render.terminal import render_run
from gatebench.rundir.schema import validate_results
from gatebench.verdict import TargetRow

GOLDEN = Path(__file__).parent / "data" / "golden" / "run"
REASON = ("iou50_rate at gate scale 1 of epoch_1.pt: the sequence's upper bound 0.312 <= 0.6 "
          "after 6 layouts")


def _sequential(results: dict[str, Any], *, stopped: bool = True) -> dict[str, Any]:
    """A record built from the golden run's own targets: it stopped at its 6 layouts of 24."""
    rows = []
    for t in results["targets"]:
        set_level = t["metric"] == "fid"
        fail = t["metric"] == "iou50_rate" and t["checkpoint"].endswith("epoch_1.pt")
        rows.append({"checkpoint": t["checkpoint"], "gate_scale": t["gate_scale"],
                     "metric": t["metric"], "op": t["op"], "threshold": t["threshold"],
                     "lower": None if set_level else 0.0, "upper": None if set_level else
                     (0.312 if fail else 0.9), "n": results["n_layouts"],
                     "decision": "fail" if fail and stopped else None,
                     "decidable": not set_level,
                     "why": "set-level: a pass waits for N; a fail elsewhere does not wait for it"
                     if set_level else ""})
    n = results["n_layouts"]
    return {"alpha": 0.05, "alpha_each": 0.05 / 8, "decisions": 8,
            "split": "Bonferroni: alpha / 8 for each of the 8 (target, checkpoint, gate scale) "
                     "rows a sequence can decide",
            "round_layouts": 3, "n_layouts": n if stopped else 24, "max_layouts": 24,
            "stopped_early": stopped, "decided": "fail" if stopped else None,
            "reason": REASON if stopped else "",
            "order": "layouts in a fixed random order: sha256(seed:layout_id), seed 7",
            "set_level": ["fid"],
            "rounds": [{"n_layouts": 3, "decided": None},
                       {"n_layouts": 6, "decided": "fail" if stopped else None}],
            "rows": rows}


def _run_folder(tmp_path: Path, **kwargs: Any) -> Path:
    folder = tmp_path / "run"
    shutil.copytree(GOLDEN, folder)
    results = json.loads((folder / "results.json").read_text(encoding="utf-8"))
    results["sequential"] = _sequential(results, **kwargs)
    if kwargs.get("stopped", True):
        results["max_layouts"] = 24
    else:
        results["n_layouts"] = 24
    (folder / "results.json").write_text(json.dumps(results), encoding="utf-8")
    return folder / "results.json"


def test_report_md_says_where_and_why_it_stopped(tmp_path: Path) -> None:
    text = rerender(_run_folder(tmp_path), "md", tmp_path / "out" / "report.md") \
        .read_text(encoding="utf-8")
    section = text.split("## Stopped when decided")[1].split("\n## ")[0]
    assert text.index("## Targets") < text.index("## Stopped when decided") < \
        text.index("## Metrics by checkpoint")
    assert f"Stopped at 6 of 24 layouts (rounds of 3): {REASON}." in section
    assert "alpha 0.05 overall, split Bonferroni: alpha / 8 for each of the 8" in section
    assert "Order: layouts in a fixed random order: sha256(seed:layout_id), seed 7." in section
    assert "| checkpoint | gate scale | metric | target | sequence bounds at stop | " \
           "bootstrap 95% CI | decision |" in section
    # bounds at the stop beside the matching target's bootstrap CI and the decision
    assert "| `epoch_1.pt` | 1 | iou50_rate | > 0.6 | [0.000, 0.312] at n 6 | [0.000, 0.500] " \
           "| fail |" in section
    assert "| `epoch_2.pt` | 1 | clip_score | >= 0.255 | [0.000, 0.900] at n 6 | " \
           "[0.254, 0.262] | undecided |" in section
    assert "| `epoch_1.pt` | 1 | fid | < 60 | - | - (set-level) | undecided (set-level: a pass " \
           "waits for N; a fail elsewhere does not wait for it) |" in section
    assert "computed on the 6 images generated" in section and "not on N = 24" in section
    assert "anytime-valid" in section and "not valid under optional stopping" in section
    # the Targets table marks set-level values with the note's marker, nothing else
    targets = text.split("## Targets")[1].split("## Stopped")[0]
    assert "| fid | 58.30† |" in targets and "| fid | 47.90† |" in targets
    assert targets.count("†") == 2 and section.startswith("\n\nStopped")


def test_a_run_to_n_says_so_and_marks_nothing(tmp_path: Path) -> None:
    text = rerender(_run_folder(tmp_path, stopped=False), "md", tmp_path / "report.md") \
        .read_text(encoding="utf-8")
    assert "## Sequential decision" in text and "## Stopped when decided" not in text
    assert "Ran to N = 24 layouts (rounds of 3): no verdict decided earlier." in text
    assert "†" not in text and "images generated" not in text


def test_latex_and_html_carry_the_sequence_table(tmp_path: Path) -> None:
    results = _run_folder(tmp_path)
    tex = rerender(results, "latex", tmp_path / "out" / "report.tex").read_text(encoding="utf-8")
    assert r"\label{tab:gatebench-sequential}" in tex and tex.count(r"\begin{tabular}") == 3
    assert r"Stopped at 6 of 24 layouts" in tex and r"$\leq$ 0.6" in tex
    assert r"\texttt{epoch\_1.pt} & 1 & " in tex and r"$[0.000, 0.312]$ & fail \\" in tex
    caption = next(line for line in tex.splitlines() if "Stopped at" in line)
    assert "computed on the 6 images generated" in caption and "<=" not in caption
    assert r"epoch\_1.pt" in caption and "(target, checkpoint, gate scale)" in caption
    page = rerender(results, "html", tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    assert "<h2>Stopped when decided</h2>" in page and "<th>sequence bounds at stop</th>" in page
    assert "<td>[0.000, 0.312] at n 6</td>" in page and "computed on the 6 images generated" in page


def _result(results: dict[str, Any]) -> SimpleNamespace:
    out = Path("runs/eval")
    return SimpleNamespace(results=results, gate_report=SimpleNamespace(findings=[]),
                           targets=[TargetRow(**t) for t in results["targets"]], out_dir=out,
                           paths={"report": out / "report.md"}, comparison=None)


def test_terminal_prints_one_stop_line_only_when_present(tmp_path: Path) -> None:
    results = json.loads(_run_folder(tmp_path).read_text(encoding="utf-8"))
    console = Console(width=300, record=True)
    render_run(_result(results), console)
    lines = [line for line in console.export_text().splitlines() if "stopped at" in line]
    assert lines == [f"stopped at 6 of 24 layouts: {REASON} (alpha 0.05 split over 8 decisions); "
                     "fid computed on the 6 images generated"]
    results["sequential"] = _sequential(results, stopped=False)
    console = Console(width=300, record=True)
    render_run(_result(results), console)
    assert "ran to N=24: undecided earlier (alpha 0.05 split over 8 decisions)" in \
        console.export_text()
    del results["sequential"]
    console = Console(width=300, record=True)
    render_run(_result(results), console)
    assert "stopped at" not in console.export_text() and "ran to N" not in console.export_text()


def _broken(results: dict[str, Any], change: str) -> dict[str, Any]:
    seq = results["sequential"]
    if change == "rows":
        seq["rows"] = {"not": "a list"}
    elif change == "decision":
        seq["rows"][0]["decision"] = "maybe"
    elif change == "decided":
        seq["decided"] = "maybe"
    elif change == "row key":
        del seq["rows"][1]["upper"], seq["rows"][1]["why"]
    elif change == "alpha":
        seq["alpha"] = "0.05"
    elif change == "n_layouts":
        results["n_layouts"] = 24
    return results


@pytest.mark.parametrize("change, field", [
    ("rows", "sequential.rows"), ("decision", "sequential.rows[0].decision"),
    ("decided", "sequential.decided"), ("row key", "sequential.rows[1].why"),
    ("alpha", "sequential.alpha"), ("n_layouts", "'n_layouts'")])
def test_schema_refuses_a_malformed_record_in_one_line(tmp_path: Path, change: str,
                                                        field: str) -> None:
    path = _run_folder(tmp_path)
    results = _broken(json.loads(path.read_text(encoding="utf-8")), change)
    with pytest.raises(GatebenchError) as caught:
        validate_results(results, path)
    message = str(caught.value)
    assert field in message and "\n" not in message.strip()
    assert validate_results(json.loads(path.read_text(encoding="utf-8")), path)


def test_report_command_refuses_it_with_exit_2(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from gatebench.cli import cli

    path = _run_folder(tmp_path)
    path.write_text(json.dumps(_broken(json.loads(path.read_text(encoding="utf-8")),
                                       "decision")), encoding="utf-8")
    result = CliRunner().invoke(cli, ["report", str(path), "--out", str(tmp_path / "r.md")])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1
    assert "'sequential.rows[0].decision' to be pass, fail or null, got 'maybe'" in lines[0]
