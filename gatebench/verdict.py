"""Targets -> pass/fail rows per checkpoint x gate scale.

A target whose metric was not computed FAILS (it cannot pass on a number nobody measured), and so
does a target that applies to no evaluated gate scale. Images with NaN/Inf pixels fail an implicit
health row at their scale: they are counted, never averaged away.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

from gatebench.protocol import Target


@dataclass(frozen=True)
class TargetRow:
    checkpoint: str
    gate_scale: float | None
    metric: str
    op: str
    threshold: float
    value: float | None
    ci_low: float | None
    ci_high: float | None
    n: int | None
    passed: bool
    computed: bool
    ci_clear: bool | None       # the whole CI lies on the passing side of the threshold
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def compare_values(op: str, value: float, threshold: float) -> bool:
    return {">": value > threshold, ">=": value >= threshold, "<": value < threshold,
            "<=": value <= threshold}[op]


def evaluate_targets(targets: Sequence[Target], rows: Sequence[dict[str, Any]]) -> list[TargetRow]:
    """``rows``: results.json ``results`` entries (checkpoint, gate_scale, metrics, not_computed)."""
    out: list[TargetRow] = []
    for target in targets:
        applied = False
        for row in rows:
            scale = row["gate_scale"]
            if not target.applies_to(scale):
                continue
            applied = True
            metric = row["metrics"].get(target.metric)
            if metric is None or metric.get("value") is None:
                reason = row.get("not_computed", {}).get(target.metric, "not computed")
                out.append(TargetRow(row["checkpoint"], scale, target.metric, target.op,
                                     target.threshold, None, None, None, None, False, False, None,
                                     f"not computed: {reason}"))
                continue
            value = float(metric["value"])
            low, high = metric.get("ci_low"), metric.get("ci_high")
            clear = None
            if low is not None and high is not None:
                worst = low if target.op in (">", ">=") else high
                clear = compare_values(target.op, float(worst), target.threshold)
            out.append(TargetRow(row["checkpoint"], scale, target.metric, target.op,
                                 target.threshold, value, low, high, metric.get("n"),
                                 compare_values(target.op, value, target.threshold), True, clear,
                                 target.description))
        if not applied:
            scales = ", ".join(f"{s:g}" for s in target.gate_scales or ())
            out.append(TargetRow("*", None, target.metric, target.op, target.threshold, None, None,
                                 None, None, False, False, None,
                                 f"no evaluated gate scale matches the target's ({scales})"))
    for row in rows:
        bad = int(row.get("nonfinite_images", 0))
        if bad:
            out.append(TargetRow(row["checkpoint"], row["gate_scale"], "nonfinite_images", "<=", 0,
                                 float(bad), None, None, row.get("n_images"), False, True, None,
                                 "images with NaN/Inf pixels"))
    return out
