"""Terminal tables never cut a number or a name (render/fit.py), at 80 and 60 columns: a CI log
or a non-TTY gets COLUMNS=80, and rich used to cut `good_…`, `-0.26…` where the gate is read.

Each test renders the real command (or its renderer) at a width and checks that every number and
name of the data appears whole on one line, that no '…' appears and that no table line is
wider than the console.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Iterable

import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from rich.console import Console

from gatebench.cli import cli
from gatebench.compare import CompareRow
from gatebench.metrics.stats import MetricValue
from gatebench.render.compare import diff_text, margin_text, seq_text
from gatebench.render.fit import Col, print_fitted
from gatebench.render.format import fmt
from gatebench.render.terminal import render_run, render_score
from gatebench.rundir.samples import read_samples_jsonl, write_samples_jsonl
from gatebench.verdict import TargetRow
from tests.builders import gligen_state, write_series

GOLDEN = Path(__file__).parent / "data" / "golden" / "run"
WIDTHS = (80, 60)
BOX = set("│┃━─┏┓┗┛┡┩└┘┳┻╇╋┼┬┴")


def assert_whole(text: str, tokens: Iterable[str], width: int) -> None:
    """Every token on one line of ``text``; no ellipsis; table lines within the width."""
    lines = text.splitlines()
    missing = [t for t in tokens if not any(t in line for line in lines)]
    assert not missing, f"cut or missing at {width} columns: {missing[:8]}\n{text}"
    assert "…" not in text
    too_wide = [line for line in lines if BOX & set(line) and len(line.rstrip()) > width]
    assert not too_wide, too_wide[:3]


# -- the helper -------------------------------------------------------------------------------
ROWS = [["good_step_4000.pt → good_step_1000.pt", "1", "iou50_rate", "-0.2611 [-0.6013, -0.0102]",
         "[red]✗ regression[/]"],
        ["good_step_4000.pt → good_step_1000.pt", "1", "region_clip_score",
         "+0.0004 [-0.0031, +0.0040]", "✓ ok"]]
COLS = [Col("checkpoint"), Col("scale", "right"), Col("metric"), Col("Δ [CI]", drop=1),
        Col("status")]


@pytest.mark.parametrize("width, layout", [(140, "table"), (100, "reduced"), (60, "records")])
def test_the_helper_picks_the_widest_layout_that_keeps_every_cell_whole(width: int,
                                                                         layout: str) -> None:
    console = Console(width=width, record=True)
    fitted = print_fitted(console, COLS, ROWS, title="paired comparison", where="the report")
    text = console.export_text()
    assert fitted.layout == layout
    kept = [row[:3] + row[4:] for row in ROWS] if layout == "reduced" else ROWS
    assert_whole(text, [cell.replace("[red]", "").replace("[/]", "") for row in kept
                        for cell in row], width)
    if layout == "table":
        assert "narrow terminal" not in text
    elif layout == "reduced":
        assert "-0.2611" not in text and "4 of 5 columns (narrow terminal; Δ [CI] left out); " \
            "the full table is in the report" in text
    else:     # one block per row: the key column heads it, one "header: value" line per column
        assert "  Δ [CI]: -0.2611 [-0.6013, -0.0102]" in text and "  status: ✗ regression" in text
        assert "one block per row (narrow terminal); the full table is in the report" in text


def test_a_header_wraps_at_its_words_before_a_cell_is_touched() -> None:
    console = Console(width=42, record=True)
    fitted = print_fitted(console, [Col("checkpoint"), Col("region clip score", "right")],
                          [["good_step_4000.pt", "0.2349"]])
    text = console.export_text()
    assert fitted.layout == "table" and "good_step_4000.pt" in text and "0.2349" in text
    assert "region" in text and "score" in text and "…" not in text


# -- compare ----------------------------------------------------------------------------------
def _regressed_candidate(tmp_path: Path) -> Path:
    """The golden run with epoch_2 at scale 1 losing its matches (as test_compare does)."""
    folder = tmp_path / "candidate"
    folder.mkdir()
    shutil.copy(GOLDEN / "results.json", folder / "results.json")
    samples = read_samples_jsonl(GOLDEN / "samples.jsonl")
    hit = (samples["checkpoint"] == "epoch_2.pt") & (samples["gate_scale"] == 1.0) & \
        samples["layout_id"].isin(["layout_0", "layout_1", "layout_3", "layout_4"])
    samples.loc[hit, ["n_matched", "all_matched"]] = [0, False]
    samples.loc[hit, "iou_sum"] = samples.loc[hit, "iou_sum"] * 0.3
    write_samples_jsonl(samples, folder / "samples.jsonl")
    return folder / "results.json"


def _number(value: float | None) -> str:
    """The compare table's value format (4 decimals; 2 from 10 on)."""
    if value is None:
        return "-"
    return f"{value:.4f}" if abs(value) < 10 else f"{value:.2f}"


@pytest.fixture(scope="module")
def compared(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], dict]:
    """`compare` arguments for the golden run against a regressed copy, and its --json."""
    candidate = _regressed_candidate(tmp_path_factory.mktemp("compare"))
    args = ["compare", str(GOLDEN / "results.json"), str(candidate)]
    return args, json.loads(CliRunner().invoke(cli, [*args, "--json"]).output)


@pytest.mark.parametrize("width", [*WIDTHS, 250])
def test_compare_cuts_no_number_or_name(compared: tuple[list[str], dict], width: int) -> None:
    args, document = compared
    result = CliRunner(env={"COLUMNS": str(width)}).invoke(cli, args)
    assert result.exit_code == 1, result.output
    tokens = []
    for r in document["rows"]:
        row = CompareRow(**r)
        tokens += [row.baseline_label, row.candidate_label, row.metric, _number(row.baseline),
                   _number(row.candidate), diff_text(row), seq_text(row), margin_text(row)]
    assert_whole(result.output, tokens, width)
    assert "regression check: REGRESSION" in result.output
    if width < 250:
        assert "the full table is in `gatebench compare --json`" in result.output
    else:
        assert "narrow terminal" not in result.output and "┃ checkpoint" in result.output


# -- run: the metrics and the targets tables -------------------------------------------------
def _run_result(results: dict) -> SimpleNamespace:
    out = Path("runs/eval")
    return SimpleNamespace(results=results, gate_report=SimpleNamespace(findings=[]),
                           targets=[TargetRow(**t) for t in results["targets"]], out_dir=out,
                           paths={"report": out / "report.md"}, comparison=None)


def _long_labelled_golden() -> dict:
    """The golden run with the world's long checkpoint names (good_step_1000 / 4000)."""
    results = json.loads((GOLDEN / "results.json").read_text(encoding="utf-8"))
    rename = {"ckpt/epoch_1.pt": "assets/good/good_step_1000.pt",
              "ckpt/epoch_2.pt": "assets/good/good_step_4000.pt"}
    for row in results["results"]:
        row["checkpoint"] = rename[row["checkpoint"]]
        row["label"] = Path(row["checkpoint"]).name
    for t in results["targets"]:
        t["checkpoint"] = rename.get(t["checkpoint"], t["checkpoint"])
    return results


@pytest.mark.parametrize("width", WIDTHS)
def test_run_tables_cut_no_number_or_name(width: int) -> None:
    results = _long_labelled_golden()
    console = Console(width=width, record=True)
    render_run(_run_result(results), console)
    text = console.export_text()
    tokens = []
    for t in results["targets"]:
        tokens += [Path(t["checkpoint"]).name, t["metric"], f"{t['op']} {t['threshold']:g}",
                   fmt(t["value"])]
    names = list(dict.fromkeys(n for r in results["results"] for n in r["metrics"]))
    shown = names
    if "narrow terminal" in text.split("targets")[0]:
        head = text.split("targets")[0]
        shown = [n for n in names if n.replace("_", " ").split()[0] in head]
        assert f"{len(shown)} of {len(names)} metrics (narrow terminal)" in head
    for r in results["results"]:
        tokens += [r["label"], *(fmt(r["metrics"][n]["value"]) for n in shown
                                 if r["metrics"].get(n, {}).get("value") is not None)]
    assert_whole(text, tokens, width)
    assert "runs/eval/report.md" in text


def test_a_target_not_computed_says_why_under_the_table() -> None:
    results = _long_labelled_golden()
    result = _run_result(results)
    result.targets.append(TargetRow("assets/good/good_step_4000.pt", 1.0, "clip_score", ">=", 0.25,
                                    None, None, None, None, False, False, None,
                                    "not computed: no CLIP model is configured in [models]"))
    console = Console(width=80, record=True)
    render_run(result, console)
    text = console.export_text()
    assert "good_step_4000.pt · 1 · clip_score: not computed: no CLIP model is configured in " \
        "[models]" in text
    assert "…" not in text


# -- gates --------------------------------------------------------------------------------------
@pytest.mark.parametrize("width", WIDTHS)
def test_gates_cut_no_number_or_name(tmp_path: Path, width: int) -> None:
    torch.save(gligen_state(0.31, 0.27, blocks=3), tmp_path / "gligen_step_1000.pt")
    series = tmp_path / "good_run_with_a_long_folder_name"
    series.mkdir()
    write_series(series, [0.0123, 0.2345, 0.3456], name="good_step_{}000.pt")
    args = ["gates", str(tmp_path / "gligen_step_1000.pt"), str(series)]
    document = json.loads(CliRunner().invoke(cli, [*args, "--json"]).output)
    result = CliRunner(env={"COLUMNS": str(width)}).invoke(cli, args)
    tokens = []
    for c in document["checkpoints"]:
        tokens.append(c["path"])
        for g in c["gates"]:
            tokens += [g["layer"], g["kind"], f"{float(g['raw']):.4g}"]
    assert_whole(result.output, tokens, width)


# -- score --------------------------------------------------------------------------------------
@pytest.mark.parametrize("width", WIDTHS)
def test_score_cuts_no_number_or_name(width: int) -> None:
    metrics = {"iou50_rate": MetricValue(0.6667, 0.3333, 1.0, 24),
               "region_clip_score": MetricValue(0.2349, 0.2288, 0.2411, 24),
               "relation_rate_matched": MetricValue(0.5, 0.25, 0.75, 12),
               "fid": MetricValue(147.93, None, None, 24)}
    result = SimpleNamespace(samples=pd.DataFrame({"image": range(24)}), metrics=metrics,
                             not_computed={"clip_score": "no CLIP model is configured in the "
                                                         "protocol's [models] table"})
    console = Console(width=width, record=True)
    render_score(result, [], Path("outputs/a_rather_long_folder/of_generated_images"), None,
                 console)
    text = console.export_text()
    tokens = ["clip_score", "no CLIP model is configured"]
    for name, v in metrics.items():
        tokens += [name, fmt(v.value), str(v.n)] + ([fmt(v.ci_low), fmt(v.ci_high)]
                                                   if v.ci_low is not None else [])
    assert_whole(text, tokens, width)


@pytest.mark.parametrize("width", WIDTHS)
def test_check_init_cuts_no_number_or_name(width: int) -> None:
    from gatebench.render.terminal import render_check_init

    rows = [SimpleNamespace(scheme=scheme, identity_max_abs_diff=diff, identity_ok=diff < 1e-6,
                            gate_grad_norm=gate, to_out_grad_norm=out, gradient_ok=gate + out > 0,
                            ok=diff < 1e-6 and gate + out > 0)
            for scheme, diff, gate, out in [("gligen", 0.0, 9.12e-3, 0.0),
                                            ("legacy", 0.317, 1.55e-4, 0.11),
                                            ("runs/a_long_run_name/step_1000.pt", 0.0, 0.0, 0.0)]]
    console = Console(width=width, record=True)
    render_check_init(rows, 1e-6, console)
    tokens = [t for r in rows for t in (r.scheme, f"{r.identity_max_abs_diff:.2e}",
                                        f"{r.gate_grad_norm:.2e}", f"{r.to_out_grad_norm:.2e}")]
    assert_whole(console.export_text(), tokens, width)
