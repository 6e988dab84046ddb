"""Whether a run's verdict is decided, from anytime-valid confidence sequences over its layouts.

Why: a fixed-N bootstrap CI may not be peeked at; a confidence sequence (CS) holds at every n at
once, so the run may stop the moment the sequences decide, with the stated error rate intact.

- The unit is the layout, never the box: for a target's metric at one (checkpoint, gate scale),
  layout i contributes its image's (numerator, denominator) by the metric table's rule
  (``spec.units``); the CS is of the ratio of their sums (a mean when the denominator is one per
  image), bounded by the metric's ``value_range`` and the largest box count of the run's layouts.
  An image that does not count (no scorable box, value not recorded) is a unit with denominator
  0: it carries no information and keeps the time index honest.
- The error rate is split by Bonferroni: each of the K (target, checkpoint, gate scale) rows a
  sequence can decide gets a two-sided CS at alpha / K, so the chance that ANY of them ever
  misses its true value, at any stopping time, is at most alpha.
- The verdict is decided FAIL as soon as one row's CS lies wholly on the failing side (or an
  image has NaN/Inf pixels); PASS only when every target row's CS lies on the passing side.
  Set-level metrics (FID, KID, AP) and unbounded ones have no CS: a PASS that needs them waits
  for N; a FAIL elsewhere does not wait for them.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from gatebench.metrics import confseq
from gatebench.metrics import spec as metric_spec
from gatebench.protocol import Target
from gatebench.rundir.records import metric_units, records_at


def round_sizes(total: int, per_round: int) -> list[int]:
    """Cumulative layout counts after each round: per_round, 2 per_round, ..., total."""
    return list(range(per_round, total, per_round)) + [total]


@dataclass(frozen=True)
class RowSequence:
    """One (target, checkpoint, gate scale): its sequence's bounds now and what they decide."""

    checkpoint: str
    gate_scale: float | None
    metric: str
    op: str
    threshold: float
    lower: float | None
    upper: float | None
    n: int
    decision: str | None          # "pass" | "fail" | None (undecided)
    decidable: bool               # a CS exists for this row (per-image, bounded metric)
    why: str = ""                 # why it is not decidable, or what decided it

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Decision:
    decided: str | None           # "pass" | "fail" | None
    reason: str
    rows: tuple[RowSequence, ...]
    alpha: float
    decisions: int                # K: the rows a sequence can decide (Bonferroni's divisor)

    @property
    def alpha_each(self) -> float:
        return confseq.split_alpha(self.alpha, self.decisions) if self.decisions else self.alpha

    def split_text(self) -> str:
        return (f"Bonferroni: alpha / {self.decisions} for each of the {self.decisions} "
                f"rows a sequence can decide (target or regression-gate row, checkpoint, "
                f"gate scale)")


@dataclass(frozen=True)
class RunCell:
    """A checkpoint x gate scale of the run: the label its samples carry, its path."""

    checkpoint: str               # the path, as results rows name it
    label: str                    # samples.jsonl's checkpoint column
    gate_scale: float


def _why_not(metric: str) -> str:
    spec = metric_spec.get(metric)
    if spec is None or spec.level == "set":
        return "set-level: a pass waits for N; a fail elsewhere does not wait for it"
    if spec.value_range is None:
        return "unbounded per-image values: no confidence sequence; a pass waits for N"
    return ""


def _units(frame: pd.DataFrame, metric: str, order: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Per layout, in ``order``: the (numerator, denominator) the metric aggregates by (compare's
    per-layout units); a layout without a counting image is (0, 0)."""
    by_layout = metric_units(frame, metric)
    if by_layout is None:
        return np.zeros(len(order)), np.zeros(len(order))
    num = by_layout["num"].reindex(order).fillna(0.0).to_numpy(float)
    den = by_layout["den"].reindex(order).fillna(0.0).to_numpy(float)
    return num, den


def _row(cell: RunCell, target: Target, frame: pd.DataFrame, order: Sequence[str],
         alpha_each: float, max_boxes: int) -> RowSequence:
    spec = metric_spec.METRICS[target.metric]
    assert spec.ratio is not None and spec.value_range is not None
    low, high = spec.value_range
    num, den = _units(frame, target.metric, order)
    limit = spec.ratio.max_denominator(max_boxes)
    base: dict[str, Any] = dict(checkpoint=cell.checkpoint, gate_scale=cell.gate_scale,
                                metric=target.metric, op=target.op, threshold=target.threshold,
                                n=len(order))
    if not len(order) or not den.any():
        return RowSequence(**base, lower=None, upper=None, decision=None, decidable=True,
                           why="nothing measured yet")
    try:
        bounds = confseq.ratio_sequence(num, den, alpha_each, low, high, max(limit, 1))
    except ValueError as exc:   # a value outside the metric's stated range: never guess
        return RowSequence(**base, lower=None, upper=None, decision=None, decidable=False,
                           why=f"no confidence sequence: {exc}")
    lower, upper = bounds.at_end()
    return RowSequence(**base, lower=lower, upper=upper, decidable=True,
                       decision=confseq.decide(lower, upper, target.op, target.threshold))


def decide_verdict(samples: pd.DataFrame, order: Sequence[str], targets: Sequence[Target],
                   cells: Sequence[RunCell], *, alpha: float, max_boxes: int,
                   nonfinite: Mapping[tuple[str, float], int],
                   other_decisions: int = 0,
                   unavailable: Mapping[str, str] | None = None) -> Decision:
    """The decision after the layouts ``order`` (generated so far, in order) were scored.

    ``samples``: the per-image records of those layouts (checkpoint label, gate_scale,
    layout_id, metric columns); ``nonfinite``: NaN/Inf image counts per (checkpoint, scale);
    ``other_decisions``: sequences decided beside the targets (the regression gate's rows),
    which take their share of alpha; ``unavailable``: metric -> why it can never be computed in
    this run (its model is not configured), which fails its targets at once.
    """
    missing = dict(unavailable or {})
    applied = [(t, c) for t in targets for c in cells if t.applies_to(c.gate_scale)]
    decidable = [(t, c) for t, c in applied if not _why_not(t.metric)
                 and t.metric not in missing]
    k = max(len(decidable) + other_decisions, 1)
    alpha_each = confseq.split_alpha(alpha, k)
    rows: list[RowSequence] = []
    for target, cell in applied:
        if target.metric in missing:     # a target on a number nobody can measure fails
            rows.append(RowSequence(cell.checkpoint, cell.gate_scale, target.metric, target.op,
                                    target.threshold, None, None, len(order), "fail", True,
                                    f"not computed: {missing[target.metric]}"))
            continue
        why = _why_not(target.metric)
        if why:
            rows.append(RowSequence(cell.checkpoint, cell.gate_scale, target.metric, target.op,
                                    target.threshold, None, None, len(order), None, False, why))
            continue
        rows.append(_row(cell, target, records_at(samples, cell.label, cell.gate_scale), order,
                         alpha_each, max_boxes))
    decided, reason = _verdict(rows, targets, applied, cells, nonfinite, len(order))
    return Decision(decided, reason, tuple(rows), alpha, len(decidable) + other_decisions)


def _verdict(rows: Sequence[RowSequence], targets: Sequence[Target], applied: Sequence[Any],
             cells: Sequence[RunCell], nonfinite: Mapping[tuple[str, float], int],
             n: int) -> tuple[str | None, str]:
    for cell in cells:
        bad = nonfinite.get((cell.checkpoint, cell.gate_scale), 0)
        if bad:
            return "fail", (f"{bad} image(s) with NaN/Inf pixels at gate scale "
                            f"{cell.gate_scale:g} of {cell.label}")
    orphan = [t for t in targets if not any(t is a for a, _ in applied)]
    if orphan:
        return "fail", f"target {orphan[0].metric} applies to no evaluated gate scale"
    for row in rows:
        if row.decision == "fail" and row.lower is None and row.upper is None:
            return "fail", (f"{row.metric} at gate scale {row.gate_scale:g} of {row.checkpoint} "
                            f"is {row.why}: its target fails at any n")
        if row.decision == "fail":
            side = "upper" if row.op in (">", ">=") else "lower"
            bound = row.upper if side == "upper" else row.lower
            return "fail", (f"{row.metric} at gate scale {row.gate_scale:g} of {row.checkpoint}: "
                            f"the sequence's {side} bound {bound:.3f} is on the failing side of "
                            f"{row.op} {row.threshold:g} after {n} layouts")
    if rows and all(row.decision == "pass" for row in rows):
        return "pass", f"every target's sequence lies on its passing side after {n} layouts"
    waiting = [r for r in rows if r.decision is None]
    if not rows:
        return None, "no target to decide: the run goes to N"
    if all(not r.decidable for r in waiting):
        return None, "the remaining targets are set-level or unbounded: they decide only at N"
    return None, (f"{len(waiting)} target row(s) still straddle their thresholds after {n} "
                  f"layouts")
