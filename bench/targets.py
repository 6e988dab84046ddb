"""Timing targets: a ratio measured side by side in one run, held to a threshold.

Why shared: every bench reports a target the same way (a PASS/FAIL row with its value, operator,
threshold and meaning); a missing or non-finite value is a FAIL, never a pass.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, Mapping, Sequence


@dataclass(frozen=True)
class Target:
    name: str
    op: Literal[">=", "<="]
    threshold: float
    what: str

    def passed(self, value: float | None) -> bool:
        if value is None or not math.isfinite(value):
            return False
        return value >= self.threshold if self.op == ">=" else value <= self.threshold


def judge(ratios: Mapping[str, float], targets: Sequence[Target]) -> list[dict[str, Any]]:
    """One row per target: its value from ``ratios`` (None when absent) and whether it passed."""
    rows = []
    for t in targets:
        value = ratios.get(t.name)
        rows.append({"name": t.name, "value": value, "op": t.op, "threshold": t.threshold,
                     "passed": t.passed(value), "what": t.what})
    return rows
