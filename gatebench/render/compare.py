"""How a Comparison is shown: the `--metric` flag, a rich diff table, a Markdown report section.

Kept apart from the statistics in ``compare.py`` so the rule that decides the exit code stays
short enough to read in one sitting.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from rich.console import Console

from gatebench.compare import CompareRow, Comparison
from gatebench.errors import GatebenchError
from gatebench.metrics.spec import (
    DEFAULT_MARGINS,
    IMAGE_METRICS,
    LOWER_IS_BETTER,
    NAMED_MARGIN,
    SET_METRICS,
    join_names,
)
from gatebench.render.escape import md_code, md_text
from gatebench.render.escape import rich_text as escape  # markup literal, no control codes
from gatebench.render.fit import Col, print_fitted

_STYLE = {"regression": "bold red", "improved": "green", "ok": "", "not gated": "dim",
          "not compared": "yellow"}
_MARK = {"regression": "✗ regression", "improved": "▲ improved", "ok": "✓ ok",
         "not gated": "not gated", "not compared": "not compared"}


def parse_metric_options(items: Sequence[str]) -> dict[str, float | None]:
    """``NAME=MAX_DROP`` / ``NAME`` (default margin) / ``NAME=off`` (report, do not gate)."""
    known = IMAGE_METRICS + SET_METRICS
    out: dict[str, float | None] = {}
    for item in items:
        name, _, value = item.partition("=")
        name = name.strip()
        if name not in known:
            raise GatebenchError(f"expected --metric NAME=MAX_DROP with NAME one of "
                                 f"{', '.join(known)}, got {item!r}")
        if not value.strip():
            out[name] = DEFAULT_MARGINS.get(name, NAMED_MARGIN)
        elif value.strip().lower() in ("off", "none"):
            out[name] = None
        else:
            try:
                margin = float(value)
            except ValueError:
                margin = -1.0
            if not margin >= 0:
                raise GatebenchError(f"expected a margin >= 0 (or 'off') in --metric {item!r}, "
                                     f"got {value!r}")
            out[name] = margin
    return out


def _f(value: float | None, digits: int = 4) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}" if abs(value) < 10 else f"{value:.2f}"


def _signed(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:+.{digits}f}"


def diff_text(row: CompareRow) -> str:
    text = _signed(row.diff)
    if row.ci_low is not None:
        text += f" [{_signed(row.ci_low)}, {_signed(row.ci_high)}]"
    return text


def seq_text(row: CompareRow) -> str:
    """The difference's anytime-valid bounds and what they decide ("-": no sequence)."""
    if row.seq_low is None:
        return "-"
    return (f"[{_signed(row.seq_low)}, {_signed(row.seq_high)}]"
            + (f" {row.seq_decision}" if row.seq_decision else ""))


def margin_text(row: CompareRow) -> str:
    if row.margin is None:
        return "-"
    bad = "rise" if row.direction == "lower" else "drop"
    return f"{bad} ≤ {row.margin:g}"


def _checkpoint(row: CompareRow) -> str:
    if row.gate_scale == 0:
        return "(base model)"
    b = row.baseline_label or Path(row.baseline_checkpoint).name      # compare.json before labels
    c = row.candidate_label or Path(row.candidate_checkpoint).name
    return c if b == c else f"{b} → {c}"


def render_terminal(comparison: Comparison, console: Console, *, all_rows: bool = True,
                    where: str = "`gatebench compare --json`") -> None:
    """The diff table (regressions red; stacked rows when the terminal is too narrow for it:
    ``where`` names the full table) and the verdict line."""
    s = comparison.settings
    title = (f"paired comparison: candidate - baseline ({s['ci_level']:.0%} CI, "
             f"{s['n_boot']} bootstrap replicates over layouts, seed {s['seed']})")
    sequences = any(r.seq_low is not None for r in comparison.rows)
    columns = [Col(name, "right" if name in ("scale", "baseline", "candidate") else "left")
               for name in ("checkpoint", "scale", "metric", "baseline", "candidate", "Δ [CI]",
                            *(("anytime-valid",) if sequences else ()), "allowed", "status")]
    rows = []
    for row in comparison.rows:
        if not all_rows and row.status in ("ok", "not gated"):
            continue
        style = _STYLE.get(row.status, "")
        rows.append([escape(_checkpoint(row)), f"{row.gate_scale:g}", row.metric,
                     _f(row.baseline), _f(row.candidate), diff_text(row),
                     *((seq_text(row),) if sequences else ()), margin_text(row),
                     f"[{style}]{_MARK[row.status]}[/]" if style else _MARK[row.status]])
    print_fitted(console, columns, rows, title=title, where=where, key_columns=3)
    if any(r.kind == "set" for r in comparison.rows):
        console.print(f"[dim]{', '.join(SET_METRICS)} are set-level: point differences without a "
                      "paired CI, gated only when named with --metric[/dim]")
    for note in sorted({r.note for r in comparison.rows if r.note and r.kind == "paired"}):
        console.print(f"[dim]note: {escape(note)}[/dim]")
    for warning in comparison.warnings:
        console.print(f"[yellow]warning:[/yellow] {escape(warning)}", soft_wrap=True)
    n = len(comparison.regressions)
    style = "bold red" if n else "bold green"
    console.print(f"regression check: [{style}]{'REGRESSION' if n else 'PASS'}[/] "
                  f"({n} regression{'s' if n != 1 else ''} in {sum(r.gated for r in comparison.rows)}"
                  f" gated comparisons)")


def _sequences_sentence(settings: dict[str, Any]) -> str:
    """What the anytime-valid bounds beside the bootstrap CI are (compare.json's settings)."""
    seq = settings.get("sequences") or {}
    if not seq.get("rows"):
        return ""
    return (f" \"anytime-valid\" bounds are confidence sequences of the difference over the "
            f"layouts in their seeded order (overall alpha {seq['alpha']:g}, {seq['split']}): "
            f"valid however a run was stopped, and what `--until-decided` decides by; a "
            f"\"regression\" / \"no regression\" beside them is decided at that error rate.")


def render_markdown(document: dict[str, Any]) -> str:
    """The report section, from the verdict JSON (so `gatebench report` can re-render it)."""
    rows = document.get("rows", [])
    s = document.get("settings", {})
    base = document.get("baseline", {})
    folder = Path(str(base.get("results", ""))).parent.name or base.get("results")
    n = document.get("regressions", 0)
    lines = ["## Regression check against the baseline", "",
             f"**{'REGRESSION' if n else 'PASS'}** — {n} regression{'s' if n != 1 else ''} in "
             f"{sum(1 for r in rows if r['gated'])} gated comparisons. Baseline "
             f"{md_code(f'{folder}/results.json')} (created {md_text(base.get('created'))}).", "",
             f"Candidate - baseline on the same layouts and seeds, paired bootstrap over layouts "
             f"({s.get('ci_level', 0.95):.0%} CI, {s.get('n_boot')} replicates, seed "
             f"{s.get('seed')}). A regression is a change in the bad direction whose whole CI "
             f"lies beyond the allowed margin; {join_names(LOWER_IS_BETTER)} regress by rising. "
             f"{'/'.join(SET_METRICS)} are set-level: point differences, no CI, gated only when "
             f"named with `--metric`.{_sequences_sentence(s)}", ""]
    level = f"{s.get('ci_level', 0.95):.0%}"
    sequences = any(r.get("seq_low") is not None for r in rows)
    extra = ("anytime-valid | ", "---|") if sequences else ("", "")
    header = [f"| checkpoint | gate scale | metric | baseline | candidate | Δ [{level} CI] | "
              f"{extra[0]}allowed | status |", f"|---|---:|---|---:|---:|---|{extra[1]}---|---|"]

    def table(selected: list[dict[str, Any]]) -> list[str]:
        out = list(header)
        for r in selected:
            row = CompareRow(**r)
            mark = f"**{_MARK[row.status]}**" if row.status == "regression" else _MARK[row.status]
            seq = f"{seq_text(row)} | " if sequences else ""
            out.append(f"| {md_code(_checkpoint(row))} | {row.gate_scale:g} | "
                       f"{md_text(row.metric)} | "
                       f"{_f(row.baseline)} | {_f(row.candidate)} | {diff_text(row)} | "
                       f"{seq}{margin_text(row)} | {mark} |")
        return out

    notable = [r for r in rows if r["status"] in ("regression", "improved", "not compared")]
    quiet = sum(1 for r in rows if r["status"] == "ok")
    if notable:
        lines += table(notable)
        lines += ["", f"The other {quiet} gated comparisons are within their margins."]
    else:
        lines.append(f"All {quiet} gated comparisons are within their margins.")
    lines += ["", '<details markdown="1"><summary>every comparison</summary>', ""] + table(rows) + [
        "", "</details>"]
    for warning in document.get("warnings", []):
        lines.append(f"\n> warning: {md_text(warning)}")
    return "\n".join(lines) + "\n"

