"""Formatting shared by every output (Markdown, LaTeX, HTML, terminal): numbers, CIs, labels."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


def fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if abs(value) >= 1000:
        return f"{value:.0f}"
    return f"{value:.{digits if abs(value) < 10 else min(digits, 2)}f}"   # FID 47.93, not 47.930


def value_ci(metric: dict[str, Any] | None) -> str:
    if not metric or metric.get("value") is None:
        return "not computed"
    text = fmt(metric["value"])
    if has_ci(metric):
        text += f" [{fmt(metric['ci_low'])}, {fmt(metric['ci_high'])}]"
    return text


def has_ci(metric: dict[str, Any]) -> bool:
    """Both CI ends recorded (results.json may omit either: the schema calls them optional)."""
    return metric.get("ci_low") is not None and metric.get("ci_high") is not None


def fmt_against(value: float, op: str, threshold: float) -> str:
    """The value with enough decimals that its printed form agrees with pass/fail
    (0.2497 vs >= 0.25 must not print as 0.250 next to a ✗)."""
    from gatebench.verdict import compare_values  # noqa: PLC0415

    truth = compare_values(op, value, threshold)
    for digits in (3, 4, 5, 6):
        text = fmt(value, digits)
        if compare_values(op, float(text), threshold) == truth:
            return text
    return repr(value)


def scale_label(scale: float | None) -> str:
    if scale is None:
        return "-"
    return "0 (base)" if scale == 0 else f"{scale:g}"


def short_sha(sha: Any, n: int = 12) -> str:
    """A hash as the report shows it: its first ``n`` characters, "-" when there is none."""
    return str(sha)[:n] if sha else "-"


@dataclass
class Figures:
    """File names (relative to the report) of what ``build_figures`` drew."""

    metric_vs_scale: str | None = None
    metric_vs_epoch: str | None = None
    gate_trajectory: str | None = None
    grids: list[dict[str, Any]] = field(default_factory=list)   # checkpoint, file, layouts, ...
    flagged: dict[str, Any] | None = None                        # file, rows, total
