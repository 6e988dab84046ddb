"""A watched training run's trajectory report: OUT/trajectory.md and a self-contained
trajectory.html, from watch.json, the checkpoints' run folders and the training logs.

What it holds: every headline metric against the training step with its CI, the gate and loss
curves from the logs on the same axis, each checkpoint's sample grid (the same layouts and
seeds, so "control grows" is visible), the findings, the best pick and the held-out command,
and the user's four support items in one place (train.log's tail, the gate stats of the last
100 steps, the loss curve, samples). Drawn once per watch session, not per checkpoint
(matplotlib costs seconds on a CPU).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

from gatebench.files import atomic_output, atomic_write_text
from gatebench.metrics.spec import HEADLINE
from gatebench.readers.logs import LogSeries
from gatebench.render.escape import md_code, md_text, plot_text
from gatebench.render.html import markdown_to_html

# the headline metrics, and effect_lift: whether control grows where no detector is configured
METRICS = (*HEADLINE, *(m for m in ("effect_lift",) if m not in HEADLINE))
TAIL_LINES = 40
LAST_STEPS = 100


def _value(entry: dict[str, Any], scale: str, metric: str) -> tuple[float, float, float] | None:
    m = ((entry.get("headline") or {}).get(scale) or {}).get(metric) or {}
    v = m.get("value")
    if not isinstance(v, (int, float)) or not math.isfinite(float(v)):
        return None
    low, high = m.get("ci_low"), m.get("ci_high")
    return (float(v), float(low) if isinstance(low, (int, float)) else float(v),
            float(high) if isinstance(high, (int, float)) else float(v))


def points(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The evaluated (or evaluated then deleted) entries, in series order."""
    return [e for e in doc.get("checkpoints", []) if e.get("results")]


def _scales(entries: Sequence[dict[str, Any]]) -> list[str]:
    found = {s for e in entries for s in (e.get("headline") or {})}
    return sorted(found, key=float)


def plot_trajectory(doc: dict[str, Any], logs: Sequence[LogSeries], out: Path) -> Path | None:
    """One panel per headline metric measured (a line per gate scale, CI bars) and the logs'
    gate mean and loss, all against the training step."""
    entries = points(doc)
    scales = _scales(entries)
    metrics = [m for m in METRICS if any(_value(e, s, m) for e in entries for s in scales)]
    curves = [(c, log) for c in ("gate_mean", "loss") for log in logs[:1]
              if log.frame[c].notna().any()]
    if not metrics and not curves:
        return None
    import matplotlib  # noqa: PLC0415
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    n = len(metrics) + len(curves)
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.8 * rows), squeeze=False,
                             sharex=True)
    flat = list(axes.flat)
    for ax, metric in zip(flat, metrics, strict=False):   # flat: a grid, maybe longer
        for scale in scales:
            found = [(e["tb_step"], v) for e in entries if e.get("tb_step") is not None
                     for v in [_value(e, scale, metric)] if v is not None]
            if not found:
                continue
            xs = [x for x, _ in found]
            ys = [v[0] for _, v in found]
            err = [[v[0] - v[1] for _, v in found], [v[2] - v[0] for _, v in found]]
            ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=f"scale {scale}",
                        linestyle="--" if float(scale) == 0 else "-")
        ax.set_title(plot_text(metric))
        ax.legend(fontsize=7)
    for ax, (column, log) in zip(flat[len(metrics):], curves, strict=False):
        frame = log.frame.dropna(subset=[column])
        ax.plot(frame["step"], frame[column], linewidth=0.8)
        ax.set_title(plot_text(f"train {column} ({log.kind})"))
    for ax in flat[n:]:
        ax.set_visible(False)
    for ax in flat[:n]:
        ax.set_xlabel("training step")
    fig.tight_layout()
    with atomic_output(out) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return out


def _fmt(v: tuple[float, float, float] | None) -> str:
    return "–" if v is None else f"{v[0]:.3g} [{v[1]:.3g}, {v[2]:.3g}]"


def support_items(run_dir: Path, logs: Sequence[LogSeries]) -> list[str]:
    """The note's four items to send when something goes wrong (samples: the grids above)."""
    lines = ["## Support items (what to send when something goes wrong)", ""]
    log_file = next(iter(sorted(run_dir.glob("*.log"))), None)
    if log_file is not None:
        try:
            tail = log_file.read_text(encoding="utf-8", errors="replace").splitlines()[
                -TAIL_LINES:]
        except OSError:
            tail = []
        fence = "~" * 4
        lines += [f"### {md_code(log_file.name)}: the last {len(tail)} lines", "", fence,
                  *(line.replace(fence, "~~~ ") for line in tail), fence, ""]
    gated = [log for log in logs if not log.gate_points.empty]
    if gated:
        frame = gated[0].gate_points
        last = frame[frame["step"] > frame["step"].max() - LAST_STEPS]
        lines += [f"### Gate stats of the last {LAST_STEPS} steps ({md_text(gated[0].kind)})",
                  "", "| step | mean | std | min | max |", "|---|---|---|---|---|"]
        lines += [f"| {int(r.step)} | {r.gate_mean:.4g} | {r.gate_std:.4g} | {r.gate_min:.4g} | "
                  f"{r.gate_max:.4g} |" for r in last.itertuples()]
        lines.append("")
    lines += ["The loss curve is in the figure above; the samples are the grids below.", ""]
    return lines


def render_markdown(doc: dict[str, Any], out: Path, logs: Sequence[LogSeries],
                    figure: Path | None) -> str:
    entries = points(doc)
    scales = [s for s in _scales(entries) if float(s) != 0] or _scales(entries)
    metrics = [m for m in METRICS if any(_value(e, s, m) for e in entries for s in scales)]
    lines = [f"# Training run {md_code(doc['run_dir'])}: the trajectory", "",
             f"Protocol {md_code(doc['settings'].get('protocol'))}, seed "
             f"{doc['settings'].get('seed')}; verdict of the newest checkpoint: "
             f"**{md_text(doc['verdict'])}**; "
             f"{'training complete' if doc.get('complete') else 'training may go on'}.", ""]
    best = doc.get("best")
    if best:
        value = "not computed" if best.get("value") is None else f"{best['value']:.4g}"
        lines += [f"**Best on the probe set:** {md_code(best['path'])} (step {best['tb_step']}): "
                  f"{md_text(best['metric'])} {value} at gate scale {best['gate_scale']:g}; "
                  f"{md_text(best['note'])}:", "", f"    {best['held_out_command']}", ""]
    if figure is not None:
        lines += [f"![metrics and training curves against the step]({figure.name})", ""]
    header = ["checkpoint", "step", "status", "gate mean"] + [
        f"{m} @ {s}" for m in metrics for s in scales]
    lines += ["## Checkpoints (series order)", "", "| " + " | ".join(map(md_text, header)) + " |",
              "|" + "---|" * len(header)]
    for e in doc.get("checkpoints", []):
        gate = "–" if e.get("gate_mean") is None else f"{e['gate_mean']:.4g}"
        cells = [md_code(e["name"]), str(e.get("tb_step") if e.get("tb_step") is not None
                                          else "–"), md_text(e["status"]), gate]
        cells += [_fmt(_value(e, s, m)) for m in metrics for s in scales]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    if doc.get("findings"):
        lines += ["## Findings", ""]
        lines += [f"- **{md_text(f['code'])}** ({md_text(f['severity'])}, step "
                  f"{f.get('step')}): {md_text(f['message'])}" for f in doc["findings"]]
        lines.append("")
    grids = [(e, out / e["run"] / "grid.png") for e in entries if e.get("run")]
    grids = [(e, g) for e, g in grids if g.is_file()]
    if grids:
        lines += ["## Samples: the same layouts and seeds at every checkpoint", ""]
        for e, g in grids:
            # beside the report under a flat name (the HTML step inlines plain names only)
            flat = out / f"grid_{Path(e['run']).name}.png"
            with atomic_output(flat) as tmp:
                tmp.write_bytes(g.read_bytes())
            lines += [f"### {md_code(e['name'])} (step {e.get('tb_step')})", "",
                      f"![{md_text(e['name'])}]({flat.name})", ""]
    lines += support_items(Path(doc["run_dir"]), logs)
    return "\n".join(lines)


def write_trajectory(doc: dict[str, Any], out: Path, logs: Sequence[LogSeries]
                     ) -> tuple[Path, Path]:
    """OUT/trajectory.md, its figure and OUT/trajectory.html (images inlined)."""
    figure = plot_trajectory(doc, logs, out / "trajectory.png")
    text = render_markdown(doc, out, logs, figure)
    md = atomic_write_text(out / "trajectory.md", text + "\n")
    html = atomic_write_text(out / "trajectory.html", markdown_to_html(
        text, out, title=f"gatebench watch: {doc['run_dir']}"))
    return md, html
