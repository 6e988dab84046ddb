"""Report sections read straight from results.json / samples.jsonl: gate health, samples.

Split from report.py so each file stays readable; report.py re-exports what it used to define.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from gatebench.saved_run import checkpoint_position, label_map, label_of

if TYPE_CHECKING:
    from gatebench.report import Figures


def gates_section(results: dict[str, Any], plot: str | None = None) -> str:
    """Gate health from results.json (checkpoints' stats and findings, gate_findings)."""
    lines = ["## Gates", "",
             "Statistics of tanh(raw gate) per checkpoint (at inference the effective gate is "
             "gate scale x tanh(raw gate)); near-zero: |raw| below the protocol's threshold; "
             "saturated: |tanh| above it.", "",
             "| checkpoint | format | step/epoch | n | mean tanh | std | min | max | near-zero | "
             "saturated |", "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    labels = label_map(results)
    for c in results.get("checkpoints", []):
        s = c.get("stats") or {}
        axis, x = checkpoint_position(c)
        when = "-" if x is None else f"{axis} {x}" + (
            " (file name)" if c.get("step") is None and c.get("epoch") is None else "")
        g = lambda k: _g(s.get(k))  # noqa: E731
        lines.append(f"| `{label_of(labels, c['path'])}` | {c.get('format', '-')} | {when} | "
                     f"{s.get('n', '-')} | {g('mean')} | {g('std')} | {g('min')} | {g('max')} | "
                     f"{_pct(s.get('near_zero_share'))} | {_pct(s.get('saturated_share'))} |")
    lines.append("")
    if plot:
        lines += [f"![gate trajectory]({plot})", ""]
    findings = results.get("gate_findings") or []
    if findings:
        lines += ["| severity | code | where | what |", "|---|---|---|---|"]
        for f in findings:
            subject = str(f.get("subject", ""))
            where = label_of(labels, subject) if ("/" in subject or "\\" in subject) else subject
            lines.append(f"| {f['severity']} | `{f['code']}` | {where} | "
                         f"{str(f['message']).replace('|', '/')} |")
    else:
        lines.append("No gate findings.")
    lines += ["", f"Gate verdict: **{gate_verdict(results).upper()}**", ""]
    return "\n".join(lines)


def gate_verdict(results: dict[str, Any]) -> str:
    severities = {f.get("severity") for f in results.get("gate_findings") or []}
    return "fail" if "fail" in severities else "warn" if "warn" in severities else "pass"


def _g(value: Any) -> str:
    try:
        return f"{float(value):.3g}"
    except (TypeError, ValueError):
        return "-" if value is None else str(value)


def _pct(value: Any) -> str:
    return "-" if value is None else f"{float(value):.0%}"


def samples_section(results: dict[str, Any], samples: pd.DataFrame,
                    figures: "Figures") -> list[str]:
    if not figures.grids:
        return []
    lines = ["## Samples", "",
             f"Each grid shows the first {max(len(g['layouts']) for g in figures.grids)} "
             "layouts of the run, one row per gate scale (a column: same layout, same seed). "
             "Boxes: green = ground-truth box matched by a detection with IoU > 0.5, red dashed "
             "= missed, grey dotted = class the detector cannot name, orange dashed = not "
             "scored (no detector); thin blue = detections. Small images are enlarged with "
             "nearest-neighbour.", ""]
    captions = _captions(samples)
    for grid in figures.grids:
        label = grid.get("label") or Path(grid["checkpoint"]).name
        lines += [f"### `{label}`", "", f"![sample grid {label}]({grid['file']})", ""]
        if grid.get("missing"):
            lines += [f"{grid['missing']} image(s) referenced in samples.jsonl were not found "
                      "on disk.", ""]
    shown = list(dict.fromkeys(l for g in figures.grids for l in g["layouts"]))
    if shown:
        lines += ["| layout | caption | ground-truth boxes |", "|---|---|---|"]
        for layout in shown:
            cap, boxes = captions.get(layout, ("-", "-"))
            lines.append(f"| {layout} | {cap} | {boxes} |")
        lines.append("")
    return lines


def _captions(samples: pd.DataFrame) -> dict[str, tuple[str, str]]:
    out: dict[str, tuple[str, str]] = {}
    if samples.empty or "layout_id" not in samples.columns:
        return out
    for _, rec in samples.drop_duplicates("layout_id").iterrows():
        cap = rec.get("caption") if isinstance(rec.get("caption"), str) else "-"
        boxes = rec.get("boxes") if isinstance(rec.get("boxes"), list) else []
        out[str(rec["layout_id"])] = (cap.replace("|", "/"),
                                      ", ".join(str(b.get("label")) for b in boxes) or "-")
    return out
