"""PNG figures of a report, drawn from saved results only (matplotlib, Agg backend).

* metric vs gate scale (one panel per metric, one line per checkpoint, CI error bars, targets)
* metric vs epoch/step (one line per gate scale; scale 0, the base model, as a dashed reference)
* gate trajectory over checkpoints (mean raw gate and mean tanh)

The sample grids (images, not charts) are drawn with PIL in ``render/grids.py``.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from gatebench.files import atomic_output
from gatebench.metrics import spec as metric_spec
from gatebench.render.escape import plot_text
from gatebench.rundir.saved import (
    checkpoint_axis,
    checkpoint_paths,
    is_one_training_run,
    label_map,
    label_of,
)


def _plt() -> Any:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    plt.rcParams.update({"font.size": 8, "axes.titlesize": 9})
    return plt


def metric_names(results: dict[str, Any]) -> list[str]:
    """Metrics with a value in at least one row, in the results' own order."""
    names: list[str] = []
    for row in results["results"]:
        names += [n for n, m in row["metrics"].items()
                  if n not in names and m and m.get("value") is not None]
    return names


def _value(row: dict[str, Any], name: str) -> tuple[float, float, float] | None:
    m = row["metrics"].get(name)
    if not m or m.get("value") is None:
        return None
    v = float(m["value"])
    lo = v if m.get("ci_low") is None else float(m["ci_low"])
    hi = v if m.get("ci_high") is None else float(m["ci_high"])
    return v, lo, hi


def _panels(plt: Any, n: int) -> tuple[Any, list[Any]]:
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(max(5.0, 3.3 * cols), 2.5 * rows + 0.6),
                             dpi=110, squeeze=False)
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def _targets(results: dict[str, Any], name: str) -> list[tuple[str, float, str]]:
    """(op, threshold, scales it applies to) of each target on ``name``."""
    found: dict[tuple[str, float], list[float]] = {}
    for t in results.get("targets", []):
        if t["metric"] == name:
            scales = found.setdefault((t["op"], float(t["threshold"])), [])
            if t.get("gate_scale") is not None and float(t["gate_scale"]) not in scales:
                scales.append(float(t["gate_scale"]))
    return [(op, th, ", ".join(f"{s:g}" for s in sorted(sc))) for (op, th), sc in found.items()]


def _draw_targets(ax: Any, results: dict[str, Any], name: str) -> None:
    """A red dashed line per target, labelled IN the panel (a shared legend cannot say which
    metric a threshold belongs to)."""
    for op, threshold, scales in _targets(results, name):
        ax.axhline(threshold, color="#d73027", linestyle="--", linewidth=0.9, label="target")
        where = f" (scale {scales})" if scales else ""
        ax.annotate(f"target {op} {threshold:g}{where}", xy=(1.0, threshold),
                    xycoords=("axes fraction", "data"), xytext=(-2, 2),
                    textcoords="offset points", ha="right", va="bottom", fontsize=6.5,
                    color="#d73027")


def _title(name: str) -> str:
    """Metric name with its direction, and (no CI) for set-level metrics."""
    arrow = "↑ better" if metric_spec.higher_is_better(name) else "↓ better"
    extra = ", set-level, no CI" if metric_spec.is_set_level(name) else ""
    return f"{plot_text(name)} ({arrow}{extra})"


def _legend(fig: Any, axes: Sequence[Any]) -> float:
    """One legend for all panels, below them (never over the data); returns its height share."""
    seen: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            seen.setdefault(label, handle)
    if not seen:
        return 0.0
    ncol = min(4, len(seen))
    fig.legend(list(seen.values()), list(seen), loc="lower center", ncol=ncol, fontsize=7,
               frameon=False)
    rows = math.ceil(len(seen) / ncol)
    return min(0.3, 0.2 * rows / fig.get_size_inches()[1])


def _save(fig: Any, plt: Any, out: Path, bottom: float = 0.0) -> Path:
    fig.tight_layout(rect=(0, bottom, 1, 1))
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_output(out) as tmp:
            fig.savefig(tmp, format=out.suffix.lstrip(".") or "png", metadata={"Software": None})
    finally:
        plt.close(fig)
    return out


def plot_metric_vs_scale(results: dict[str, Any], out: Path) -> Path | None:
    names = metric_names(results)
    scales = sorted({float(r["gate_scale"]) for r in results["results"]})
    if not names or len(scales) < 2:
        return None
    plt = _plt()
    fig, axes = _panels(plt, len(names))
    ckpts, labels = checkpoint_paths(results), label_map(results)
    spread = (max(scales) - min(scales)) * 0.015
    for ax, name in zip(axes, names, strict=True):
        for i, ck in enumerate(ckpts):
            raw = [(float(r["gate_scale"]), _value(r, name)) for r in results["results"]
                   if str(r["checkpoint"]) == ck]
            pts = sorted((s, v) for s, v in raw if v is not None)
            if not pts:
                continue
            x = np.array([s for s, _ in pts]) + (i - (len(ckpts) - 1) / 2) * spread
            v = np.array([p[1][0] for p in pts])
            err = np.array([[p[1][0] - p[1][1] for p in pts], [p[1][2] - p[1][0] for p in pts]])
            ax.errorbar(x, v, yerr=np.clip(err, 0, None), marker="o", ms=3.5, capsize=2.5,
                        label=plot_text(label_of(labels, ck)))
        _draw_targets(ax, results, name)
        ax.set_title(_title(name))
        ax.set_xlabel("gate scale")
        ax.set_xticks(scales)
        ax.grid(alpha=0.3)
    fig.suptitle("Metrics vs gate scale\n(error bars: 95% CI; scale 0 = base model)", fontsize=9)
    return _save(fig, plt, out, _legend(fig, axes))


def plot_metric_vs_epoch(results: dict[str, Any], out: Path) -> Path | None:
    names = metric_names(results)
    if not is_one_training_run(results) or not names:
        return None
    axis, xs = checkpoint_axis(results)
    scales = sorted({float(r["gate_scale"]) for r in results["results"]})
    plt = _plt()
    fig, axes = _panels(plt, len(names))
    for ax, name in zip(axes, names, strict=True):
        for scale in scales:
            pts = sorted((xs[str(r["checkpoint"])], value) for r in results["results"]
                         if np.isclose(float(r["gate_scale"]), scale)
                         for value in [_value(r, name)] if value)
            if not pts:
                continue
            x = np.array([p[0] for p in pts])
            v = np.array([p[1][0] for p in pts])
            lo = np.array([p[1][1] for p in pts])
            hi = np.array([p[1][2] for p in pts])
            if scale == 0.0:
                ax.plot(x, v, color="0.5", linestyle="--", linewidth=1,
                        label="scale 0 (base model)")
                continue
            line, = ax.plot(x, v, marker="o", ms=3.5, label=f"scale {scale:g}")
            ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.15, linewidth=0)
        _draw_targets(ax, results, name)
        ax.set_title(_title(name))
        ax.set_xlabel(axis)
        ax.set_xticks(sorted(xs.values()))
        ax.grid(alpha=0.3)
    fig.suptitle(f"Metrics vs {axis} (shaded: 95% CI)", fontsize=9)
    return _save(fig, plt, out, _legend(fig, axes))


def plot_gate_trajectory(results: dict[str, Any], out: Path) -> Path | None:
    """Gate mean over the run's checkpoints (from results.json stats; >= 2 checkpoints)."""
    entries = [c for c in results.get("checkpoints", []) if c.get("stats")]
    if len(entries) < 2 or not is_one_training_run(results):
        return None
    axis, xs = checkpoint_axis(results)
    pts = sorted((xs.get(str(c["path"]), float(i + 1)), c["stats"]) for i, c in enumerate(entries))
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.0), dpi=110)
    x = [p[0] for p in pts]
    ax.plot(x, [_float(p[1].get("raw_mean")) for p in pts], marker="o", label="mean raw gate")
    ax.plot(x, [_float(p[1].get("mean")) for p in pts], marker="s", label="mean tanh(gate)")
    ax.axhline(0.0, color="0.7", linewidth=0.8)
    ax.set(xlabel=axis, xticks=x, ylabel="gate", title="Gate trajectory over checkpoints")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, plt, out)


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))
