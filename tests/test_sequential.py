"""`run --until-decided` (issue 23): the decision rule on synthetic records, and the shapes
world stopping the deadlocked checkpoint at FAIL early while the good one keeps its fixed-N
verdict. The confidence-sequence maths is tested in test_confseq.py."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from gatebench.cli import cli
from gatebench.metrics.paired_sequence import decision_order
from gatebench.protocol import Target
from gatebench.sequential.decide import RunCell, decide_verdict, round_sizes
from tests.builders import assert_same_metrics

CELL = RunCell("/x/epoch_3.pt", "epoch_3.pt", 1.0)
IOU = Target("iou50_rate", ">=", 0.6, (1.0,))
CLIP = Target("clip_score", ">", 0.25, (1.0,))
FID = Target("fid", "<", 30.0, (1.0,))
LIFT = Target("effect_lift", ">", 1.5, (1.0,))


def _samples(n: int, match: float, seed: int = 0, boxes: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    scorable = rng.integers(1, boxes + 1, n)
    matched = rng.binomial(scorable, match)
    return pd.DataFrame({"checkpoint": CELL.label, "gate_scale": 1.0,
                         "layout_id": [f"l{i:03d}" for i in range(n)],
                         "n_scorable": scorable, "n_matched": matched,
                         "clip_score": rng.uniform(0.5, 0.7, n), "effect_lift": 3.0})


def _decide(samples: pd.DataFrame, targets, n: int | None = None, nonfinite=None):
    ids = list(samples["layout_id"])[: n or len(samples)]
    return decide_verdict(samples[samples["layout_id"].isin(ids)], ids, targets, [CELL],
                          alpha=0.05, max_boxes=3, nonfinite=nonfinite or {})


def test_the_order_is_a_pure_function_of_seed_and_ids() -> None:
    ids = [f"l{i}" for i in range(40)]
    order = decision_order(ids, 7)
    assert order == decision_order(list(reversed(ids)), 7) and sorted(order) == sorted(ids)
    assert order != decision_order(ids, 8) and order != ids
    larger = decision_order(ids + [f"m{i}" for i in range(20)], 7)
    assert [i for i in larger if i in set(ids)] == order      # a larger N keeps the order
    assert round_sizes(20, 8) == [8, 16, 20] and round_sizes(16, 8) == [8, 16]


def test_a_deadlocked_rate_is_decided_fail_within_a_few_rounds() -> None:
    samples = _samples(48, match=0.1)
    first = next(n for n in (8, 16, 24, 32, 40, 48)
                 if _decide(samples, [IOU, CLIP], n).decided is not None)
    decision = _decide(samples, [IOU, CLIP], first)
    assert decision.decided == "fail" and first <= 24, first
    row = next(r for r in decision.rows if r.metric == "iou50_rate")
    assert row.decision == "fail" and row.upper < 0.6 and "upper bound" in decision.reason
    assert decision.decisions == 2 and decision.alpha_each == pytest.approx(0.025)


def test_a_clear_pass_needs_every_target_and_waits_for_set_level_ones() -> None:
    samples = _samples(48, match=0.97, seed=1)
    assert _decide(samples, [IOU, CLIP]).decided == "pass"
    waiting = _decide(samples, [IOU, CLIP, FID])
    assert waiting.decided is None and "set-level" in waiting.reason
    fid = next(r for r in waiting.rows if r.metric == "fid")
    assert not fid.decidable and fid.lower is None
    assert waiting.decisions == 2        # FID takes no share of alpha
    unbounded = _decide(samples, [IOU, LIFT])
    assert unbounded.decided is None and "unbounded" in next(
        r.why for r in unbounded.rows if r.metric == "effect_lift")


def test_a_fail_does_not_wait_for_set_level_targets() -> None:
    assert _decide(_samples(48, match=0.05), [IOU, FID], 24).decided == "fail"


def test_nonfinite_images_and_orphan_targets_decide_fail_at_once() -> None:
    samples = _samples(8, match=0.97)
    assert _decide(samples, [IOU], nonfinite={(CELL.checkpoint, 1.0): 1}).decided == "fail"
    orphan = Target("iou50_rate", ">=", 0.6, (3.0,))
    assert _decide(samples, [IOU, orphan]).decided == "fail"


def test_a_value_outside_the_metrics_range_is_never_decided() -> None:
    samples = _samples(16, match=0.9)
    samples["clip_score"] = 1.7           # a foreign CLIP's cosine * 100, say: not [0, 1]
    row = next(r for r in _decide(samples, [CLIP]).rows)
    assert row.decision is None and not row.decidable and "no confidence sequence" in row.why


def test_an_image_that_does_not_count_is_a_unit_without_information() -> None:
    samples = _samples(24, match=0.1)
    empty = samples.copy()
    empty.loc[::2, ["n_scorable", "n_matched"]] = 0
    full, thinned = _decide(samples, [IOU]).rows[0], _decide(empty, [IOU]).rows[0]
    assert thinned.n == full.n == 24
    assert thinned.upper >= full.upper     # less information, never a tighter bound


# -- the shapes world ---------------------------------------------------------------------

def _world_run(tmp_path: Path, name: str, *extra: str) -> dict:
    out = tmp_path / name
    result = CliRunner().invoke(cli, ["run", "--protocol", "shapes", "--num-samples", "48",
                                      "--device", "cpu", "--out", str(out), *extra])
    assert result.exit_code in (0, 1), result.output
    return json.loads((out / "results.json").read_text(encoding="utf-8")) | {
        "_output": result.output, "_code": result.exit_code}


def _asset(name: str) -> str:
    from gatebench.protocol import resolve_builtin
    return resolve_builtin(f"builtin:adapters/{name}")


def test_the_world_decides_the_deadlocked_checkpoint_fail_early(tmp_path: Path) -> None:
    results = _world_run(tmp_path, "deadlock", "--ckpt", _asset("deadlock/deadlock_step_50.pt"),
                         "--until-decided")
    seq = results["sequential"]
    assert seq["decided"] == "fail" and seq["stopped_early"] and seq["n_layouts"] <= 24, seq
    assert results["n_layouts"] == seq["n_layouts"] and results["max_layouts"] == 48
    assert results["verdict"] == "fail" and results["_code"] == 1
    assert "iou50_rate" in seq["reason"] and f"after {seq['n_layouts']} layouts" in seq["reason"]
    assert f"stopped at {seq['n_layouts']} of 48 layouts" in results["_output"]
    # the same seed stops at the same layout with the same bounds (its images now cached)
    again = _world_run(tmp_path, "deadlock", "--ckpt", _asset("deadlock/deadlock_step_50.pt"),
                       "--until-decided")
    assert again["sequential"] == seq and again["generation"]["generated"] == 0


@pytest.mark.slow
def test_the_world_keeps_the_good_checkpoints_fixed_n_verdict(tmp_path: Path) -> None:
    good = _asset("good/good_step_4000.pt")
    sequential = _world_run(tmp_path, "seq", "--ckpt", good, "--until-decided")
    fixed = _world_run(tmp_path, "fixed", "--ckpt", good)
    assert sequential["verdict"] == fixed["verdict"] and sequential["_code"] == fixed["_code"]
    # the fixed-N run into the sequential run's folder makes no image again
    again = _world_run(tmp_path, "seq", "--ckpt", good)
    assert again["generation"]["generated"] == 0
    assert_same_metrics(again["results"], fixed["results"])   # writes: batched differently
    seq = sequential["sequential"]
    assert seq["reason"] and (seq["decided"] is not None or seq["n_layouts"] == 48)
    if seq["n_layouts"] == 48:     # ran to N: the very numbers of the fixed-N run
        assert_same_metrics(sequential["results"], fixed["results"])
        assert "ran to N" in sequential["_output"] or "no verdict decided" in seq["reason"]


# -- the regression gate ---------------------------------------------------------------------

def _units(match: float, n: int, seed: int, den: np.ndarray | None = None) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    den = rng.integers(1, 4, n).astype(float) if den is None else den
    return pd.DataFrame({"num": rng.binomial(den.astype(int), match).astype(float), "den": den},
                        index=[f"l{i:03d}" for i in range(n)])


def test_a_clear_paired_regression_is_decided_and_noise_is_not() -> None:
    from gatebench.metrics.paired_sequence import paired_sequence

    base = _units(0.85, 96, 0)
    worse = _units(0.10, 96, 1, den=base["den"].to_numpy())
    ids = list(base.index)
    first = next(n for n in range(8, 97, 8) if paired_sequence(
        worse, base, ids[:n], "iou50_rate", 0.02, 0.05 / 4, 3).decision is not None)
    seq = paired_sequence(worse, base, ids[:first], "iou50_rate", 0.02, 0.05 / 4, 3)
    assert seq.decision == "regression" and seq.upper < -0.02 and first <= 64, first
    same = paired_sequence(base, base, ids, "iou50_rate", 0.02, 0.05 / 4, 3)
    assert same.decision is None and same.lower < 0 < same.upper   # 96 layouts: not yet sure
    lower_better = paired_sequence(worse.assign(num=worse["den"] - worse["num"]),
                                   base.assign(num=base["den"] - base["num"]), ids,
                                   "garbled_rate", 0.02, 0.05 / 4, 1)
    assert lower_better.why      # garbled_rate is per image: a denominator above 1 is refused


def test_paired_sequences_need_the_same_denominators() -> None:
    from gatebench.metrics.paired_sequence import paired_sequence

    base, other = _units(0.8, 24, 0), _units(0.8, 24, 5)
    seq = paired_sequence(other, base, list(base.index), "iou50_rate", 0.02, 0.05, 3)
    assert seq.decision is None and "denominators differ" in seq.why


def _stopped_copy(tmp_path: Path, keep: int) -> Path:
    """The golden run as if `--until-decided` had stopped it after ``keep`` layouts."""
    import shutil

    from gatebench.rundir.samples import read_samples_jsonl, write_samples_jsonl

    golden = Path(__file__).parent / "data" / "golden" / "run"
    folder = tmp_path / "stopped"
    shutil.copytree(golden, folder)
    results = json.loads((folder / "results.json").read_text(encoding="utf-8"))
    samples = read_samples_jsonl(folder / "samples.jsonl")
    ids = sorted(samples["layout_id"].astype(str).unique())[:keep]
    write_samples_jsonl(samples[samples["layout_id"].astype(str).isin(ids)],
                        folder / "samples.jsonl")
    results.update(max_layouts=results["n_layouts"], n_layouts=keep,
                   max_layout_ids_sha256=results["layout_ids_sha256"],
                   layout_ids_sha256="0" * 64)
    results["sequential"] = {
        "alpha": 0.05, "alpha_each": 0.05, "decisions": 1, "split": "Bonferroni: alpha / 1",
        "round_layouts": keep, "n_layouts": keep, "max_layouts": results["max_layouts"],
        "stopped_early": True, "decided": "fail", "reason": "a test's stop", "order": "test",
        "set_level": [], "rounds": [{"n_layouts": keep, "decided": "fail"}], "rows": []}
    (folder / "results.json").write_text(json.dumps(results), encoding="utf-8")
    return folder / "results.json"


def test_compare_pairs_a_stopped_run_on_the_layouts_it_generated(tmp_path: Path) -> None:
    golden = Path(__file__).parent / "data" / "golden" / "run" / "results.json"
    n_all = json.loads(golden.read_text(encoding="utf-8"))["n_layouts"]
    stopped = _stopped_copy(tmp_path, n_all - 2)
    result = CliRunner().invoke(cli, ["compare", str(golden), str(stopped), "--json"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.output)
    assert any(f"stopped at {n_all - 2} of {n_all}" in w for w in document["warnings"])
    paired = [r for r in document["rows"] if r["kind"] == "paired" and r["n_pairs"]]
    assert paired and all(r["n_pairs"] == n_all - 2 for r in paired)
    gated = [r for r in paired if r["gated"] and r["gate_scale"] != 0]
    assert gated and all(r["seq_low"] <= 0 <= r["seq_high"] for r in gated)  # identical images
    assert document["settings"]["sequences"]["rows"] == len(gated)
    text = CliRunner(env={"COLUMNS": "250"}).invoke(cli, ["compare", str(golden), str(stopped)]).output
    assert "anytime-valid" in text and "stopped at" in text


@pytest.mark.slow
def test_run_with_a_baseline_stops_at_a_clear_regression(tmp_path: Path) -> None:
    """The good checkpoint as the baseline, the deadlocked one as the candidate."""
    base = _world_run(tmp_path, "base", "--ckpt", _asset("good/good_step_4000.pt"))
    assert base["verdict"] == "pass"
    cand = _world_run(tmp_path, "cand", "--ckpt", _asset("deadlock/deadlock_step_50.pt"),
                      "--until-decided", "--baseline", str(tmp_path / "base" / "results.json"))
    seq = cand["sequential"]
    assert seq["decided"] == "fail" and seq["stopped_early"] and cand["_code"] == 1
    assert seq["regression_rows"] and seq["decisions"] > 4      # targets + gate rows share alpha
    compare = json.loads((tmp_path / "cand" / "compare.json").read_text(encoding="utf-8"))
    assert compare["verdict"] == "regression"


def test_a_target_whose_model_is_not_configured_fails_at_once() -> None:
    samples = _samples(8, match=0.97)
    decision = decide_verdict(samples, list(samples["layout_id"]), [IOU, CLIP], [CELL],
                              alpha=0.05, max_boxes=3, nonfinite={},
                              unavailable={"iou50_rate": "no detector or detections configured"})
    assert decision.decided == "fail" and "no detector" in decision.reason
    assert decision.decisions == 1            # it takes no share of alpha: nothing to estimate
