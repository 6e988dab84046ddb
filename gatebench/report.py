"""report.md from a run's results (re-renderable from results.json alone).

The Markdown is meant to be pasted into a paper supplement or a PR comment: headline pass/fail
table with 95% CIs, metrics per checkpoint x gate scale, gate findings, definitions and a
reproducibility footer (command, versions, seed, hashes).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

DEFINITIONS = """\
## Definitions

- **Effective gate** = gate scale x tanh(raw gate); gate scale s blends the adapter's residual:
  h + s * (out - h). Scale 0 is the base model alone (same seed, same initial noise).
- **iou50_rate**: share of scorable ground-truth boxes matched one-to-one (Hungarian on IoU,
  same class) by a detection with IoU > 0.5. Boxes whose class the detector cannot name are
  unscorable and excluded. **miou**: mean IoU over scorable GT boxes (0 when unmatched).
  **all_matched_rate**: share of images whose every scorable box is matched. **ap50/ap**:
  COCO-style AP from a maintained COCO evaluator.
- **clip_score**: cosine similarity between image and caption embeddings on a 0-1 scale
  (torchmetrics' CLIPScore is 100x this). **region_clip_score**: GT box crop vs its phrase.
- **fid/kid**: against reference statistics of real images; N and the reference set are stated
  next to every value (FID at N=1k and at N=30k are different claims).
- **garbled_rate**: share of images whose garbled score exceeds the protocol threshold.
- Every value carries a bootstrap confidence interval over layouts (seeded); comparisons between
  gate scales or checkpoints are paired (same layouts, same seeds).
"""


def fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    return f"{value:.{digits}f}" if abs(value) < 1000 else f"{value:.0f}"


def value_ci(metric: dict[str, Any] | None) -> str:
    if not metric or metric.get("value") is None:
        return "not computed"
    text = fmt(metric["value"])
    if metric.get("ci_low") is not None:
        text += f" [{fmt(metric['ci_low'])}, {fmt(metric['ci_high'])}]"
    return text


def headline_table(results: dict[str, Any]) -> list[str]:
    lines = ["| checkpoint | gate scale | metric | value [95% CI] | target | pass |",
             "|---|---:|---|---|---|:---:|"]
    for t in results["targets"]:
        metric = {"value": t["value"], "ci_low": t["ci_low"], "ci_high": t["ci_high"]}
        value = value_ci(metric) if t["computed"] else t["note"]
        scale = "-" if t["gate_scale"] is None else f"{t['gate_scale']:g}"
        mark = "✓" if t["passed"] else "✗"
        lines.append(f"| `{Path(t['checkpoint']).name}` | {scale} | {t['metric']} | {value} | "
                     f"{t['op']} {t['threshold']:g} | {mark} |")
    return lines


def metrics_table(results: dict[str, Any]) -> list[str]:
    names = []
    for row in results["results"]:
        names += [n for n in row["metrics"] if n not in names]
    lines = ["| checkpoint | gate scale | N | " + " | ".join(names) + " |",
             "|---|---:|---:|" + "---|" * len(names)]
    for row in results["results"]:
        cells = [value_ci(row["metrics"].get(n)) for n in names]
        lines.append(f"| `{Path(row['checkpoint']).name}` | {row['gate_scale']:g} | "
                     f"{row['n_images']} | " + " | ".join(cells) + " |")
    return lines


def render_report(results: dict[str, Any], gates_markdown: str = "") -> str:
    protocol = results["protocol"]
    verdict = results["verdict"].upper()
    out = [f"# gatebench report: {protocol['name']}", "",
           f"**Verdict: {verdict}** — {results['n_layouts']} layouts, seed {results['seed']}, "
           f"protocol `{protocol['name']}`, device {results['device']} ({results['dtype']}).", "",
           "## Targets", ""] + headline_table(results) + ["", "## Metrics by checkpoint and gate scale",
                                                           ""] + metrics_table(results) + [""]
    ceiling = results.get("real_images_ceiling")
    if ceiling:
        cells = ", ".join(f"{k} {value_ci(v)}" for k, v in ceiling["metrics"].items())
        out += [f"Same detector on the {ceiling['n_images']} REAL images (the ceiling): {cells}.", ""]
    fid_note = results["models"].get("fid_reference")
    if fid_note:
        out += [f"FID/KID reference: {fid_note}.", ""]
    if gates_markdown:
        out += [gates_markdown, ""]
    out += [DEFINITIONS, "## Reproducibility", "",
            f"- command: `{results.get('command') or '(library call)'}`",
            f"- created {results['created']}, gatebench {results['versions'].get('gatebench')}",
            "- versions: " + ", ".join(f"{k} {v}" for k, v in results["versions"].items()),
            f"- layouts: {results['n_layouts']} (ids sha256 {results['layout_ids_sha256'][:16]})",
            f"- phrase encoding: {results['generation'].get('phrase_encoding')}; CFG unconditional "
            f"half: boxes `{results['generation'].get('uncond_boxes')}`"]
    for c in results["checkpoints"]:
        out.append(f"- checkpoint `{c['path']}` sha256 `{c['sha256']}`")
    for name, model in results["models"].items():
        if isinstance(model, dict) and model.get("sha256"):
            out.append(f"- {name}: `{model.get('path')}` sha256 `{model['sha256']}`")
    timings = results["timings"]
    out.append("- timings: " + ", ".join(f"{k} {fmt(v, 2)}" for k, v in timings.items()))
    return "\n".join(out) + "\n"


def write_report(results: dict[str, Any], samples: pd.DataFrame, gate_report: Any,
                 out_dir: Path) -> Path:
    from gatebench.gates_render import plot_trajectory, render_markdown
    plot = plot_trajectory(gate_report, out_dir / "gate_trajectory.png")
    text = render_report(results, render_markdown(gate_report, plot.name if plot else None))
    path = out_dir / "report.md"
    path.write_text(text, encoding="utf-8")
    return path
