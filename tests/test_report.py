"""`gatebench report`: golden Markdown / LaTeX from a committed saved run, figures, HTML, CLI.

The golden run (tests/data/golden/run, built by tests/golden_builder.py) is re-rendered and
compared with tests/data/golden/expected/ after normalising numbers (tolerance 2e-3), so a change
in number formatting by one ulp does not fail, a changed word or a missing row does. To bless an
intended change: GATEBENCH_UPDATE_GOLDEN=1 python -m pytest tests/test_report.py
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from gatebench.cli import cli
from gatebench.render import rerender
from gatebench.render.markdown import matching_comparison
from gatebench.rundir.saved import checkpoint_axis, resolve_image

GOLDEN = Path(__file__).parent / "data" / "golden"
RUN = GOLDEN / "run"
NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
UPDATE = os.environ.get("GATEBENCH_UPDATE_GOLDEN") == "1"


def assert_matches_golden(text: str, name: str, tol: float = 2e-3) -> None:
    """Same words and layout; every number within ``tol`` of the expected one."""
    expected_path = GOLDEN / "expected" / name
    if UPDATE:
        expected_path.parent.mkdir(parents=True, exist_ok=True)
        expected_path.write_text(text, encoding="utf-8")
    expected = expected_path.read_text(encoding="utf-8")
    got_lines, want_lines = text.splitlines(), expected.splitlines()
    assert len(got_lines) == len(want_lines), f"{name}: {len(got_lines)} lines, expected " \
                                              f"{len(want_lines)}"
    for number, (got, want) in enumerate(zip(got_lines, want_lines, strict=True), start=1):
        assert NUMBER.sub("#", got) == NUMBER.sub("#", want), f"{name}:{number}\n{got}\n{want}"
        for a, b in zip(NUMBER.findall(got), NUMBER.findall(want), strict=True):
            assert abs(float(a) - float(b)) <= tol, f"{name}:{number}: {a} vs {b}"


def referenced_images(markdown: str) -> list[str]:
    return re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("report")
    return {"md": rerender(RUN / "results.json", "md", out / "report.md"),
            "latex": rerender(RUN / "results.json", "latex", out / "report.tex"), "dir": out}


def test_markdown_matches_golden_and_its_figures_exist(rendered) -> None:
    text = rendered["md"].read_text(encoding="utf-8")
    assert_matches_golden(text, "report.md")
    images = referenced_images(text)
    assert {"metric_vs_scale.png", "metric_vs_epoch.png", "gate_trajectory.png",
            "grid_epoch_1.png", "grid_epoch_2.png"} <= set(images)
    for name in images:
        with Image.open(rendered["dir"] / name) as im:
            assert im.format == "PNG" and min(im.size) >= 200, name
    # headline table: value, CI, target, mark per checkpoint x scale; a fail and a shaky pass
    assert "| `epoch_1.pt` | 1 | iou50_rate | 0.250 | [0.000, 0.500] | 8 | > 0.6 | ✗ |" in text
    assert "✓*" in text and "crosses the threshold" in text
    assert "`saturated`" in text and "Gate verdict: **WARN**" in text
    assert "FID/KID reference set: 6 real images" in text
    assert "/tmp" not in text and "created 2025-01-01" in text


def test_latex_matches_golden(rendered) -> None:
    text = rendered["latex"].read_text(encoding="utf-8")
    assert_matches_golden(text, "report.tex")
    assert r"\toprule" in text and r"\midrule" in text and r"\bottomrule" in text
    assert r"\pm" in text and r"\texttt{epoch\_2.pt}" in text
    assert text.count(r"\begin{tabular}") == 2


def test_grid_enlarges_tiny_images_with_nearest_neighbour(rendered) -> None:
    with Image.open(rendered["dir"] / "grid_epoch_2.png") as im:
        grid = im.convert("RGB")
    # 3 gate-scale rows x 4 layout columns of 32 px images, each enlarged to >= 150 px
    assert grid.size[0] >= 4 * 150 and grid.size[1] >= 3 * 150
    colours = grid.getcolors(maxcolors=1 << 16)
    assert colours is not None          # flat blocks of colour, not a smooth blur


def test_html_is_one_self_contained_file(rendered) -> None:
    from gatebench.render.html import markdown_to_html

    html = markdown_to_html(rendered["md"].read_text(encoding="utf-8"), rendered["dir"])
    assert html.startswith("<!DOCTYPE html>") and "<table>" in html
    assert html.count("data:image/png;base64,") >= 5
    assert 'src="metric_vs_scale.png"' not in html


def test_report_command_and_its_errors(tmp_path: Path) -> None:
    out = tmp_path / "sub" / "paper.tex"
    result = CliRunner().invoke(cli, ["report", str(RUN / "results.json"), "--format", "latex",
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.is_file() and (out.parent / "metric_vs_scale.png").is_file()
    assert r"\begin{tabular}" in out.read_text(encoding="utf-8")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"schema_version": 1}), encoding="utf-8")
    result = CliRunner().invoke(cli, ["report", str(bad)])
    assert result.exit_code == 2 and "expected a gatebench results.json" in result.output
    future = json.loads((RUN / "results.json").read_text(encoding="utf-8"))
    future["schema_version"] = 99
    bad.write_text(json.dumps(future), encoding="utf-8")
    result = CliRunner().invoke(cli, ["report", str(bad), "--format", "latex"])
    assert result.exit_code == 2 and "schema_version" in result.output


def test_missing_images_are_reported_not_fatal_and_moved_runs_resolve(tmp_path: Path) -> None:
    from gatebench.render.format import Figures
    from gatebench.render.grids import sample_grid
    from gatebench.render.markdown import render_report
    from gatebench.rundir.saved import load_run

    run_dir = tmp_path / "run"
    shutil.copytree(RUN, run_dir)
    (run_dir / "images" / "epoch_1" / "layout_0__s1.png").unlink()
    run = load_run(run_dir)
    png, layouts, missing = sample_grid(run.samples, "ckpt/epoch_1.pt", run_dir,
                                        tmp_path / "grid.png")
    assert png.is_file() and layouts == ["layout_0", "layout_1", "layout_2", "layout_3"]
    assert missing == 1
    figures = Figures(grids=[{"checkpoint": "ckpt/epoch_1.pt", "file": png.name,
                              "layouts": layouts, "missing": missing}])
    text = render_report(run.results, figures=figures, samples=run.samples)
    assert "1 image(s) referenced in samples.jsonl were not found" in text
    assert "| layout_3 | 红色方块 | red square |" in text
    # an absolute path from another machine falls back to images/<cache>/<file> here
    moved = resolve_image("/elsewhere/out/images/base/layout_0__s0.png", run_dir)
    assert moved == run_dir / "images" / "base" / "layout_0__s0.png"
    assert resolve_image("/elsewhere/nothing.png", run_dir) is None


def test_epoch_axis_from_file_names_and_recorded_steps() -> None:
    results = json.loads((RUN / "results.json").read_text(encoding="utf-8"))
    assert checkpoint_axis(results) == ("epoch", {"ckpt/epoch_1.pt": 1.0, "ckpt/epoch_2.pt": 2.0})
    results["checkpoints"][0]["step"], results["checkpoints"][1]["step"] = 500, 1000
    assert checkpoint_axis(results)[0] == "step"


def test_tables_list_checkpoints_in_series_order_not_command_line_order() -> None:
    """Given as epoch_2 then epoch_1, every table (report.md, LaTeX, the terminal) is the one
    rendered for epoch_1 then epoch_2: readers/series.py's one rule, the order of the plots'
    axis and of `gatebench gates`, not the command line's."""
    import io

    from rich.console import Console

    from gatebench.render.format import Figures
    from gatebench.render.latex import render_latex
    from gatebench.render.markdown import render_report
    from gatebench.render.terminal import print_metrics
    from gatebench.rundir.saved import checkpoint_paths, given_order

    def outputs(results: dict) -> tuple[str, str, str]:
        out = io.StringIO()
        print_metrics(results, ["iou50_rate", "clip_score"], Path("report.md"),
                      Console(file=out, width=200))
        return render_report(results), render_latex(results, figures=Figures()), out.getvalue()

    in_order = json.loads((RUN / "results.json").read_text(encoding="utf-8"))
    given = ("ckpt/epoch_2.pt", "ckpt/epoch_1.pt")
    reversed_ = json.loads(json.dumps(in_order))
    reversed_["results"] = [r for ck in given for r in in_order["results"] if r["checkpoint"] == ck]
    reversed_["targets"] = sorted(in_order["targets"], key=lambda t: given.index(t["checkpoint"]))
    assert given_order(reversed_) == list(given) == given_order(in_order)[::-1]
    assert checkpoint_paths(reversed_) == checkpoint_paths(in_order) == list(given[::-1])
    md, tex, terminal = outputs(reversed_)
    first = outputs(in_order)
    assert (tex, terminal) == first[1:]
    tables = [[line for line in text.splitlines() if not line.startswith("**Verdict")]
              for text in (md, first[0])]      # the summary names failing metrics as recorded
    assert tables[0] == tables[1]
    assert md.index("| `epoch_1.pt` | 1 | iou50_rate") < md.index("| `epoch_2.pt` | 1 | iou50_rate")
    assert terminal.index("epoch_1.pt") < terminal.index("epoch_2.pt")


def test_compare_json_is_used_only_for_the_results_it_was_made_for(tmp_path: Path) -> None:
    results = json.loads((RUN / "results.json").read_text(encoding="utf-8"))
    doc = {"comparable": True, "regressions": 0, "rows": [], "settings": {},
           "baseline": {"results": "base/results.json"},
           "candidate": {"created": results["created"],
                         "layout_ids_sha256": results["layout_ids_sha256"]}}
    (tmp_path / "compare.json").write_text(json.dumps(doc), encoding="utf-8")
    assert matching_comparison(results, tmp_path) is not None
    doc["candidate"]["created"] = "2024-01-01T00:00:00+00:00"     # a stale one
    (tmp_path / "compare.json").write_text(json.dumps(doc), encoding="utf-8")
    assert matching_comparison(results, tmp_path) is None


def test_run_report_equals_its_rerender(tiny_run: Path, tmp_path: Path) -> None:
    """`gatebench report` reproduces the report `gatebench run` wrote, from saved files only."""
    written = (tiny_run / "report.md").read_text(encoding="utf-8")
    again = rerender(tiny_run / "results.json", "md", tmp_path / "report.md")
    assert again.read_text(encoding="utf-8") == written
    for name in referenced_images(written):
        assert (tiny_run / name).is_file() and (tmp_path / name).is_file()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from gatebench.protocol import load_protocol
    from gatebench.run import RunOptions, run_evaluation
    from tests.run_builders import tiny_world, write_checkpoint

    world = tiny_world(tmp_path_factory.mktemp("world"))
    second = write_checkpoint(world["root"] / "ckpt" / "epoch_10.pt", gate=0.2)
    out = world["root"] / "out"
    run_evaluation([world["ckpt"], second], load_protocol(world["protocol"]),
                   RunOptions(out_dir=out))
    return out
