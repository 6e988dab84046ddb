"""One verdict per run (issue 27): results.json records it with its parts, and the terminal,
report.md, LaTeX, HTML, compare.json and the exit code all say the same, fixed-N and
`--until-decided`, with and without a baseline. Before, a fixed-N `run --baseline` with a
regression exited 1 and wrote "Verdict: FAIL" in report.md while results.json said "pass"."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from gatebench.cli import cli
from gatebench.rundir.results import decide_verdict
from tests.run_builders import tiny_world, write_protocol

CLEAN_THRESHOLD = "1e-9"   # every image whose pixels moved at all counts as garbled


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny world with one target that passes (no detector: no iou50 target)."""
    found = tiny_world(tmp_path_factory.mktemp("verdict"))
    protocol = write_protocol(found["root"], found["base"], found["layouts"])
    text = protocol.read_text(encoding="utf-8")
    iou = text.index('[[targets]]\nmetric = "iou50_rate"')
    protocol.write_text(text[:iou], encoding="utf-8")
    return found


def _run(world: dict[str, Path], out: Path, *extra: str) -> tuple[int, str]:
    done = CliRunner(env={"COLUMNS": "200"}).invoke(cli, [
        "run", "--ckpt", str(world["ckpt"]), "--protocol", str(world["protocol"]), "--device",
        "cpu", "--garbled-threshold", CLEAN_THRESHOLD, "--out", str(out), *extra])
    assert done.exit_code in (0, 1), done.output
    return done.exit_code, done.output


def _cleaner_baseline(run: Path, to: Path) -> Path:
    """A copy of ``run`` whose every image is clean: the run itself regresses against it."""
    shutil.copytree(run, to, ignore=shutil.ignore_patterns("images"))
    rows = [json.loads(line) for line in (to / "samples.jsonl").read_text().splitlines()]
    (to / "samples.jsonl").write_text("".join(json.dumps(r | {"garbled": False}) + "\n"
                                              for r in rows))
    return to / "results.json"


def _outputs_agree(out: Path, code: int, terminal: str) -> str:
    """Every output of one run says the verdict results.json records; returns it."""
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    verdict = results["verdict"]
    assert verdict in ("pass", "fail") and set(results["verdict_parts"]) >= {"targets", "gates"}
    assert code == (1 if verdict == "fail" else 0)
    assert bool(results["verdict_reasons"]) == (verdict == "fail")
    assert re.findall(r"verdict: (PASS|FAIL)", terminal) == [verdict.upper()]
    report = (out / "report.md").read_text(encoding="utf-8")
    assert re.findall(r"\*\*Verdict: (PASS|FAIL)\*\*", report) == [verdict.upper()]
    for fmt, pattern in (("latex", r"% verdict (pass|fail);"),
                         ("html", r"Verdict: (PASS|FAIL)")):
        target = out / f"again.{fmt}"
        assert CliRunner().invoke(cli, ["report", str(out / "results.json"), "--format", fmt,
                                        "--out", str(target)]).exit_code == 0
        found = re.findall(pattern, target.read_text(encoding="utf-8"))
        assert found and {v.lower() for v in found} == {verdict}, (fmt, found)
    return verdict


@pytest.mark.parametrize("mode", [(), ("--until-decided",)], ids=["fixed-n", "until-decided"])
def test_every_output_says_the_one_verdict(world, tmp_path: Path, mode: tuple[str, ...]) -> None:
    code, terminal = _run(world, tmp_path / "plain", *mode)
    assert _outputs_agree(tmp_path / "plain", code, terminal) == "pass"
    baseline = _cleaner_baseline(tmp_path / "plain", tmp_path / "baseline")
    code, terminal = _run(world, tmp_path / "cand", *mode, "--baseline", str(baseline))
    assert _outputs_agree(tmp_path / "cand", code, terminal) == "fail"
    results = json.loads((tmp_path / "cand" / "results.json").read_text(encoding="utf-8"))
    regression = results["verdict_parts"]["regression"]
    assert regression["status"] == "fail" and "garbled_rate" in regression["reason"]
    assert any("garbled_rate" in r for r in results["verdict_reasons"])
    assert "because regression vs the baseline: garbled_rate" in terminal
    compare = json.loads((tmp_path / "cand" / "compare.json").read_text(encoding="utf-8"))
    assert compare["verdict"] == "regression"
    report = (tmp_path / "cand" / "report.md").read_text(encoding="utf-8")
    assert "regression check fail: regression vs the baseline: garbled_rate" in report


def test_the_rule_fails_on_any_failed_part_and_never_on_a_warning() -> None:
    ok = [{"metric": "clip_score", "passed": True}]
    bad = [{"metric": "iou50_rate", "passed": False}]
    assert decide_verdict(ok, "warn")["verdict"] == "pass"
    assert decide_verdict(bad, "pass")["reasons"] == ["0 of 1 targets pass (failing: iou50_rate)"]
    assert decide_verdict(ok, "fail")["verdict"] == "fail"
    assert decide_verdict([], "pass", sequential={"decided": "fail", "reason": "r"})["reasons"] == ["r"]
    assert decide_verdict(ok, "pass", sequential={"decided": None})["verdict"] == "pass"
    regressed = {"verdict": "regression", "rows": [
        {"status": "regression", "metric": "miou", "gate_scale": 1.0, "diff": -0.2}]}
    decision = decide_verdict(ok, "pass", regression=regressed)
    assert decision["verdict"] == "fail" and "miou at gate scale 1 (-0.2)" in decision["reasons"][0]
    assert decide_verdict(ok, "pass", regression={"verdict": "pass", "rows": []})["verdict"] == "pass"
    refused = decide_verdict(ok, "pass", regression={"verdict": "not_comparable",
                                                     "reasons": ["another seed"]})
    assert refused["verdict"] == "fail" and "another seed" in refused["reasons"][0]
