"""`gatebench compare` and `gatebench run --baseline`: the paired regression gate.

Built on the committed golden run (tests/data/golden/run): against itself -> 0; a real drop
injected into the per-sample records -> 1; tiny random jitter -> 0 (no flaky gate); runs that
cannot be paired -> 2 with the reason. Then `run --baseline` end to end on the tiny world.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from gatebench.cli import cli
from gatebench.compare import compare_runs, paired_ratio_diff
from gatebench.metrics.stats import bootstrap_ci, paired_bootstrap_diff
from gatebench.rundir.records import metric_units
from gatebench.rundir.samples import read_samples_jsonl, write_samples_jsonl
from gatebench.rundir.saved import SavedRun, load_run

GOLDEN = Path(__file__).parent / "data" / "golden" / "run"


def invoke(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args])


def copy_run(tmp_path: Path, name: str, edit_samples=None, edit_results=None) -> Path:
    """A copy of the golden run with its samples.jsonl / results.json edited."""
    folder = tmp_path / name
    folder.mkdir()
    shutil.copy(GOLDEN / "results.json", folder / "results.json")
    samples = read_samples_jsonl(GOLDEN / "samples.jsonl")
    if edit_samples:
        samples = edit_samples(samples)
    write_samples_jsonl(samples, folder / "samples.jsonl")
    if edit_results:
        results = json.loads((folder / "results.json").read_text(encoding="utf-8"))
        edit_results(results)
        (folder / "results.json").write_text(json.dumps(results), encoding="utf-8")
    return folder / "results.json"


def test_a_run_against_itself_passes_with_zero_differences(tmp_path: Path) -> None:
    out = tmp_path / "verdict.json"
    result = invoke("compare", GOLDEN / "results.json", GOLDEN / "results.json", "--out", out)
    assert result.exit_code == 0, result.output
    assert "regression check: PASS" in result.output
    doc = json.loads(out.read_text(encoding="utf-8"))
    assert doc["verdict"] == "pass" and doc["comparable"] and doc["regressions"] == 0
    paired = [r for r in doc["rows"] if r["kind"] == "paired"]
    # 6 per-image metrics x (scale 0, shared by both checkpoints, + 2 checkpoints x 2 scales)
    assert len(paired) == 30 and all(r["diff"] == 0 and r["status"] == "ok" for r in paired)
    fid = [r for r in doc["rows"] if r["metric"] == "fid"]
    assert fid and all(not r["gated"] and r["status"] == "not gated" for r in fid)


def drop_matches(samples: pd.DataFrame) -> pd.DataFrame:
    """epoch_2 at scale 1 loses its matches in 4 of 6 layouts (a real grounding regression)."""
    hit = (samples["checkpoint"] == "epoch_2.pt") & (samples["gate_scale"] == 1.0) & \
        samples["layout_id"].isin(["layout_0", "layout_1", "layout_3", "layout_4"])
    samples.loc[hit, "n_matched"] = 0
    samples.loc[hit, "all_matched"] = False
    samples.loc[hit, "iou_sum"] = samples.loc[hit, "iou_sum"] * 0.3
    return samples


def test_an_injected_drop_is_a_regression(tmp_path: Path) -> None:
    candidate = copy_run(tmp_path, "candidate", drop_matches)
    out = tmp_path / "verdict.json"
    result = invoke("compare", GOLDEN / "results.json", candidate, "--out", out)
    assert result.exit_code == 1, result.output
    assert "REGRESSION" in result.output
    doc = json.loads(out.read_text(encoding="utf-8"))
    bad = {(r["candidate_checkpoint"], r["gate_scale"], r["metric"])
           for r in doc["rows"] if r["status"] == "regression"}
    assert ("ckpt/epoch_2.pt", 1.0, "iou50_rate") in bad and ("ckpt/epoch_2.pt", 1.0, "miou") in bad
    assert all(ck == "ckpt/epoch_2.pt" and scale == 1.0 for ck, scale, _ in bad)
    row = next(r for r in doc["rows"] if r["metric"] == "iou50_rate" and r["status"] == "regression")
    assert row["diff"] == pytest.approx(-5 / 8) and row["ci_high"] < -0.02
    # a margin wider than the drop turns that metric off as a regression
    wide = invoke("compare", GOLDEN / "results.json", candidate, "--metric", "iou50_rate=0.9",
                  "--metric", "miou=off", "--metric", "all_matched_rate=off")
    assert wide.exit_code == 0, wide.output


def test_tiny_random_jitter_never_fails_the_gate(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)

    def jitter(samples: pd.DataFrame) -> pd.DataFrame:
        for column in ("clip_score", "region_clip_score"):
            samples[column] = samples[column] + rng.uniform(-0.002, 0.002, len(samples))
        samples["garbled_score"] = samples["garbled_score"] + rng.uniform(0, 0.01, len(samples))
        return samples

    for i in range(3):
        candidate = copy_run(tmp_path, f"jitter{i}", jitter)
        result = invoke("compare", GOLDEN / "results.json", candidate)
        assert result.exit_code == 0, result.output


@pytest.mark.parametrize("field, value, reason", [
    ("seed", 8, "seed 7 in the baseline vs 8 in the candidate"),
    ("n_layouts", 5, "N (layouts)"),
    ("layout_ids_sha256", "0" * 64, "layout ids sha256"),
    ("protocol_sha256", "f" * 64, "protocol file sha256"),
])
def test_runs_that_cannot_be_paired_exit_2_naming_why(tmp_path: Path, field: str, value,
                                                     reason: str) -> None:
    candidate = copy_run(tmp_path, "odd", edit_results=lambda r: r.__setitem__(field, value))
    out = tmp_path / "verdict.json"
    result = invoke("compare", GOLDEN / "results.json", candidate, "--out", out)
    assert result.exit_code == 2 and reason in result.output, result.output
    assert "Traceback" not in result.output
    doc = json.loads(out.read_text(encoding="utf-8"))
    assert doc["verdict"] == "not_comparable" and any(reason in r for r in doc["reasons"])


def test_other_protocol_and_missing_records_are_not_comparable(tmp_path: Path) -> None:
    def rename(results: dict) -> None:
        results["protocol"]["name"] = "other"

    result = invoke("compare", GOLDEN / "results.json", copy_run(tmp_path, "a", edit_results=rename))
    assert result.exit_code == 2 and "protocol name 'golden-shapes'" in result.output
    truncated = copy_run(tmp_path, "b", lambda s: s[s["layout_id"] != "layout_5"])
    result = invoke("compare", GOLDEN / "results.json", truncated)
    assert result.exit_code == 2 and "layout_5" in result.output
    lonely = tmp_path / "c"
    lonely.mkdir()
    shutil.copy(GOLDEN / "results.json", lonely / "results.json")
    result = invoke("compare", GOLDEN / "results.json", lonely / "results.json")
    assert result.exit_code == 2 and "samples.jsonl" in result.output


def test_set_level_metrics_gate_only_when_named(tmp_path: Path) -> None:
    def worse_fid(results: dict) -> None:
        for row in results["results"]:
            row["metrics"]["fid"]["value"] += 5.0

    candidate = copy_run(tmp_path, "fid", edit_results=worse_fid)
    assert invoke("compare", GOLDEN / "results.json", candidate).exit_code == 0
    result = invoke("compare", GOLDEN / "results.json", candidate, "--metric", "fid=2", "--json")
    assert result.exit_code == 1
    doc = json.loads(result.output)
    fid = [r for r in doc["rows"] if r["metric"] == "fid"]
    assert all(r["status"] == "regression" and "point" in r["note"] for r in fid)
    assert invoke("compare", GOLDEN / "results.json", candidate, "--metric", "fid=6").exit_code == 0
    bad = invoke("compare", GOLDEN / "results.json", candidate, "--metric", "fidd=2")
    assert bad.exit_code == 2 and "expected --metric NAME=MAX_DROP" in bad.output
    bad = invoke("compare", GOLDEN / "results.json", candidate, "--metric", "kid=0.01")
    assert bad.exit_code == 2 and "kid" in bad.output          # named, but in neither run


def test_a_garbled_rise_is_a_regression_for_a_lower_is_better_metric(tmp_path: Path) -> None:
    def garble(samples: pd.DataFrame) -> pd.DataFrame:
        hit = (samples["gate_scale"] == 1.0) & (samples["checkpoint"] == "epoch_1.pt")
        samples.loc[hit, "garbled"] = True
        return samples

    doc = json.loads(invoke("compare", GOLDEN / "results.json", copy_run(tmp_path, "g", garble),
                            "--json").output)
    bad = [(r["metric"], r["gate_scale"]) for r in doc["rows"] if r["status"] == "regression"]
    assert bad == [("garbled_rate", 1.0)]
    # and the reverse direction (candidate cleaner than the baseline) is an improvement
    reverse = compare_runs(load_run(copy_run(tmp_path, "g2", garble)), load_run(GOLDEN))
    assert {r.status for r in reverse.rows if r.metric == "garbled_rate" and r.gate_scale == 1.0
            and r.checkpoint_index == 0} == {"improved"}


def test_every_candidate_checkpoint_is_paired_with_a_single_baseline_checkpoint(
        tmp_path: Path) -> None:
    def only_epoch_1(results: dict) -> None:
        results["results"] = [r for r in results["results"] if r["checkpoint"].endswith("_1.pt")]
        results["checkpoints"] = results["checkpoints"][:1]

    base = copy_run(tmp_path, "one", lambda s: s[s["checkpoint"] == "epoch_1.pt"], only_epoch_1)
    comparison = compare_runs(load_run(base), load_run(GOLDEN))
    pairs = {(r.baseline_checkpoint, r.candidate_checkpoint) for r in comparison.rows
             if r.gate_scale > 0}
    assert pairs == {("ckpt/epoch_1.pt", "ckpt/epoch_1.pt"), ("ckpt/epoch_1.pt", "ckpt/epoch_2.pt")}
    # epoch_2 grounds far better than the epoch_1 baseline: an improvement, not a regression
    iou = next(r for r in comparison.rows if r.metric == "iou50_rate" and r.gate_scale == 1.0
               and r.candidate_checkpoint.endswith("_2.pt"))
    assert iou.status == "improved" and iou.diff == pytest.approx(0.75)
    # but 2 baseline checkpoints against 1 candidate cannot be paired
    result = invoke("compare", GOLDEN / "results.json", base)
    assert result.exit_code == 2 and "2 checkpoints in the baseline vs 1" in result.output


def test_paired_statistics_match_the_library_definitions() -> None:
    rng = np.random.default_rng(3)
    a, b = rng.random(200), rng.random(200)
    ones = np.ones(200)
    mine = paired_ratio_diff(pd.DataFrame({"num": a, "den": ones}),
                             pd.DataFrame({"num": b, "den": ones}), n_boot=500, level=0.95, seed=7)
    ref = paired_bootstrap_diff(a, b, n_boot=500, seed=7)
    assert mine[2] == pytest.approx(ref.diff) and mine[3] == pytest.approx(ref.ci_low)
    assert mine[4] == pytest.approx(ref.ci_high)
    # per-layout units reproduce the run's own ratio-of-sums values (iou50_rate, region CLIP)
    run = load_run(GOLDEN)
    rows = {(r["checkpoint"], r["gate_scale"]): r["metrics"] for r in run.results["results"]}
    for metric in ("iou50_rate", "miou", "all_matched_rate", "clip_score", "region_clip_score",
                   "garbled_rate"):
        group = run.samples[(run.samples["checkpoint"] == "epoch_2.pt")
                            & (run.samples["gate_scale"] == 1.0)]
        units = metric_units(group, metric)
        value = units["num"].sum() / units["den"].sum()
        assert value == pytest.approx(rows[("ckpt/epoch_2.pt", 1.0)][metric]["value"], abs=1e-4)
    units = metric_units(group, "iou50_rate")
    ci = bootstrap_ci(units["num"], units["den"], n_boot=10, seed=0)
    assert ci.n == 8                                            # scorable boxes, not images


def test_no_false_alarm_on_a_large_noisy_but_unchanged_run() -> None:
    """200 layouts, per-layout noise sd 0.05 on CLIP, no true change: never a regression."""
    rng = np.random.default_rng(11)
    n = 200
    base = pd.DataFrame({"checkpoint": "a.pt", "layout_id": [f"l{i}" for i in range(n)],
                         "gate_scale": 1.0, "clip_score": 0.26 + rng.normal(0, 0.02, n),
                         "garbled": rng.random(n) < 0.05, "n_boxes": 2, "n_scorable": 2,
                         "n_matched": rng.integers(0, 3, n), "iou_sum": rng.random(n),
                         "all_matched": rng.random(n) < 0.5, "region_clip_score": 0.2})
    cand = base.copy()
    cand["clip_score"] = cand["clip_score"] + rng.normal(0, 0.05, n)
    results = json.loads((GOLDEN / "results.json").read_text(encoding="utf-8"))
    results["results"] = [{"checkpoint": "ckpt/a.pt", "gate_scale": 1.0, "metrics": {}}]
    comparison = compare_runs(SavedRun(results, base, Path("b/results.json")),
                              SavedRun(results, cand, Path("c/results.json")))
    clip = next(r for r in comparison.rows if r.metric == "clip_score")
    assert clip.status == "ok" and clip.ci_low < 0 < clip.ci_high
    assert comparison.exit_code == 0


# --- `gatebench run --baseline` on the tiny world --------------------------------------------
@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from tests.run_builders import tiny_world

    world = tiny_world(tmp_path_factory.mktemp("world"))
    text = world["protocol"].read_text(encoding="utf-8")
    passing = world["root"] / "passing.toml"       # the same world without the iou50 target
    passing.write_text(text.split('[[targets]]\nmetric = "iou50_rate"')[0], encoding="utf-8")
    return {**world, "passing": passing}


def run_cli(world: dict[str, Path], protocol: Path, out: Path, *extra: str):
    return invoke("run", "--ckpt", world["ckpt"], "--protocol", protocol, "--num-samples", "4",
                  "--gate-scales", "1", "--out", out, *extra)


def test_run_with_baseline_end_to_end(world, tmp_path: Path) -> None:
    base = tmp_path / "base"
    first = run_cli(world, world["passing"], base)
    assert first.exit_code == 0, first.output
    # identical recipe -> identical images -> no regression; targets pass -> 0
    again = run_cli(world, world["passing"], tmp_path / "cand", "--baseline",
                    base / "results.json")
    assert again.exit_code == 0, again.output
    verdict = json.loads((tmp_path / "cand" / "compare.json").read_text(encoding="utf-8"))
    assert verdict["verdict"] == "pass" and verdict["rows"]
    report = (tmp_path / "cand" / "report.md").read_text(encoding="utf-8")
    assert "## Regression check against the baseline" in report and "**PASS**" in report
    # a baseline whose images were clean: the candidate's garbled rate rose -> 1 (targets pass)
    clean = tmp_path / "clean"
    shutil.copytree(base, clean, ignore=shutil.ignore_patterns("images"))
    samples = read_samples_jsonl(clean / "samples.jsonl")
    samples["garbled"] = False
    write_samples_jsonl(samples, clean / "samples.jsonl")
    worse = run_cli(world, world["passing"], tmp_path / "cand", "--baseline",
                    clean / "results.json")
    assert worse.exit_code == 1, worse.output
    assert "REGRESSION" in worse.output and "garbled_rate" in worse.output
    report = (tmp_path / "cand" / "report.md").read_text(encoding="utf-8")
    assert "**Verdict: FAIL**" in report and "regression check fail" in report


def test_run_with_baseline_fails_on_targets_alone_and_refuses_other_seeds(world,
                                                                         tmp_path: Path) -> None:
    base = tmp_path / "base"
    assert run_cli(world, world["protocol"], base).exit_code == 1      # iou50 not computed
    again = run_cli(world, world["protocol"], tmp_path / "cand", "--baseline",
                    base / "results.json")
    assert again.exit_code == 1, again.output                          # no regression, target
    assert json.loads((tmp_path / "cand" / "compare.json").read_text())["verdict"] == "pass"
    other = run_cli(world, world["protocol"], tmp_path / "seed", "--baseline",
                    base / "results.json", "--seed", "3")
    assert other.exit_code == 2 and "seed 7 in the baseline vs 3 now" in other.output
    assert not (tmp_path / "seed" / "results.json").exists()          # refused before running


def test_a_blank_rise_is_a_regression_too(tmp_path: Path) -> None:
    def clean(samples: pd.DataFrame) -> pd.DataFrame:
        samples["blank"], samples["blank_score"] = False, 0.0
        return samples

    def blank(samples: pd.DataFrame) -> pd.DataFrame:
        samples = clean(samples)
        hit = (samples["gate_scale"] == 2.0) & (samples["checkpoint"] == "epoch_1.pt")
        samples.loc[hit, "blank"] = True
        return samples

    doc = json.loads(invoke("compare", copy_run(tmp_path, "base", clean),
                            copy_run(tmp_path, "cand", blank), "--json").output)
    rows = [r for r in doc["rows"] if r["metric"] == "blank_rate"]
    bad = [(r["candidate_checkpoint"], r["gate_scale"]) for r in rows
           if r["status"] == "regression"]
    assert bad == [("ckpt/epoch_1.pt", 2.0)] and len(rows) > 1
    assert doc["settings"]["margins"]["blank_rate"] == 0.02


def test_a_duplicated_record_is_refused_not_counted_twice(tmp_path: Path) -> None:
    """One line of samples.jsonl repeated would weigh its layout twice (issue 22): exit 2."""
    doubled = copy_run(tmp_path, "d", lambda s: pd.concat([s, s.iloc[[3]]], ignore_index=True))
    result = invoke("compare", GOLDEN / "results.json", doubled)
    assert result.exit_code == 2 and "again (first at line" in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) <= 2


def test_report_renders_a_results_json_without_its_optional_dtype(tmp_path: Path) -> None:
    path = copy_run(tmp_path, "e", edit_results=lambda r: r.pop("dtype"))
    result = invoke("report", path, "--out", tmp_path / "e" / "r.md")
    assert result.exit_code == 0, result.output
    assert "dtype not recorded" in (tmp_path / "e" / "r.md").read_text(encoding="utf-8")
