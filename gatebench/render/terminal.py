"""Terminal rendering: a run (gate findings, the target table, metrics per gate scale), a
`score` of images made elsewhere, and the `check-init` table.

The terminal metrics table shows values only: a dozen "value [lo, hi]" columns do not fit a
terminal and end up as "0.…". The 95% CIs are in report.md (and the targets table here). Every
table goes through ``render.fit.print_fitted``: a console too narrow for every metric column
gets the headline metrics only (then fewer), a table too wide for its cells gets one block per
row, and each says so; no number or name is ever cut.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from rich.console import Console

from gatebench.metrics import spec as metric_spec
from gatebench.render.escape import rich_text as escape  # markup literal, no control codes
from gatebench.render.fit import Col, print_fitted
from gatebench.render.format import fmt, value_ci
from gatebench.render.gates import render_findings
from gatebench.render.sections import sequential_of
from gatebench.rundir.results import verdict_of
from gatebench.rundir.saved import checkpoint_paths, label_map, label_of, row_label

if TYPE_CHECKING:
    from gatebench.score import ScoreResult
    from gatebench.verdict import TargetRow


def headline_metrics(results: dict[str, Any], names: Sequence[str]) -> list[str]:
    """The protocol targets' metrics, then metric_spec.HEADLINE; only those present, each once."""
    targets = [str(t.get("metric")) for t in (results.get("protocol") or {}).get("targets", [])]
    return [n for n in dict.fromkeys([*targets, *metric_spec.HEADLINE]) if n in names]


def print_metrics(results: dict[str, Any], names: Sequence[str], report: Path,
                  console: Console) -> None:
    """Values only (3 decimals, as report.fmt), headers wrap at their words. Too narrow for
    every metric: the other metrics leave first, then headline ones from the last; then one
    block per row. The line under it says which and where the full table with CIs is."""
    head = headline_metrics(results, names)

    def rank(name: str) -> int:          # higher leaves first; non-headline ones as a group
        if name in head:
            return len(head) - head.index(name)
        return len(names) + 1 if head else len(names) - names.index(name)

    columns = [Col("checkpoint"), Col("scale", "right"),
               *(Col(n.replace("_", " "), "right", rank(n)) for n in names)]
    order = {ck: i for i, ck in enumerate(checkpoint_paths(results))}     # series order
    rows = [[escape(row_label(r)), f"{r['gate_scale']:g}",
             *[_value(r["metrics"].get(n)) for n in names]]
            for r in sorted(results["results"],
                            key=lambda r: order.get(str(r["checkpoint"]), len(order)))]
    fitted = print_fitted(console, columns, rows, key_columns=2,
                          title=f"metrics ({results['n_layouts']} layouts, seed {results['seed']})")
    shown = len(fitted.shown) - 2
    what = {"table": "values only; their 95% CIs are",
            "records": "values only (narrow terminal: one block per row); their 95% CIs are",
            "reduced": f"{shown} of {len(names)} metrics (narrow terminal); the full table with "
                       "95% CIs is"}[fitted.layout]
    console.print(f"[dim]{what} in {escape(str(report))}[/dim]", soft_wrap=True)


def _value(metric: dict[str, Any] | None) -> str:
    return "-" if not metric or metric.get("value") is None else fmt(metric["value"])


def render_run(result, console: Console) -> None:
    results = result.results
    render_findings(result.gate_report.findings, console)
    for f in results.get("write_findings") or []:      # why placement fails, when it does
        console.print(f"[yellow]{escape(str(f['severity']).upper()):4}[/] "
                      f"[bold]{escape(f['code'])}[/bold] "
                      f"{escape(f['subject'])}: {escape(f['message'])}", soft_wrap=True,
                      highlight=False)
    names: list[str] = []
    for row in results["results"]:
        names += [n for n in row["metrics"] if n not in names]
    labels = label_map(results)
    report = result.paths.get("report") or Path(result.out_dir) / "report.md"
    print_metrics(results, names, report, console)
    targets, notes = [], []
    order = {ck: i for i, ck in enumerate(checkpoint_paths(results))}     # as report.md lists them
    for t in sorted(result.targets, key=lambda t: (order.get(str(t.checkpoint), len(order)),
                                                   -1.0 if t.gate_scale is None else t.gate_scale)):
        mark = "[green]✓[/green]" if t.passed else "[red]✗[/red]"
        scale = "-" if t.gate_scale is None else f"{t.gate_scale:g}"
        ci = f"[{fmt(t.ci_low)}, {fmt(t.ci_high)}]" if t.computed and t.ci_low is not None \
            and t.ci_high is not None else "-"
        key = [escape(label_of(labels, t.checkpoint)), scale, t.metric]
        targets.append([*key, fmt(t.value) if t.computed else "[yellow]not computed[/yellow]",
                        ci, f"{t.op} {t.threshold:g}", mark])
        if not t.computed:        # a sentence: under the table, where it cannot widen a column
            notes.append(f"[yellow]{' · '.join(key)}[/yellow]: {escape(t.note)}")
    columns = [Col("checkpoint"), Col("scale", "right"), Col("metric"), Col("value", "right"),
               Col("95% CI", drop=1), Col("target"), Col("pass")]
    print_fitted(console, columns, targets, title="targets", where=str(report), key_columns=3)
    for note in notes:
        console.print(note, soft_wrap=True, highlight=False)
    seq = sequential_of(results)
    if seq is not None:
        console.print(escape(stop_line(seq)), soft_wrap=True, highlight=False)
    gen = results["generation"]
    console.print(f"generated {gen['generated']} images, {gen['cached']} from cache, "
                  f"{results['timings'].get('total_s', 0):.1f} s total")
    if result.comparison is not None:
        from gatebench.render.compare import render_terminal  # noqa: PLC0415

        render_terminal(result.comparison, console, all_rows=False,
                        where=str(result.out_dir / "compare.json"))
        console.print(escape(f"regression verdict: {result.out_dir / 'compare.json'}"))
    render_verdict(results, console, f"report: {report}")


def render_verdict(results: dict[str, Any], console: Console, where: str = "") -> None:
    """The verdict line as results.json records it (rundir.results.decide_verdict), and why."""
    decision = verdict_of(results)
    style = "bold green" if decision["verdict"] == "pass" else "bold red"
    console.print(f"verdict: [{style}]{decision['verdict'].upper()}[/]  {escape(where)}",
                  soft_wrap=True)
    for reason in decision["reasons"]:
        console.print(f"  because {escape(reason)}", soft_wrap=True, highlight=False)


def stop_line(seq: dict[str, Any]) -> str:
    """`run --until-decided`: where it stopped and why, one line under the targets."""
    reason = str(seq.get("reason") or "").rstrip(".")
    split = f"alpha {seq['alpha']:g} split over {seq['decisions']} decisions"
    if seq["stopped_early"]:
        line = f"stopped at {seq['n_layouts']} of {seq['max_layouts']} layouts: {reason} ({split})"
        names = [str(m) for m in seq.get("set_level") or []]
        return line + (f"; {', '.join(names)} computed on the {seq['n_layouts']} images "
                       "generated" if names else "")
    if seq.get("decided") is None:
        return f"ran to N={seq['max_layouts']}: undecided earlier ({split})"
    return f"ran to N={seq['max_layouts']}: decided in the last round: {reason} ({split})"


def render_score(result: ScoreResult, targets: Sequence[TargetRow], images: Path, out: Path | None,
                 console: Console) -> None:
    """`gatebench score`: every metric with its CI, the metrics not computed and why (under the
    table: a reason is a sentence, it would make the value column too wide for any terminal),
    the targets."""
    rows = [[name, value_ci(value.to_dict()), str(value.n)]
            for name, value in result.metrics.items()]
    rows += [[name, "[yellow]not computed[/yellow]", "-"] for name in result.not_computed]
    where = "`gatebench score --json`" if out is None else str(out / "score.json")
    print_fitted(console, [Col("metric"), Col("value [95% CI]"), Col("n", "right")], rows,
                 title=escape(f"{len(result.samples)} images in {images}"), where=where)
    for name, reason in result.not_computed.items():
        console.print(f"[yellow]{escape(name)} not computed[/yellow]: {escape(reason)}",
                      soft_wrap=True, highlight=False)
    for t in targets:
        mark = "[green]pass[/green]" if t.passed else "[red]FAIL[/red]"
        console.print(f"target {escape(t.metric)} {escape(t.op)} {t.threshold:g}: {mark} "
                      f"{escape(t.note)}")
    if out is not None:
        console.print(escape(f"wrote {out / 'samples.jsonl'}, {out / 'score.json'} and "
                             f"{out / 'report.md'}"))


def render_check_init(results: Sequence[Any], tolerance: float, console: Console) -> None:
    """`gatebench check-init`: identity and gradient per init scheme (or checkpoint)."""
    columns = [Col(c, "left" if c == "init" else "right")
               for c in ("init", "identity max |diff|", "identity", "grad |gate|",
                         "grad |to_out|", "gradient", "verdict")]

    def mark(ok: bool) -> str:
        return "[green]ok[/green]" if ok else "[red]FAIL[/red]"

    rows = [[escape(r.scheme), f"{r.identity_max_abs_diff:.2e}", mark(r.identity_ok),
             f"{r.gate_grad_norm:.2e}", f"{r.to_out_grad_norm:.2e}", mark(r.gradient_ok),
             mark(r.ok)] for r in results]
    print_fitted(console, columns, rows, title=f"check-init (identity tolerance {tolerance:g})")
