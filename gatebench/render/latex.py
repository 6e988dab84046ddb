"""LaTeX (booktabs) tables of a saved run, ready to ``\\input`` into a paper.

Values carry their bootstrap CI as ``\\pm`` half-width when the percentile interval is symmetric
at the printed precision, else as ``^{+a}_{-b}`` (percentile intervals often are not symmetric,
and a symmetric ``\\pm`` would misstate them). Needs ``\\usepackage{booktabs}`` and ``amssymb``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from gatebench.metrics import spec as metric_spec
from gatebench.render.escape import clean, tex_text
from gatebench.render.format import Figures, fmt, fmt_against
from gatebench.render.sections import early_set_level, sequential_of, sequential_rows, stop_sentence
from gatebench.rundir.results import verdict_of
from gatebench.rundir.saved import checkpoint_paths, label_map, label_of

PRETTY = {m.name: m.tex_label for m in metric_spec.METRICS.values()}   # TeX name + arrow
_OPS = {">": "$>$", ">=": r"$\geq$", "<": "$<$", "<=": r"$\leq$"}


def _digits(value: float) -> int:
    return 1 if abs(value) >= 10 else 3


def tex_value(metric: dict[str, Any] | None, digits: int | None = None) -> str:
    """``$v \\pm h$`` / ``$v^{+a}_{-b}$`` / ``$v$`` / ``--`` (not computed)."""
    if not metric or metric.get("value") is None:
        return "--"
    v = float(metric["value"])
    d = digits or _digits(v)
    if metric.get("ci_low") is None or metric.get("ci_high") is None:
        return f"${v:.{d}f}$"
    plus, minus = float(metric["ci_high"]) - v, v - float(metric["ci_low"])
    if f"{plus:.{d}f}" == f"{minus:.{d}f}":
        return f"${v:.{d}f} \\pm {plus:.{d}f}$"
    return f"${v:.{d}f}^{{+{plus:.{d}f}}}_{{-{minus:.{d}f}}}$"


def _ckpt(label: str) -> str:
    return r"\texttt{" + tex_text(label) + "}"


def targets_table(results: dict[str, Any]) -> list[str]:
    level = results["protocol"].get("scoring", {}).get("ci_level", 0.95)
    name = tex_text(results["protocol"]["name"])
    passed = sum(bool(t["passed"]) for t in results["targets"])
    lines = [r"\begin{table}[t]", r"\centering",
             rf"\caption{{Targets of protocol \texttt{{{name}}}: value with {level:.0%} bootstrap "
             rf"CI over {results['n_layouts']} layouts (seed {results['seed']}); "
             rf"{passed} of {len(results['targets'])} pass.}}".replace("%", r"\%"),
             r"\label{tab:gatebench-targets}", r"\begin{tabular}{llllrlc}", r"\toprule",
             r"Checkpoint & Scale & Metric & Value & $N$ & Target & Pass \\", r"\midrule"]
    straddle = False
    order, labels = {ck: i for i, ck in enumerate(checkpoint_paths(results))}, label_map(results)
    rows = sorted(enumerate(results["targets"]), key=lambda it: (
        order.get(str(it[1]["checkpoint"]), len(order)),
        -1.0 if it[1].get("gate_scale") is None else float(it[1]["gate_scale"]), it[0]))
    for _, t in rows:
        value = r"\textit{not computed}"
        if t["computed"]:   # enough decimals that the printed value agrees with pass/fail
            shown = fmt_against(float(t["value"]), t["op"], float(t["threshold"]))
            decimals = len(shown.partition(".")[2])
            value = tex_value(t, None if shown == fmt(float(t["value"])) else decimals)
        scale = "--" if t.get("gate_scale") is None else f"{t['gate_scale']:g}"
        who = "all" if t["checkpoint"] == "*" else _ckpt(label_of(labels, t["checkpoint"]))
        mark = r"\checkmark" if t["passed"] else r"$\times$"
        if t["passed"] and t.get("ci_clear") is False:
            mark, straddle = r"\checkmark$^*$", True
        n = "--" if t.get("n") is None else str(t["n"])
        lines.append(f"{who} & {scale} & {PRETTY.get(t['metric'], tex_text(t['metric']))} & "
                     f"{value} & {n} & {_OPS.get(t['op'], tex_text(t['op']))} {t['threshold']:g} & "
                     f"{mark} \\\\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    if straddle:
        lines[2] = lines[2][:-1] + r" $^*$: passes on the value, but the CI crosses the threshold.}"
    return lines


def _bound(value: Any) -> str:
    return "--" if value is None else f"{float(value):.{_digits(float(value))}f}"


def _prose(text: str) -> str:
    """Escaped running text; comparison signs in math mode (a text-mode < prints as ¡)."""
    out = tex_text(text)
    for sign, tex in (("<=", r"$\leq$"), (">=", r"$\geq$"), ("<", "$<$"), (">", "$>$")):
        out = out.replace(sign, tex)
    return out


def sequential_table(results: dict[str, Any]) -> list[str]:
    """`run --until-decided`: each row's confidence-sequence bounds at the stop and decision."""
    seq = sequential_of(results) or {}
    labels, early = label_map(results), early_set_level(results)
    note = f" Set-level metrics ({', '.join(early)}) were computed on the {seq['n_layouts']} " \
           "images generated." if early else ""
    caption = (f"{stop_sentence(seq)} Anytime-valid betting confidence sequences, alpha "
               f"{seq['alpha']:g} overall, split {seq['split']}: valid at every n at once, so "
               f"stopping when they decide keeps the error rate.{note}")
    lines = [r"\begin{table}[t]", r"\centering", r"\caption{" + _prose(caption) + "}",
             r"\label{tab:gatebench-sequential}", r"\begin{tabular}{llllll}", r"\toprule",
             r"Checkpoint & Scale & Metric & Target & Bounds at stop & Decision \\", r"\midrule"]
    for row in sequential_rows(results):
        who = "all" if row["checkpoint"] == "*" else _ckpt(label_of(labels, row["checkpoint"]))
        scale = "--" if row.get("gate_scale") is None else f"{row['gate_scale']:g}"
        bounds = "--" if row.get("lower") is None and row.get("upper") is None else \
            f"$[{_bound(row.get('lower'))}, {_bound(row.get('upper'))}]$"
        lines.append(f"{who} & {scale} & {PRETTY.get(row['metric'], tex_text(row['metric']))} "
                     f"& {_OPS.get(row['op'], tex_text(row['op']))} {row['threshold']:g} & "
                     f"{bounds} & {tex_text(row.get('decision') or 'undecided')} \\\\")
    return lines + [r"\bottomrule", r"\end{tabular}", r"\end{table}"]


def _columns(results: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(group, scale label, results row): scale 0 once as "Base" when all checkpoints share it."""
    rows = results["results"]
    zero = [r for r in rows if float(r["gate_scale"]) == 0.0]
    shared = len(zero) > 1 and all(r["metrics"] == zero[0]["metrics"] for r in zero)
    cols = [("Base", "$s{=}0$", zero[0])] if shared else []
    for ck in checkpoint_paths(results):
        for r in sorted((r for r in rows if str(r["checkpoint"]) == ck),
                        key=lambda r: float(r["gate_scale"])):
            if shared and float(r["gate_scale"]) == 0.0:
                continue
            cols.append((ck, f"$s{{=}}{float(r['gate_scale']):g}$", r))
    return cols


def metrics_table(results: dict[str, Any]) -> list[str]:
    from gatebench.render.plots import metric_names  # noqa: PLC0415

    names = metric_names(results)
    cols, labels = _columns(results), label_map(results)
    level = results["protocol"].get("scoring", {}).get("ci_level", 0.95)
    groups: list[tuple[str, int]] = []
    for group, _, _ in cols:
        if groups and groups[-1][0] == group:
            groups[-1] = (group, groups[-1][1] + 1)
        else:
            groups.append((group, 1))
    head, rules, start = ["Metric"], [], 2
    for group, span in groups:
        label = group if group == "Base" else _ckpt(label_of(labels, group))
        head.append(rf"\multicolumn{{{span}}}{{c}}{{{label}}}")
        rules.append(rf"\cmidrule(lr){{{start}-{start + span - 1}}}")
        start += span
    lines = [r"\begin{table}[t]", r"\centering",
             rf"\caption{{Metrics by checkpoint and gate scale $s$ ({level:.0%} bootstrap CI over "
             rf"{results['n_layouts']} layouts; Base: the base model, $s{{=}}0$, shared by all "
             rf"checkpoints). FID/KID and AP are set-level (no CI).}}".replace("%", r"\%"),
             r"\label{tab:gatebench-metrics}", r"\begin{tabular}{l" + "c" * len(cols) + "}",
             r"\toprule", " & ".join(head) + r" \\", "".join(rules),
             " & ".join([""] + [scale for _, scale, _ in cols]) + r" \\", r"\midrule"]
    for name in names:
        cells = [tex_value(row["metrics"].get(name)) for _, _, row in cols]
        lines.append(" & ".join([PRETTY.get(name, tex_text(name))] + cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return lines


def figure_block(file: str, caption: str, label: str) -> list[str]:
    return [r"\begin{figure}[t]", r"\centering",
            rf"\includegraphics[width=\linewidth]{{{file}}}", rf"\caption{{{caption}}}",
            rf"\label{{{label}}}", r"\end{figure}"]


def render_latex(results: dict[str, Any], *, figures: Figures | None = None,
                 comparison: dict[str, Any] | None = None) -> str:
    """A .tex fragment: targets table, metrics table, optional figures and regression table."""
    versions = results.get("versions", {})
    decision = verdict_of(results, comparison)
    out = [f"% gatebench report: {tex_text(results['protocol']['name'])} (gatebench "
           f"{clean(versions.get('gatebench'))}), re-rendered from results.json",
           "% needs \\usepackage{booktabs}, \\usepackage{amssymb} (\\checkmark) and graphicx",
           f"% verdict {decision['verdict']}; gate health {decision['parts']['gates']['status']}; protocol "
           f"sha256 {clean(results.get('protocol_sha256'))}; layout ids sha256 "
           f"{clean(results.get('layout_ids_sha256'))}", ""]
    out += targets_table(results) + [""]
    if sequential_of(results):
        out += sequential_table(results) + [""]
    out += metrics_table(results) + [""]
    if comparison:
        out += regression_table(comparison) + [""]
    if figures and figures.metric_vs_scale:
        out += figure_block(figures.metric_vs_scale, "Metrics vs gate scale (95\\% CI).",
                            "fig:gatebench-scale") + [""]
    if figures and figures.metric_vs_epoch:
        out += figure_block(figures.metric_vs_epoch, "Metrics over training checkpoints.",
                            "fig:gatebench-epoch") + [""]
    return "\n".join(out)


def regression_table(doc: dict[str, Any]) -> list[str]:
    rows = [r for r in doc.get("rows", []) if r["gated"] and r["diff"] is not None]
    lines = [r"\begin{table}[t]", r"\centering",
             r"\caption{Candidate minus baseline, paired bootstrap over layouts. A regression is a "
             r"change in the bad direction whose whole CI lies beyond the margin.}",
             r"\label{tab:gatebench-regression}", r"\begin{tabular}{llllcl}", r"\toprule",
             r"Checkpoint & Scale & Metric & $\Delta$ [CI] & Margin & Status \\", r"\midrule"]
    for r in rows:
        ci = "" if r["ci_low"] is None else f" [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]"
        who = r.get("candidate_label") or Path(str(r["candidate_checkpoint"])).name
        lines.append(f"{_ckpt(who)} & {r['gate_scale']:g} & "
                     f"{PRETTY.get(r['metric'], tex_text(r['metric']))} & ${r['diff']:+.3f}$"
                     f"{ci} & {r['margin']:g} & {tex_text(r['status'])} \\\\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return lines
