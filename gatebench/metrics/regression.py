"""THE regression rule: one reading of an interval of candidate - baseline against a margin.

compare's bootstrap rows and the anytime-valid paired sequences (``paired_sequence``, which
`compare` and `run --baseline --until-decided` use) both ask it, so a change that one calls a
regression the other cannot call fine.

Example:
    >>> change_status("iou50_rate", -0.30, -0.10, 0.02)
    'regression'
    >>> change_status("fid", -5.0, -1.0, 0.5)      # FID fell: lower is better
    'improved'
    >>> sequence_decision("iou50_rate", -0.01, 0.05, 0.02)
    'no regression'
"""
from __future__ import annotations

from typing import Literal

from gatebench.metrics import spec as metric_spec

REGRESSION, NO_REGRESSION = "regression", "no regression"
Status = Literal["regression", "improved", "ok"]


def good_side(metric: str, low: float, high: float) -> tuple[float, float]:
    """(worst, best) of the interval [low, high] of candidate - baseline, turned so that a
    positive change is better (a fall of FID, KID or a garbled rate is a gain)."""
    return (low, high) if metric_spec.higher_is_better(metric) else (-high, -low)


def change_status(metric: str, low: float, high: float, margin: float) -> Status:
    """Regression: the WHOLE interval beyond ``margin`` on the bad side, so noise alone cannot
    fail the gate; improved: wholly beyond it on the good side; otherwise ok."""
    worst, best = good_side(metric, low, high)
    if best < -margin:
        return "regression"
    if worst > margin:
        return "improved"
    return "ok"


def sequence_decision(metric: str, low: float, high: float, margin: float) -> str | None:
    """A confidence sequence decides "regression" by the same rule, and "no regression" once
    the whole sequence is better than ``-margin`` (the change can no longer be a regression);
    None: not decided yet."""
    if change_status(metric, low, high, margin) == "regression":
        return REGRESSION
    worst, _ = good_side(metric, low, high)
    return NO_REGRESSION if worst > -margin else None
