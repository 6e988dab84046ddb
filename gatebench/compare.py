"""`gatebench compare`: a paired regression gate between two saved runs.

Why paired: both runs generate the SAME layouts with the SAME per-layout seeds, so layout
difficulty cancels when the per-layout difference is resampled; an unpaired comparison of two
confidence intervals would need many times more layouts to see the same drop.

Records (samples.jsonl) are matched on (checkpoint, gate scale, layout id): checkpoints by their
command-line order, or every candidate checkpoint against a single baseline checkpoint. Each
per-image metric is a ratio of per-layout sums (the mean when the denominator is 1), bootstrapped
over layouts. A REGRESSION is a change in the bad direction whose whole CI lies beyond the allowed
margin: noise alone cannot fail the gate, a real drop larger than the margin does. Set-level
metrics (FID, KID, AP) have no per-image records: their point difference is reported, and gated
(point value vs margin, said so in the row) only when ``--metric`` names them.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from gatebench.errors import NotComparableError
from gatebench.files import atomic_write_text
from gatebench.metrics import spec as metric_spec
from gatebench.metrics.paired_sequence import compare_sequences
from gatebench.metrics.regression import change_status
from gatebench.metrics.stats import paired_ratio_bootstrap
from gatebench.rundir.outputs import check_not_input
from gatebench.rundir.pairing import (
    check_comparable,
    comparability_problems,
    gate_scales,
    model_warnings,
    pair_checkpoints,
    run_identity,
    stopped_early,
)
from gatebench.rundir.records import metric_units, records_at
from gatebench.rundir.saved import SavedRun, label_map, load_run

SCHEMA_VERSION = 1
MIN_BOOT = 1000


@dataclass(frozen=True)
class CompareRow:
    """One (checkpoint pair, gate scale, metric) comparison; ``diff`` = candidate - baseline."""

    checkpoint_index: int
    baseline_checkpoint: str
    candidate_checkpoint: str
    gate_scale: float
    metric: str
    direction: str                 # "higher" or "lower" is better
    kind: str                      # "paired" (per-layout records) or "set" (point values)
    baseline: float | None
    candidate: float | None
    diff: float | None
    ci_low: float | None
    ci_high: float | None
    n_pairs: int
    dropped: int                   # layouts present on one side only / NaN on either side
    margin: float | None
    gated: bool
    status: str                    # regression | ok | improved | not gated | not compared
    note: str = ""
    baseline_label: str = ""       # checkpoints as the runs label them (saved_run.row_label)
    candidate_label: str = ""
    # the anytime-valid confidence sequence of the difference (gatebench.sequential.paired):
    # valid however the layouts were stopped; "regression" / "no regression" / None
    seq_low: float | None = None
    seq_high: float | None = None
    seq_decision: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Comparison:
    baseline: dict[str, Any]
    candidate: dict[str, Any]
    rows: list[CompareRow]
    settings: dict[str, Any]
    warnings: list[str] = field(default_factory=list)

    @property
    def regressions(self) -> list[CompareRow]:
        return [r for r in self.rows if r.status == "regression"]

    @property
    def verdict(self) -> str:
        return "regression" if self.regressions else "pass"

    @property
    def exit_code(self) -> int:
        return 1 if self.regressions else 0

    def to_json(self) -> dict[str, Any]:
        return {"schema_version": SCHEMA_VERSION, "comparable": True, "verdict": self.verdict,
                "regressions": len(self.regressions), "baseline": self.baseline,
                "candidate": self.candidate, "settings": self.settings,
                "warnings": list(self.warnings), "rows": [r.to_dict() for r in self.rows]}


def direction(metric: str) -> str:
    return "higher" if metric_spec.higher_is_better(metric) else "lower"


def load_baseline(path: Path, out_dir: Path) -> SavedRun:
    """`run --baseline`: the baseline read and checked before hours of generation, not after;
    the run's results.json / samples.jsonl may not replace the baseline's."""
    base = load_run(path)
    check_not_input(out_dir / "results.json", [base.path])
    check_not_input(out_dir / "samples.jsonl", [base.folder / "samples.jsonl"])
    return base


def regression_gate(baseline: SavedRun, candidate: SavedRun,
                    margins: dict[str, float | None] | None = None,
                    verdict_path: Path | None = None) -> Comparison:
    """The regression gate of `compare` and `run --baseline`: the comparison, with its verdict
    document written to ``verdict_path`` (never onto an input). When the runs are not
    comparable the document says why (CI reads it) and the NotComparableError is re-raised."""
    if verdict_path is not None:
        check_not_input(verdict_path, [baseline.path, candidate.path,
                                       baseline.folder / "samples.jsonl",
                                       candidate.folder / "samples.jsonl"])
    try:
        comparison = compare_runs(baseline, candidate, margins)
    except NotComparableError as exc:
        if verdict_path is not None:
            reasons = comparability_problems(baseline.results, candidate.results) or [exc.message]
            write_verdict(not_comparable_json(baseline.path, candidate.path, reasons),
                          verdict_path)
        raise
    if verdict_path is not None:
        write_verdict(comparison.to_json(), verdict_path)
    return comparison


def not_comparable_json(baseline: Path, candidate: Path, reasons: Sequence[str]) -> dict[str, Any]:
    """The verdict document for exit code 2 (CI can still read why)."""
    return {"schema_version": SCHEMA_VERSION, "comparable": False, "verdict": "not_comparable",
            "baseline": {"results": str(baseline)}, "candidate": {"results": str(candidate)},
            "reasons": list(reasons)}


def write_verdict(document: dict[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(path, json.dumps(document, indent=2, ensure_ascii=False))


def _check_samples(run: SavedRun) -> None:
    names = list(label_map(run.results).values())
    where = run.folder / "samples.jsonl"
    if run.samples.empty or not {"layout_id", "gate_scale"} <= set(run.samples.columns):
        raise NotComparableError("expected per-sample records with layout_id and gate_scale, "
                                 "got none", path=where)
    if len(set(names)) != len(names):
        raise NotComparableError(f"expected distinct checkpoint labels, got {names} (an older "
                                 f"run's samples.jsonl names checkpoints by file name)", path=where)
    if len(names) > 1 and "checkpoint" not in run.samples.columns:
        raise NotComparableError(f"expected a checkpoint column for {len(names)} checkpoints, "
                                 f"got none", path=where)
    # (a record repeated in samples.jsonl is refused where the file is read: rundir/samples.py)


def paired_ratio_diff(cand: pd.DataFrame, base: pd.DataFrame, *, n_boot: int, level: float,
                      seed: int) -> tuple[float, float, float, float | None, float | None]:
    """(candidate, baseline, diff, ci_low, ci_high) of sum(num)/sum(den), layouts resampled as
    pairs: ``stats.paired_ratio_bootstrap`` over per-layout unit frames (``metric_units``)."""
    r = paired_ratio_bootstrap(cand["num"].to_numpy(), base["num"].to_numpy(),
                               cand["den"].to_numpy(), base["den"].to_numpy(),
                               n_boot=n_boot, level=level, seed=seed)
    assert r.a_value is not None and r.b_value is not None
    return r.a_value, r.b_value, r.diff, r.ci_low, r.ci_high


def _status(metric: str, diff: float | None, low: float | None, high: float | None,
            margin: float | None) -> str:
    """The regression rule (metrics.regression) on the whole CI, or without one on the point."""
    if diff is None:
        return "not compared"
    if margin is None:
        return "not gated"
    if low is None or high is None:
        low = high = diff
    return change_status(metric, low, high, margin)


def _results_row(results: dict[str, Any], checkpoint: str, scale: float) -> dict[str, Any] | None:
    for row in results["results"]:
        if str(row["checkpoint"]) == checkpoint and np.isclose(float(row["gate_scale"]), scale):
            return row
    return None


def compare_runs(baseline: SavedRun, candidate: SavedRun,
                 metrics: dict[str, float | None] | None = None,
                 n_boot: int | None = None) -> Comparison:
    """The whole comparison. ``metrics``: ``parse_metric_options`` output (overrides defaults)."""
    base, cand = baseline.results, candidate.results
    check_comparable(base, cand)
    _check_samples(baseline)
    _check_samples(candidate)
    chosen = dict(metrics or {})
    scoring = cand["protocol"].get("scoring", {})
    n_boot = n_boot or max(MIN_BOOT, int(scoring.get("bootstrap", MIN_BOOT)))
    level, seed = float(scoring.get("ci_level", 0.95)), int(cand["seed"])
    warnings = model_warnings(base, cand)
    b_scales, c_scales = gate_scales(base), gate_scales(cand)
    scales = sorted(set(b_scales) & set(c_scales))
    if set(b_scales) != set(c_scales):
        warnings.append(f"gate scales compared: {scales}; only in one run: "
                        f"{sorted(set(b_scales) ^ set(c_scales))}")
    b_labels, c_labels = label_map(base), label_map(cand)    # {path: label}, in run order
    seen: dict[str, set[str]] = {m: set() for m in chosen}
    rows: list[CompareRow] = []
    pairs: dict[int, tuple[pd.DataFrame, pd.DataFrame]] = {}
    for run, side in ((baseline, "baseline"), (candidate, "candidate")):
        if stopped_early(run.results):
            seq = run.results["sequential"]
            warnings.append(f"the {side} stopped at {seq['n_layouts']} of {seq['max_layouts']} "
                            f"layouts (--until-decided: {seq['reason']}); compared on those")
    for index, b_ck, c_ck in pair_checkpoints(list(b_labels), list(c_labels)):
        for scale in scales:
            if scale == 0.0 and index > 0:
                continue   # scale 0 is the base model, shared by every checkpoint: once is enough
            b_df = records_at(baseline.samples, b_labels[b_ck], scale)
            c_df = records_at(candidate.samples, c_labels[c_ck], scale)
            b_ids, c_ids = set(b_df["layout_id"].astype(str)), set(c_df["layout_id"].astype(str))
            if not b_ids or not c_ids:
                which, label = (baseline, b_labels[b_ck]) if not b_ids else (candidate, c_labels[c_ck])
                raise NotComparableError(f"expected per-sample records of {label} at gate scale "
                                         f"{scale:g}, got none", path=which.folder / "samples.jsonl")
            short = _stopped_side(baseline, candidate, b_ids, c_ids)
            if short is not None:     # a run stopped early pairs on the layouts it generated
                b_df = b_df[b_df["layout_id"].astype(str).isin(short)]
                c_df = c_df[c_df["layout_id"].astype(str).isin(short)]
                b_ids = c_ids = set(short)
            if b_ids != c_ids:
                odd = sorted(b_ids ^ c_ids)
                raise NotComparableError(
                    f"expected the same layouts at gate scale {scale:g} in both samples.jsonl, "
                    f"got {len(b_ids)} and {len(c_ids)} (only in one: {', '.join(odd[:3])})",
                    path=candidate.folder / "samples.jsonl")
            for metric in metric_spec.IMAGE_METRICS:
                b_units, c_units = metric_units(b_df, metric), metric_units(c_df, metric)
                margin = chosen.get(metric, metric_spec.DEFAULT_MARGINS.get(metric))
                common = (b_units is not None, c_units is not None)
                if not any(common):
                    continue
                if metric in seen:
                    seen[metric].update(s for s, ok in zip(("baseline", "candidate"), common, strict=True)
                                        if ok)
                rows.append(_paired_row(index, b_ck, c_ck, scale, metric, b_units, c_units,
                                        margin, n_boot=n_boot, level=level, seed=seed))
                if b_units is not None and c_units is not None:
                    both = b_units.index.intersection(c_units.index)
                    pairs[len(rows) - 1] = (c_units.loc[both], b_units.loc[both])
            for metric in metric_spec.SET_METRICS:
                b_row, c_row = _results_row(base, b_ck, scale), _results_row(cand, c_ck, scale)
                b_val = ((b_row or {}).get("metrics", {}).get(metric) or {}).get("value")
                c_val = ((c_row or {}).get("metrics", {}).get(metric) or {}).get("value")
                if b_val is None and c_val is None:
                    continue
                if metric in seen:
                    seen[metric].update(s for s, v in (("baseline", b_val), ("candidate", c_val))
                                        if v is not None)
                margin = chosen.get(metric) if metric in chosen else None
                diff = None if b_val is None or c_val is None else float(c_val) - float(b_val)
                status = _status(metric, diff, None, None, margin)
                note = "set-level: point values, no paired CI" + (
                    "; gated on the point difference (--metric)" if margin is not None else "")
                if diff is None:
                    note = f"only in the {'baseline' if c_val is None else 'candidate'}"
                rows.append(CompareRow(index, b_ck, c_ck, scale, metric, direction(metric), "set",
                                       b_val, c_val, diff, None, None, 0, 0, margin,
                                       margin is not None, status, note))
    for metric, sides in seen.items():
        if sides != {"baseline", "candidate"}:
            got = "neither run" if not sides else f"only the {sides.pop()}"
            raise NotComparableError(f"expected --metric {metric} in both runs, got it in {got}",
                                     hint="drop that --metric or score both runs with it")
    for row in rows:
        if row.status == "not compared" and row.gated:
            warnings.append(f"{row.metric} at gate scale {row.gate_scale:g}: {row.note}")
    rising = ", ".join(metric_spec.LOWER_IS_BETTER)
    settings = {"n_boot": n_boot, "ci_level": level, "seed": seed, "resampling_unit": "layout",
                "margins": {m: chosen.get(m, metric_spec.DEFAULT_MARGINS.get(m))
                            for m in metric_spec.IMAGE_METRICS}
                | {m: chosen.get(m) for m in metric_spec.SET_METRICS},
                "rule": "regression when the whole CI of candidate - baseline lies beyond the "
                        f"margin on the bad side (a rise for {rising})"}
    alpha = float(scoring.get("decision_alpha", 0.05))
    sequences = compare_sequences(pairs, rows, seed=seed, alpha=alpha)
    rows = [replace(r, seq_low=s.lower, seq_high=s.upper, seq_decision=s.decision)
            if (s := sequences.get(i)) is not None else r for i, r in enumerate(rows)]
    settings["sequences"] = {
        "alpha": alpha, "rows": len(sequences),
        "split": f"Bonferroni: alpha / {len(sequences)} for each gated paired row at a non-zero "
                 f"gate scale" if sequences else "no gated paired row"}
    rows = [replace(r, baseline_label=b_labels[r.baseline_checkpoint],
                    candidate_label=c_labels[r.candidate_checkpoint]) for r in rows]
    return Comparison(run_identity(baseline), run_identity(candidate), rows, settings, warnings)


def _stopped_side(baseline: SavedRun, candidate: SavedRun, b_ids: set[str],
                  c_ids: set[str]) -> set[str] | None:
    """The layouts of the side that stopped early, when the other holds them all."""
    for run, mine, other in ((candidate, c_ids, b_ids), (baseline, b_ids, c_ids)):
        if stopped_early(run.results) and mine < other:
            return mine
    return None


def _paired_row(index: int, b_ck: str, c_ck: str, scale: float, metric: str,
                b_units: pd.DataFrame | None, c_units: pd.DataFrame | None,
                margin: float | None, *, n_boot: int, level: float, seed: int) -> CompareRow:
    if b_units is None or c_units is None:
        side = "baseline" if c_units is None else "candidate"
        return CompareRow(index, b_ck, c_ck, scale, metric, direction(metric), "paired",
                          None, None, None, None, None, 0, 0, margin, margin is not None,
                          "not compared", f"recorded only in the {side}")
    joined = b_units.join(c_units, how="inner", lsuffix="_b", rsuffix="_c")
    joined = joined[np.isfinite(joined.to_numpy()).all(axis=1)]
    dropped = len(set(b_units.index) ^ set(c_units.index)) + (
        len(set(b_units.index) & set(c_units.index)) - len(joined))
    if joined.empty or joined["den_b"].sum() <= 0 or joined["den_c"].sum() <= 0:
        return CompareRow(index, b_ck, c_ck, scale, metric, direction(metric), "paired",
                          None, None, None, None, None, 0, dropped, margin, margin is not None,
                          "not compared", "no layout recorded on both sides")
    c_val, b_val, diff, low, high = paired_ratio_diff(
        joined[["num_c", "den_c"]].set_axis(["num", "den"], axis=1),
        joined[["num_b", "den_b"]].set_axis(["num", "den"], axis=1),
        n_boot=n_boot, level=level, seed=seed)
    note = "" if low is not None else "fewer than 2 layouts: point difference vs margin, no CI"
    return CompareRow(index, b_ck, c_ck, scale, metric, direction(metric), "paired", b_val,
                      c_val, diff, low, high, len(joined), dropped, margin, margin is not None,
                      _status(metric, diff, low, high, margin), note)
