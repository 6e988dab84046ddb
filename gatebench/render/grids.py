"""Sample grids: a few layouts, one row per gate scale, ground-truth boxes coloured by whether the
detector matched them, the detections themselves when samples.jsonl recorded them, and a row
showing where the adapter wrote (render/write_maps.py) when the images carry write maps.

Drawn with PIL, not matplotlib: exact pixels. Tiny images (32 px) are enlarged by an integer
factor with nearest-neighbour so pixels stay pixels and box outlines stay sharp.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterator, Sequence

import pandas as pd

from gatebench.files import atomic_output
from gatebench.render.escape import png_text
from gatebench.render.write_maps import overlay, write_map, write_scale
from gatebench.rundir.saved import resolve_image

CELL_PX = 192            # grid cells are enlarged to at least this many pixels
MAX_CELL_PX = 256        # and large images shrunk to at most this
GRID_LAYOUTS = 4
COLOURS = {"matched": "#00b050", "missed": "#e8112d", "unscorable": "#7f7f7f",
           "unscored": "#ff8c00", "detection": "#1f78b4"}
LEGEND = {"matched": "GT box, matched (IoU > 0.5)", "missed": "GT box, missed (dashed)",
          "unscorable": "GT box, class the detector cannot name (dotted)",
          "unscored": "GT box (no detector)", "detection": "detection (thin)"}


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
        image = image.resize((image.size[0] * factor, image.size[1] * factor), Image.Resampling.NEAREST)
    if max(image.size) != side:
        scale = side / max(image.size)
        image = image.resize((max(1, round(image.size[0] * scale)),
                              max(1, round(image.size[1] * scale))), Image.Resampling.LANCZOS)
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
    r, g, b = (int(colour[i:i + 2], 16) for i in (1, 3, 5))
    return r, g, b


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
    scales: list[float | None] = [*sorted({float(s) for s in df["gate_scale"].dropna()})] or [None]
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
    wscale = write_scale(scales)
    writes = {c: (*cell, density) for (r, c), cell in cells.items() if scales[r] == wscale
              for density in [write_map(cell[1])] if density is not None}
    side = _cell_side(next((p for _, p in cells.values() if p is not None), None))
    font, small = ImageFont.load_default(size=13), ImageFont.load_default(size=11)
    left, top, gap, under, legend_h = 110, 48, 10, 18, 44
    width = left + len(layouts) * (side + gap) + gap
    height = top + (len(scales) + bool(writes)) * (side + under + gap) + legend_h
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    pen = ImageDraw.Draw(canvas)
    what = ": one row per gate scale, one column per layout"
    room = max(80, width - left - 8 - int(pen.textlength(what, font=font)))
    pen.text((left, 8), png_text(label, font, room) + what, fill=(0, 0, 0), font=font)
    used: set[str] = set()
    missing = 0
    for c, layout in enumerate(layouts):
        name = png_text(layout, small, side + gap - 4, max_chars=24)
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
    if writes:                      # one more row: where the adapter wrote at ``wscale``
        oy = top + len(scales) * (side + under + gap)
        pen.text((left - 8, oy + side // 2 - 8), "where it", fill=(0, 0, 0), font=font,
                 anchor="rm")
        pen.text((left - 8, oy + side // 2 + 8), f"wrote ({wscale:g})", fill=(0, 0, 0),
                 font=font, anchor="rm")
        for c, (rec, path, density) in writes.items():
            ox = left + c * (side + gap)
            canvas.paste(overlay(image_cell(path, side), density), (ox, oy))
            for box in rec.get("boxes") if isinstance(rec.get("boxes"), list) else []:
                _rectangle(pen, box["bbox"], side, ox, oy, "unscored")
            lift = rec.get("effect_lift")
            if not _missing(lift):
                pen.text((ox + side // 2, oy + side + 3), f"lift {float(lift):.2f}", font=small,
                         anchor="mt", fill=(50, 50, 50))
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
    with atomic_output(out) as tmp:
        canvas.save(tmp, format="PNG", optimize=False)
    return out, layouts, missing
