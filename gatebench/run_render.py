"""Terminal rendering of a run: gate findings, the target table, metrics per gate scale."""
from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from gatebench.gates_render import render_findings
from gatebench.report import value_ci


def render_run(result, console: Console) -> None:
    results = result.results
    render_findings(result.gate_report.findings, console)
    metrics = Table(title=f"metrics ({results['n_layouts']} layouts, seed {results['seed']})",
                    title_justify="left")
    names: list[str] = []
    for row in results["results"]:
        names += [n for n in row["metrics"] if n not in names]
    for column in ["checkpoint", "scale", *names]:
        metrics.add_column(column, justify="left" if column == "checkpoint" else "right")
    for row in results["results"]:
        metrics.add_row(Path(row["checkpoint"]).name, f"{row['gate_scale']:g}",
                        *[value_ci(row["metrics"].get(n)) for n in names])
    console.print(metrics)
    targets = Table(title="targets", title_justify="left")
    for column in ("checkpoint", "scale", "metric", "value [95% CI]", "target", "pass"):
        targets.add_column(column)
    for t in result.targets:
        value = value_ci({"value": t.value, "ci_low": t.ci_low, "ci_high": t.ci_high}) \
            if t.computed else f"[yellow]{t.note}[/yellow]"
        mark = "[green]✓[/green]" if t.passed else "[red]✗[/red]"
        scale = "-" if t.gate_scale is None else f"{t.gate_scale:g}"
        targets.add_row(Path(t.checkpoint).name, scale, t.metric, value,
                        f"{t.op} {t.threshold:g}", mark)
    console.print(targets)
    gen = results["generation"]
    console.print(f"generated {gen['generated']} images, {gen['cached']} from cache, "
                  f"{results['timings'].get('total_s', 0):.1f} s total")
    style = "bold green" if results["verdict"] == "pass" else "bold red"
    console.print(f"verdict: [{style}]{results['verdict'].upper()}[/]  report: {result.paths['report']}")
