"""Report sections read straight from results.json / samples.jsonl: gate health, samples,
where the adapter writes, and how a `run --until-decided` stopped.

Split from report.py so each file stays readable; report.py re-exports what it used to define.
``gates_markdown`` is also what `gatebench gates --out` and the demo render (from a live
GateReport's ``to_json``): one renderer of the gates table, kept torch-free for `report`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import pandas as pd

from gatebench.metrics.spec import SET_METRICS
from gatebench.render.escape import md_code, md_text
from gatebench.render.format import fmt, scale_label
from gatebench.rundir.results import findings_verdict
from gatebench.rundir.saved import checkpoint_paths, checkpoint_position, label_map, label_of

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
        mean, std, low, high = (_g(s.get(k)) for k in ("mean", "std", "min", "max"))
        lines.append(f"| {md_code(label_of(labels, c['path']))} | "
                     f"{md_text(c.get('format', '-'))} | "
                     f"{_when(c, style.position_from_file_name)} | "
                     f"{s.get('n', '-')} | {mean} | {std} | {low} | {high} | "
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
            lines.append(f"| {md_text(f['severity'])} | {md_code(f['code'])} | {md_text(where)} | "
                         f"{md_text(f['message'])} |")
    else:
        lines.append("No gate findings.")
    lines += ["", f"Gate verdict: **{findings_verdict(str(f.get('severity')) for f in findings).upper()}**", ""]
    return "\n".join(lines)


def _when(c: dict[str, Any], from_file_name: bool) -> str:
    # a step `gates` took from the file name (or from the identical file) says so
    source = c.get("step_source")
    note = f" ({source})" if source not in (None, "recorded") else ""
    if not from_file_name:          # as `gates` reported it, nothing else
        step, epoch = c.get("step"), c.get("epoch")
        return f"step {step}{note}" if step is not None else (
            f"epoch {epoch}" if epoch is not None else "-")
    axis, x = checkpoint_position(c)
    return "-" if x is None else f"{axis} {x}" + (note or (
        " (file name)" if c.get("step") is None and c.get("epoch") is None else ""))


def gates_section(results: dict[str, Any], plot: str | None = None) -> str:
    """Gate health from results.json (checkpoints' stats and findings, gate_findings)."""
    return gates_markdown(results.get("checkpoints", []), results.get("gate_findings") or [],
                          plot=plot, labels=label_map(results), style=REPORT_STYLE)


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
        lines += [f"### {md_code(label)}", "", f"![sample grid {md_text(label)}]({grid['file']})",
                  ""]
        if grid.get("missing"):
            lines += [f"{grid['missing']} image(s) referenced in samples.jsonl were not found "
                      "on disk.", ""]
    shown = list(dict.fromkeys(lay for g in figures.grids for lay in g["layouts"]))
    if shown:
        lines += ["| layout | caption | ground-truth boxes |", "|---|---|---|"]
        for layout in shown:
            cap, boxes = captions.get(layout, ("-", "-"))
            lines.append(f"| {md_text(layout)} | {md_text(cap)} | {md_text(boxes)} |")
        lines.append("")
    return lines


def _captions(samples: pd.DataFrame) -> dict[str, tuple[str, str]]:
    out: dict[str, tuple[str, str]] = {}
    if samples.empty or "layout_id" not in samples.columns:
        return out
    for _, rec in samples.drop_duplicates("layout_id").iterrows():
        cap = rec.get("caption") if isinstance(rec.get("caption"), str) else "-"
        boxes = rec.get("boxes") if isinstance(rec.get("boxes"), list) else []
        out[str(rec["layout_id"])] = (cap, ", ".join(str(b.get("label")) for b in boxes) or "-")
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
        lines.append(f"- **{md_text(str(f.get('severity', '')).upper())} {md_code(f.get('code'))}"
                     f"** {md_text(subject)}: {md_text(f.get('message'))}")
    if not findings:
        lines.append("No write findings: where the adapter changes the image, it changes it in "
                     "the boxes, and no gate scale garbles clearly more than the base.")
    return lines + [""]



# -- `run --until-decided`: the confidence sequences that stopped the run --------------------

def sequential_of(results: dict[str, Any]) -> dict[str, Any] | None:
    """results.json's "sequential" record; None on an ordinary run (nothing then changes)."""
    seq = results.get("sequential")
    return seq if isinstance(seq, dict) else None


def early_set_level(results: dict[str, Any]) -> list[str]:
    """Set-level metrics computed on fewer images than N because the run stopped early."""
    seq = sequential_of(results)
    return [str(m) for m in seq.get("set_level") or []] if seq and seq["stopped_early"] else []


def stop_sentence(seq: dict[str, Any]) -> str:
    """Where the run stopped and why, as one sentence (report.md and the LaTeX caption)."""
    reason = str(seq.get("reason") or "").rstrip(".")
    rounds = f"rounds of {seq['round_layouts']}"
    if seq["stopped_early"]:
        return f"Stopped at {seq['n_layouts']} of {seq['max_layouts']} layouts ({rounds}): " \
               f"{reason or 'decided'}."
    if seq.get("decided") is None:
        return f"Ran to N = {seq['max_layouts']} layouts ({rounds}): no verdict decided earlier."
    return f"Ran to N = {seq['max_layouts']} layouts ({rounds}): decided in the last round" + \
        (f": {reason}." if reason else ".")


def set_level_note(seq: dict[str, Any]) -> str:
    """Why a set-level value of a stopped run is not an N-image value (the targets' † marker)."""
    names = ", ".join(str(m) for m in seq.get("set_level") or [])
    return f"† Set-level metrics ({names}) were computed on the {seq['n_layouts']} images " \
           f"generated per checkpoint and gate scale, not on N = {seq['max_layouts']}: the run " \
           "stopped before generating the rest."


SEQUENTIAL_EXPLAINED = (
    "The sequence bounds are a betting confidence sequence (Waudby-Smith & Ramdas 2023) at the "
    "row's share of alpha: anytime-valid, i.e. valid at every n at once, so looking after every "
    "round and stopping as soon as they decide keeps the error rate at alpha. The bootstrap 95% "
    "CI beside them is not valid under optional stopping (stopping when it clears would inflate "
    "its error rate); it is shown for reference only.")


def matching_target(results: dict[str, Any], row: dict[str, Any]) -> dict[str, Any] | None:
    """The Targets row of the same checkpoint, gate scale and metric as a sequence row."""
    scale = row.get("gate_scale")
    for t in results["targets"]:
        same_scale = (t.get("gate_scale") is None) if scale is None else (
            t.get("gate_scale") is not None and float(t["gate_scale"]) == float(scale))
        if str(t["checkpoint"]) == str(row["checkpoint"]) and t["metric"] == row["metric"] \
                and same_scale:
            return t
    return None


def sequential_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The sequence rows in the Targets table's order: checkpoint, then gate scale."""
    seq = sequential_of(results) or {}
    order = {ck: i for i, ck in enumerate(checkpoint_paths(results))}
    rows = sorted(enumerate(seq.get("rows") or []), key=lambda it: (
        order.get(str(it[1]["checkpoint"]), len(order)),
        -1.0 if it[1].get("gate_scale") is None else float(it[1]["gate_scale"]), it[0]))
    return [row for _, row in rows]


def decision_text(row: dict[str, Any]) -> str:
    """pass / fail / undecided, with the row's why when it has one."""
    text = row.get("decision") or "undecided"
    why = md_text(row.get("why") or "")
    return f"{md_text(text)} ({why})" if why else md_text(text)


def sequential_section(results: dict[str, Any]) -> list[str]:
    """"## Stopped when decided" (or "## Sequential decision"): nothing on an ordinary run."""
    seq = sequential_of(results)
    if seq is None:
        return []
    labels = label_map(results)
    title = "## Stopped when decided" if seq["stopped_early"] else "## Sequential decision"
    split = md_text(seq["split"])
    rounds = ", ".join(f"{r['n_layouts']} layouts {r.get('decided') or 'undecided'}"
                       for r in seq.get("rounds") or [])
    lines = [title, "", md_text(stop_sentence(seq)),
             f"Error rate: alpha {seq['alpha']:g} overall, split {split} "
             f"(alpha {seq['alpha_each']:g} each).",
             f"Order: {md_text(seq['order'])}." + (f" Rounds: {md_text(rounds)}." if rounds
                                                                 else ""), "",
             "| checkpoint | gate scale | metric | target | sequence bounds at stop | "
             "bootstrap 95% CI | decision |", "|---|---:|---|---|---|---|---|"]
    for row in sequential_rows(results):
        name = "all" if row["checkpoint"] == "*" else md_code(label_of(labels, row["checkpoint"]))
        bounds = "-" if row.get("lower") is None and row.get("upper") is None else \
            f"[{fmt(row.get('lower'))}, {fmt(row.get('upper'))}] at n {row['n']}"
        target = matching_target(results, row)
        ci = "-"
        if target is not None and None not in (target.get("ci_low"), target.get("ci_high")):
            ci = f"[{fmt(target['ci_low'])}, {fmt(target['ci_high'])}]"
        elif row["metric"] in SET_METRICS:
            ci = "- (set-level)"
        lines.append(f"| {name} | {scale_label(row.get('gate_scale'))} | "
                     f"{md_text(row['metric'])} | "
                     f"{row['op']} {row['threshold']:g} | {bounds} | {ci} | "
                     f"{decision_text(row)} |")
    lines.append("")
    if early_set_level(results):
        lines += [set_level_note(seq), ""]
    return lines + [SEQUENTIAL_EXPLAINED, ""]
