"""Renders a GateReport for a terminal (rich), for a report (Markdown) and as a PNG trajectory."""
from __future__ import annotations

from pathlib import Path

from rich.console import Console

from gatebench.files import atomic_output, atomic_write_text
from gatebench.gates import Finding, GateReport, to_json
from gatebench.render.escape import md_code, md_text, plot_text
from gatebench.render.escape import rich_text as escape  # markup literal, no control codes
from gatebench.render.fit import Col, print_fitted
from gatebench.render.sections import LIVE_STYLE, gates_markdown

_STYLE = {"fail": "bold red", "warn": "yellow", "pass": "bold green"}


def _fmt(value: float, digits: int = 4) -> str:
    return f"{value:.{digits}g}" if value == value else "nan"


def render_terminal(report: GateReport, console: Console, *, per_gate: bool = True) -> None:
    """Per checkpoint its gates, then the trajectory, the logs and the findings; every table
    fitted to the console (render.fit: whole cells, stacked rows when too narrow)."""
    where = "`gatebench gates --json` (gates.json with --out)"
    steps = {s.key: s for s in report.steps}
    for c in report.checkpoints:
        info, stats = c.info, c.stats
        meta = [f"format {info.format}", f"family {info.family}", f"sha256 {info.sha256[:12]}"]
        placed = steps.get(str(info.path))
        if placed is not None and placed.step is not None:
            source = "" if placed.step_source == "recorded" else f" ({placed.step_source})"
            meta.append(f"step {placed.step}{source}")
        elif info.training.step is not None:
            meta.append(f"step {info.training.step}")
        if info.training.epoch is not None:
            meta.append(f"epoch {info.training.epoch}")
        if info.training.init_scheme:
            meta.append(f"init {info.training.init_scheme}")
        # the path on a line of its own: a table title would fold a path longer than the table
        console.print(f"[bold]{escape(str(info.path))}[/bold]  ({escape(', '.join(meta))})",
                      soft_wrap=True, highlight=False)
        if per_gate:
            columns = [Col("layer"), Col("kind", drop=1), Col("width", "right", drop=2),
                       Col("raw", "right"), Col("tanh(raw)", "right"), Col("to_out zero", "right")]
            rows = []
            for g in info.gates:
                zero = "-" if g.out_proj_zero is None else ("yes" if g.out_proj_zero else "no")
                rows.append([escape(g.layer), g.kind, str(g.width or "-"), _fmt(g.raw),
                             _fmt(g.effective), zero])
            print_fitted(console, columns, rows, where=where, show_edge=False)
        console.print(f"  tanh(gate): mean {_fmt(stats.mean, 3)}  std {_fmt(stats.std, 3)}  "
                      f"min {_fmt(stats.min, 3)}  max {_fmt(stats.max, 3)}  |  near-zero "
                      f"{stats.near_zero_share:.0%}  saturated {stats.saturated_share:.0%}  "
                      f"(n={stats.n})")
    if len(report.trajectory) > 1:
        rows = [["final (step unknown)" if p.final else str(p.x), _fmt(p.gate_mean, 3),
                 "-" if p.effective_mean is None else _fmt(p.effective_mean, 3),
                 escape(f"{p.series}{p.label}")] for p in report.trajectory]
        print_fitted(console, [Col(report.trajectory_axis, "right"), Col("mean gate", "right"),
                               Col("mean tanh", "right"), Col("source")], rows,
                     title=f"gate trajectory (by {report.trajectory_axis})", where=where,
                     show_edge=False)
    if report.unplaced:
        console.print(f"not in the trajectory (no step, epoch or number, not the final file): "
                      f"{escape(', '.join(report.unplaced))}", soft_wrap=True, highlight=False)
    for series, _ in report.logs:
        last = series.gate_points.iloc[-1]
        console.print(f"[bold]{escape(str(series.source))}[/bold] ({series.kind}, {len(series.gate_points)} gate "
                      f"points): last step {int(last['step'])}, mean {_fmt(last['gate_mean'], 3)}, "
                      f"min {_fmt(last['gate_min'], 3)}, max {_fmt(last['gate_max'], 3)}")
        writes = series.write_points
        if len(writes):
            rows = [[str(int(row[0])), *(_fmt(v, 3) if v == v else "-" for v in row[1:])]
                    for row in writes.itertuples(index=False)]
            print_fitted(console, [Col(escape(c.replace("box_attention_", "")), "right")
                                   for c in writes.columns], rows, where=where, show_edge=False,
                         title="where the adapter writes (train forward, by step)")
    for u in report.unreadable:
        console.print(f"[yellow]UNREADABLE[/] {escape(u.message)}", soft_wrap=True,
                      highlight=False)
    render_findings(report.findings, console)
    if report.unreadable:
        console.print(f"{len(report.unreadable)} checkpoint(s) not read: the verdict covers "
                      "the rest (exit 1)")
    console.print(f"verdict: [{_STYLE[report.verdict]}]{report.verdict.upper()}[/]")


def render_findings(findings: list[Finding], console: Console) -> None:
    if not findings:
        console.print("[green]no gate findings[/green]")
        return
    for f in findings:
        console.print(f"[{_STYLE[f.severity]}]{f.severity.upper():4}[/] "
                      f"[bold]{escape(f.code)}[/bold] "
                      f"{escape(f.subject)}: {escape(f.message)}", soft_wrap=True, highlight=False)


def render_markdown(report: GateReport, plot: str | None = None) -> str:
    """A Markdown section (gates.md, the demo report): the shared renderer over ``to_json``."""
    document = to_json(report)
    text = gates_markdown(document["checkpoints"], document["findings"], plot=plot,
                          style=LIVE_STYLE)
    if not report.unreadable:
        return text
    rows = [f"- {md_code(u.path.name)}: {md_text(u.message)}" for u in report.unreadable]
    return "\n".join([text, "Not read (the verdict covers the rest):", "", *rows, ""])


def plot_trajectory(report: GateReport, out: Path) -> Path | None:
    """PNG of gate mean against step/epoch, for checkpoints and every log; None if < 2 points."""
    series = []
    runs: dict[str, list] = {}
    for p in report.trajectory:               # one line per training run, never across runs
        runs.setdefault(p.series, []).append(p)
    for name, points in runs.items():
        if len(points) > 1:
            series.append((name or "checkpoints", report.trajectory_axis,
                           [p.x for p in points], [p.gate_mean for p in points]))
    for log, _ in report.logs:
        pts = log.gate_points
        if len(pts) > 1:
            series.append((log.source.name, "step", list(pts["step"]), list(pts["gate_mean"])))
    if not series:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=120)
    for label, axis, xs, ys in series:
        ax.plot(xs, ys, marker="o" if len(xs) < 40 else None,
                label=plot_text(f"{label} (by {axis})"))
    ax.axhline(0.0, color="0.7", linewidth=0.8)
    ax.set_xlabel(series[0][1])
    ax.set_ylabel("mean gate (raw)")
    ax.set_title("Gate trajectory")
    ax.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(out) as tmp:
        fig.savefig(tmp, format=out.suffix.lstrip(".") or "png")
    plt.close(fig)
    return out


def write_gate_outputs(report: GateReport, out: Path, inputs: list[Path]) -> None:
    """gates.json, gates.md and gate_trajectory.png into ``out`` (never onto an input)."""
    import json  # noqa: PLC0415

    from gatebench.rundir.outputs import check_not_input, ensure_out_dir  # noqa: PLC0415

    ensure_out_dir(out)
    for name in ("gates.json", "gates.md", "gate_trajectory.png"):
        check_not_input(out / name, inputs)
    plot = plot_trajectory(report, out / "gate_trajectory.png")
    atomic_write_text(out / "gates.json", json.dumps(report.to_json(), indent=2,
                                                     ensure_ascii=False))
    atomic_write_text(out / "gates.md", render_markdown(report, plot.name if plot else None))
