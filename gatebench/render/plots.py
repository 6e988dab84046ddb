"""PNG figures of a report, drawn from saved results only (matplotlib, Agg backend).

* metric vs gate scale (one panel per metric, one line per checkpoint, CI error bars, targets)
* metric vs epoch/step (one line per gate scale; scale 0, the base model, as a dashed reference)
* gate trajectory over checkpoints (mean raw gate and mean tanh)
* sample grids: a few layouts, one row per gate scale, ground-truth boxes coloured by whether the
  detector matched them, the detections themselves when samples.jsonl recorded them.

Tiny images (32 px) are enlarged by an integer factor with nearest-neighbour so pixels stay
pixels and box outlines stay sharp.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import pandas as pd

from gatebench.metrics import spec as metric_spec
from gatebench.rundir.saved import (checkpoint_axis, checkpoint_paths, is_one_training_run,
                                 label_map, label_of, resolve_image)

CELL_PX = 192            # grid cells are enlarged to at least this many pixels
MAX_CELL_PX = 256        # and large images shrunk to at most this
GRID_LAYOUTS = 4
COLOURS = {"matched": "#00b050", "missed": "#e8112d", "unscorable": "#7f7f7f",
           "unscored": "#ff8c00", "detection": "#1f78b4"}
LEGEND = {"matched": "GT box, matched (IoU > 0.5)", "missed": "GT box, missed (dashed)",
          "unscorable": "GT box, class the detector cannot name (dotted)",
          "unscored": "GT box (no detector)", "detection": "detection (thin)"}


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
    return f"{name} ({arrow}{extra})"


def _legend(fig: Any, axes: Sequence[Any]) -> float:
    """One legend for all panels, below them (never over the data); returns its height share."""
    seen: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
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
    fig.savefig(out, metadata={"Software": None})
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
    for ax, name in zip(axes, names):
        for i, ck in enumerate(ckpts):
            pts = [(float(r["gate_scale"]), _value(r, name)) for r in results["results"]
                   if str(r["checkpoint"]) == ck]
            pts = sorted((s, v) for s, v in pts if v is not None)
            if not pts:
                continue
            x = np.array([s for s, _ in pts]) + (i - (len(ckpts) - 1) / 2) * spread
            v = np.array([p[1][0] for p in pts])
            err = np.array([[p[1][0] - p[1][1] for p in pts], [p[1][2] - p[1][0] for p in pts]])
            ax.errorbar(x, v, yerr=np.clip(err, 0, None), marker="o", ms=3.5, capsize=2.5,
                        label=label_of(labels, ck))
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
    for ax, name in zip(axes, names):
        for scale in scales:
            pts = sorted((xs[str(r["checkpoint"])], _value(r, name)) for r in results["results"]
                         if np.isclose(float(r["gate_scale"]), scale) and _value(r, name))
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


def grid_layouts(samples: pd.DataFrame, label: str, k: int = GRID_LAYOUTS) -> list[str]:
    """The first ``k`` layouts of a checkpoint (by its samples.jsonl label), in samples order."""
    df = _of_checkpoint(samples, label)
    return list(dict.fromkeys(df["layout_id"].astype(str)))[:k]


def _of_checkpoint(samples: pd.DataFrame, label: str) -> pd.DataFrame:
    return samples[samples["checkpoint"].astype(str) == label] if "checkpoint" in samples \
        else samples


def image_cell(path: Path | None, side: int) -> Any:
    """The image as a ``side`` x ``side`` cell: integer nearest-neighbour enlargement for small
    images (pixels stay pixels), Lanczos for large ones; None if the file is missing."""
    from PIL import Image  # noqa: PLC0415

    if path is None:
        return None
    with Image.open(path) as im:
        image = im.convert("RGB")
    longest = max(image.size)
    if longest <= side:
        factor = max(1, side // longest)
        image = image.resize((image.size[0] * factor, image.size[1] * factor), Image.NEAREST)
    if max(image.size) != side:
        scale = side / max(image.size)
        image = image.resize((max(1, round(image.size[0] * scale)),
                              max(1, round(image.size[1] * scale))), Image.LANCZOS)
    canvas = Image.new("RGB", (side, side), (255, 255, 255))
    canvas.paste(image, ((side - image.size[0]) // 2, (side - image.size[1]) // 2))
    return canvas


def _cell_side(path: Path | None) -> int:
    """Cells are at least CELL_PX (tiny images x6 for 32 px), at most MAX_CELL_PX."""
    from PIL import Image  # noqa: PLC0415

    if path is None:
        return CELL_PX
    with Image.open(path) as im:
        longest = max(im.size)
    if longest < CELL_PX:
        return longest * math.ceil(CELL_PX / longest)
    return min(longest, MAX_CELL_PX)


def _box_kind(box: dict[str, Any]) -> str:
    if box.get("scorable") is False:
        return "unscorable"
    if box.get("matched") is None:
        return "unscored"
    return "matched" if box["matched"] else "missed"


def _cell_label(record: pd.Series) -> tuple[str, bool]:
    parts = []
    if not _missing(record.get("n_matched")):
        parts.append(f"{int(record['n_matched'])}/{int(record['n_scorable'])} matched")
    garbled = bool(record.get("garbled")) if not _missing(record.get("garbled")) else False
    if garbled:
        parts.append("garbled")
    return " · ".join(parts), garbled


def _rgb(colour: str) -> tuple[int, int, int]:
    return tuple(int(colour[i:i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]


def _segments(x0: float, y0: float, x1: float, y1: float,
              dash: tuple[int, int] | None) -> Iterator[tuple[float, float, float, float]]:
    """The outline of a rectangle as line segments (dashed when ``dash`` = (on, off) px)."""
    sides = [((x0, y0), (x1, y0)), ((x1, y0), (x1, y1)), ((x1, y1), (x0, y1)), ((x0, y1), (x0, y0))]
    for (ax, ay), (bx, by) in sides:
        if dash is None:
            yield (ax, ay, bx, by)
            continue
        length = math.hypot(bx - ax, by - ay)
        step, pos = sum(dash), 0.0
        while pos < length:
            end = min(pos + dash[0], length)
            yield (ax + (bx - ax) * pos / length, ay + (by - ay) * pos / length,
                   ax + (bx - ax) * end / length, ay + (by - ay) * end / length)
            pos += step


DASHES: dict[str, tuple[int, int] | None] = {"matched": None, "missed": (9, 5),
                                             "unscorable": (3, 4), "unscored": (12, 4),
                                             "detection": None}


def _rectangle(pen: Any, box: Sequence[float], side: int, ox: int, oy: int, kind: str) -> None:
    x0, y0, x1, y1 = (ox + box[0] * (side - 1), oy + box[1] * (side - 1),
                      ox + box[2] * (side - 1), oy + box[3] * (side - 1))
    width = 1 if kind == "detection" else 3
    for seg in _segments(x0, y0, x1, y1, DASHES[kind]):
        if kind != "detection":                      # white halo: visible on any image
            pen.line(seg, fill=(255, 255, 255), width=width + 2)
        pen.line(seg, fill=_rgb(COLOURS[kind]), width=width)


def sample_grid(samples: pd.DataFrame, checkpoint: str, images_root: Path, out: Path,
                layouts: Sequence[str] | None = None, label: str | None = None
                ) -> tuple[Path | None, list[str], int]:
    """(png, layout ids shown, images missing on disk) for one checkpoint, whose samples.jsonl
    ``label`` defaults to its file name (as older runs wrote); png None if empty.

    Drawn with PIL, not matplotlib: exact pixels, and fast enough to run after every `run`.
    """
    from PIL import Image, ImageDraw, ImageFont  # noqa: PLC0415

    label = label or Path(checkpoint).name
    df = _of_checkpoint(samples, label)
    if df.empty or "layout_id" not in df.columns:
        return None, [], 0
    layouts = list(layouts or grid_layouts(samples, label))
    scales = sorted({float(s) for s in df["gate_scale"].dropna()}) or [None]
    ids = df["layout_id"].astype(str)
    cells: dict[tuple[int, int], tuple[pd.Series, Path | None]] = {}
    for r, scale in enumerate(scales):
        for c, layout in enumerate(layouts):
            hit = df[(ids == layout) & ((df["gate_scale"].astype(float) == scale)
                                        if scale is not None else True)]
            if not hit.empty:
                rec = hit.iloc[0]
                cells[(r, c)] = (rec, resolve_image(rec.get("image_path") or rec.get("image"),
                                                    images_root))
    side = _cell_side(next((p for _, p in cells.values() if p is not None), None))
    font, small = ImageFont.load_default(size=13), ImageFont.load_default(size=11)
    left, top, gap, under, legend_h = 110, 48, 10, 18, 44
    width = left + len(layouts) * (side + gap) + gap
    height = top + len(scales) * (side + under + gap) + legend_h
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    pen = ImageDraw.Draw(canvas)
    pen.text((left, 8), f"{label}: one row per gate scale, one column per layout",
             fill=(0, 0, 0), font=font)
    used: set[str] = set()
    missing = 0
    for c, layout in enumerate(layouts):
        name = layout if len(layout) <= 24 else layout[:23] + "…"
        pen.text((left + c * (side + gap) + side // 2, top - 6), name, fill=(0, 0, 0),
                 font=small, anchor="ms")
    for r, scale in enumerate(scales):
        oy = top + r * (side + under + gap)
        label = "" if scale is None else ("scale 0 (base)" if scale == 0 else f"scale {scale:g}")
        pen.text((left - 8, oy + side // 2), label, fill=(0, 0, 0), font=font, anchor="rm")
        for c in range(len(layouts)):
            ox = left + c * (side + gap)
            if (r, c) not in cells:
                pen.rectangle((ox, oy, ox + side - 1, oy + side - 1), fill=(235, 235, 235))
                continue
            rec, path = cells[(r, c)]
            image = image_cell(path, side)
            if image is None:
                missing += 1
                pen.rectangle((ox, oy, ox + side - 1, oy + side - 1), fill=(235, 235, 235))
                pen.text((ox + side // 2, oy + side // 2), "image missing", fill=(90, 90, 90),
                         font=small, anchor="mm")
            else:
                canvas.paste(image, (ox, oy))
            dets = rec.get("detections")
            for det in dets if isinstance(dets, list) else []:
                _rectangle(pen, det["bbox"], side, ox, oy, "detection")
                used.add("detection")
            for box in rec.get("boxes") if isinstance(rec.get("boxes"), list) else []:
                kind = _box_kind(box)
                used.add(kind)
                _rectangle(pen, box["bbox"], side, ox, oy, kind)
            text, garbled = _cell_label(rec)
            pen.text((ox + side // 2, oy + side + 3), text, font=small, anchor="mt",
                     fill=_rgb(COLOURS["missed"]) if garbled else (50, 50, 50))
    x, y = left, height - legend_h + 8
    for kind in [k for k in COLOURS if k in used]:
        if x + 260 > width and x > left:
            x, y = left, y + 18
        for x0, y0, x1, y1 in _segments(x, y + 6, x + 40, y + 6, DASHES[kind]):
            if x1 > x0:    # the top side of a flat "rectangle" is the legend's line sample
                pen.line((x0, y0, x1, y1), fill=_rgb(COLOURS[kind]),
                         width=1 if kind == "detection" else 3)
        pen.text((x + 46, y + 6), LEGEND[kind], fill=(0, 0, 0), font=small, anchor="lm")
        x += 52 + int(pen.textlength(LEGEND[kind], font=small)) + 18
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out, optimize=False)
    return out, layouts, missing
