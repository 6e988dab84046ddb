"""Report sections read straight from results.json / samples.jsonl: gate health, samples.

Split from report.py so each file stays readable; report.py re-exports what it used to define.
``gates_markdown`` is also what `gatebench gates --out` and the demo render (from a live
GateReport's ``to_json``): one renderer of the gates table, kept torch-free for `report`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import pandas as pd

from gatebench.rundir.saved import checkpoint_position, label_map, label_of

if TYPE_CHECKING:
    from gatebench.render.format import Figures


@dataclass(frozen=True)
class GatesStyle:
    """What differs between the two gates sections; each caller keeps its own (golden files)."""

    intro: str
    position_from_file_name: bool   # no step/epoch recorded: "epoch 3 (file name)", not "-"
    label_subjects: bool            # a finding about a checkpoint path names its label instead


_RULES = "near-zero: |raw| below the protocol's threshold; saturated: |tanh| above it."
# `gatebench report` (from results.json)
REPORT_STYLE = GatesStyle(
    "Statistics of tanh(raw gate) per checkpoint (at inference the effective gate is gate scale "
    "x tanh(raw gate)); " + _RULES, position_from_file_name=True, label_subjects=True)
# `gatebench gates --out` and the demo (from a live GateReport's to_json)
LIVE_STYLE = GatesStyle("Effective gate = tanh(raw gate); " + _RULES,
                        position_from_file_name=False, label_subjects=False)


def gates_markdown(checkpoints: Sequence[dict[str, Any]], findings: Sequence[dict[str, Any]], *,
                   plot: str | None = None, labels: dict[str, str] | None = None,
                   style: GatesStyle = REPORT_STYLE) -> str:
    """The one "## Gates" section renderer, over plain dicts so a saved run needs no torch.

    ``checkpoints``/``findings``: the entries of ``gates.to_json`` (results.json's
    "checkpoints" and "gate_findings"); ``labels``: {path: label}, else file names.
    """
    labels = labels or {}
    lines = ["## Gates", "", style.intro, "",
             "| checkpoint | format | step/epoch | n | mean tanh | std | min | max | near-zero | "
             "saturated |", "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for c in checkpoints:
        s = c.get("stats") or {}
        g = lambda k: _g(s.get(k))  # noqa: E731
        lines.append(f"| `{label_of(labels, c['path'])}` | {c.get('format', '-')} | "
                     f"{_when(c, style.position_from_file_name)} | "
                     f"{s.get('n', '-')} | {g('mean')} | {g('std')} | {g('min')} | {g('max')} | "
                     f"{_pct(s.get('near_zero_share'))} | {_pct(s.get('saturated_share'))} |")
    lines.append("")
    if plot:
        lines += [f"![gate trajectory]({plot})", ""]
    if findings:
        lines += ["| severity | code | where | what |", "|---|---|---|---|"]
        for f in findings:
            where = str(f.get("subject", ""))
            if style.label_subjects and ("/" in where or "\\" in where):
                where = label_of(labels, where)
            message = str(f["message"]).replace("|", "/")   # "|tanh|" must not split the row
            lines.append(f"| {f['severity']} | `{f['code']}` | {where} | {message} |")
    else:
        lines.append("No gate findings.")
    lines += ["", f"Gate verdict: **{findings_verdict(findings).upper()}**", ""]
    return "\n".join(lines)


def _when(c: dict[str, Any], from_file_name: bool) -> str:
    if not from_file_name:          # as recorded, nothing else
        step, epoch = c.get("step"), c.get("epoch")
        return f"step {step}" if step is not None else (
            f"epoch {epoch}" if epoch is not None else "-")
    axis, x = checkpoint_position(c)
    return "-" if x is None else f"{axis} {x}" + (
        " (file name)" if c.get("step") is None and c.get("epoch") is None else "")


def gates_section(results: dict[str, Any], plot: str | None = None) -> str:
    """Gate health from results.json (checkpoints' stats and findings, gate_findings)."""
    return gates_markdown(results.get("checkpoints", []), results.get("gate_findings") or [],
                          plot=plot, labels=label_map(results), style=REPORT_STYLE)


def gate_verdict(results: dict[str, Any]) -> str:
    return findings_verdict(results.get("gate_findings") or [])


def findings_verdict(findings: Iterable[dict[str, Any]]) -> str:
    """The same rule as ``GateReport.verdict``, over finding dicts."""
    severities = {f.get("severity") for f in findings}
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


WRITE_METRICS = ("effect_in_boxes", "effect_lift", "box_attention_kappa", "effect_norm")


def writes_section(results: dict[str, Any]) -> list[str]:
    """Where the adapter writes: its findings (``write_findings``, with cause and advice), or
    that none holds; nothing for a run without the diagnostics (older runs, scale 0 only)."""
    measured = any(name in (row.get("metrics") or {}) for row in results.get("results", [])
                   for name in WRITE_METRICS)
    if not measured:
        return []
    labels = label_map(results)
    lines = ["## Where the adapter writes", "",
             "effect_in_boxes, effect_lift, box_attention_kappa and effect_norm are in the tables "
             "above (definitions below); the sample grids' last row shows the write map.", ""]
    findings = results.get("write_findings") or []
    for f in findings:
        subject = labels.get(f.get("subject", ""), f.get("subject", ""))
        lines.append(f"- **{str(f.get('severity', '')).upper()} `{f.get('code')}`** "
                     f"{subject}: {f.get('message')}")
    if not findings:
        lines.append("No write findings: where the adapter changes the image, it changes it in "
                     "the boxes, and no gate scale garbles clearly more than the base.")
    return lines + [""]

