"""Terminal rendering of a run: gate findings, the target table, metrics per gate scale.

The terminal metrics table shows values only: a dozen "value [lo, hi]" columns do not fit a
terminal and end up as "0.…". The 95% CIs are in report.md (and the targets table here); a
console too narrow for every metric column gets the headline metrics only, and says so.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from gatebench.metrics import spec as metric_spec
from gatebench.render.gates import render_findings
from gatebench.render.format import fmt, value_ci
from gatebench.rundir.saved import label_map, label_of, row_label

HEADLINE = metric_spec.HEADLINE       # the table's headline metrics, in its order
COLUMN_CHARS = 9        # a metric column: a 5-7 character value plus borders and padding


def headline_metrics(results: dict[str, Any], names: Sequence[str]) -> list[str]:
    """The protocol targets' metrics, then HEADLINE; only those present, each once."""
    targets = [str(t.get("metric")) for t in (results.get("protocol") or {}).get("targets", [])]
    return [n for n in dict.fromkeys([*targets, *HEADLINE]) if n in names]


def metrics_table(results: dict[str, Any], names: Sequence[str]) -> Table:
    """Values only (3 decimals, as report.fmt), headers wrap at their words."""
    table = Table(title=f"metrics ({results['n_layouts']} layouts, seed {results['seed']})",
                  title_justify="left")
    rows = [(escape(row_label(r)), f"{r['gate_scale']:g}",
             *[_value(r["metrics"].get(n)) for n in names]) for r in results["results"]]
    table.add_column("checkpoint", no_wrap=True)      # rich narrows wrapable columns first
    table.add_column("scale", justify="right", no_wrap=True)
    for name in names:
        table.add_column(name.replace("_", " "), justify="right")
    for row in rows:
        table.add_row(*row)
    return table


def _value(metric: dict[str, Any] | None) -> str:
    return "-" if not metric or metric.get("value") is None else fmt(metric["value"])


def render_run(result, console: Console) -> None:
    results = result.results
    render_findings(result.gate_report.findings, console)
    names: list[str] = []
    for row in results["results"]:
        names += [n for n in row["metrics"] if n not in names]
    labels = label_map(results)
    label_width = max((len(v) for v in labels.values()), default=10)
    shown = names
    if label_width + 4 + COLUMN_CHARS * (len(names) + 1) > console.width:
        shown = headline_metrics(results, names) or names
    console.print(metrics_table(results, shown))
    report = result.paths.get("report") or Path(result.out_dir) / "report.md"
    what = "values only; their 95% CIs are" if shown == names else \
        f"{len(shown)} of {len(names)} metrics (narrow terminal); the full table with 95% CIs is"
    console.print(f"[dim]{what} in {escape(str(report))}[/dim]", soft_wrap=True)
    targets = Table(title="targets", title_justify="left")
    targets.add_column("checkpoint", no_wrap=True)    # labels stay whole; the CI wraps instead
    for column in ("scale", "metric", "value [95% CI]", "target", "pass"):
        targets.add_column(column, overflow="fold")
    for t in result.targets:
        value = value_ci({"value": t.value, "ci_low": t.ci_low, "ci_high": t.ci_high}) \
            if t.computed else f"[yellow]{escape(t.note)}[/yellow]"
        mark = "[green]✓[/green]" if t.passed else "[red]✗[/red]"
        scale = "-" if t.gate_scale is None else f"{t.gate_scale:g}"
        targets.add_row(escape(label_of(labels, t.checkpoint)), scale, t.metric, value,
                        f"{t.op} {t.threshold:g}", mark)
    console.print(targets)
    gen = results["generation"]
    console.print(f"generated {gen['generated']} images, {gen['cached']} from cache, "
                  f"{results['timings'].get('total_s', 0):.1f} s total")
    style = "bold green" if results["verdict"] == "pass" else "bold red"
    console.print(f"verdict: [{style}]{results['verdict'].upper()}[/]  report: {escape(str(report))}")
