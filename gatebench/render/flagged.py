"""The report's "Flagged images" strip: thumbnails of every garbled or blank image (up to a cap).

A garbled rate alone does not tell garbage from a false alarm; the user has to see the images.
Drawn with PIL from samples.jsonl (``garbled``/``blank`` flags and scores), in samples order.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from gatebench.files import atomic_output, atomic_write_text
from gatebench.render.escape import md_code, md_text, png_text

MAX_FLAGGED = 24
THUMB_PX = 200
COLUMNS = 6


def flagged_records(samples: pd.DataFrame) -> pd.DataFrame:
    """Rows flagged garbled or blank (older samples.jsonl without ``blank``: garbled only)."""
    if samples.empty:
        return samples
    hit = pd.Series(False, index=samples.index)
    for column in ("garbled", "blank"):
        if column in samples.columns:
            hit |= samples[column].fillna(False).astype(bool)
    return samples[hit]


def _caption(rec: pd.Series) -> str:
    what = [f"{name} {float(rec[name + '_score']):.2f}" for name in ("garbled", "blank")
            if bool(rec.get(name)) and rec.get(name + "_score") is not None]
    scale = rec.get("gate_scale")
    where = f"s={float(scale):g} " if scale is not None and not pd.isna(scale) else ""
    return f"{where}{' '.join(what)}"


def flagged_strip(samples: pd.DataFrame, images_root: Path, out: Path
                  ) -> tuple[Path | None, list[dict[str, Any]], int]:
    """(png, one row per thumbnail drawn, flagged in all); png None when nothing to draw.

    Thumbnails are numbered; the names (often Chinese, which PIL's default font cannot draw)
    go into the Markdown table under the strip."""
    from PIL import Image, ImageDraw, ImageFont  # noqa: PLC0415

    from gatebench.render.grids import image_cell  # noqa: PLC0415
    from gatebench.rundir.saved import resolve_image  # noqa: PLC0415

    flagged = flagged_records(samples)
    cells = []
    for _, rec in flagged.iterrows():
        path = resolve_image(rec.get("image_path") or rec.get("image"), images_root)
        if path is not None:
            cells.append((rec, image_cell(path, THUMB_PX)))
        if len(cells) == MAX_FLAGGED:
            break
    if not cells:
        return None, [], len(flagged)
    font = ImageFont.load_default(size=11)
    cols = min(COLUMNS, len(cells))
    lines = math.ceil(len(cells) / cols)
    sheet = Image.new("RGB", (cols * (THUMB_PX + 4), lines * (THUMB_PX + 34)), (255, 255, 255))
    pen = ImageDraw.Draw(sheet)
    for i, (rec, thumb) in enumerate(cells):
        x, y = (i % cols) * (THUMB_PX + 4), (i // cols) * (THUMB_PX + 34)
        sheet.paste(thumb, (x, y))
        pen.text((x + 2, y + THUMB_PX + 2), f"#{i + 1}", fill=(40, 40, 40), font=font)
        pen.text((x + 2, y + THUMB_PX + 17), png_text(_caption(rec), font, THUMB_PX - 4),
                 fill=(190, 30, 30), font=font)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(out) as tmp:
        sheet.save(tmp, format="PNG")
    rows = [{"image": str(rec.get("image")), "caption": _caption(rec)} for rec, _ in cells]
    return out, rows, len(flagged)


def flagged_section(info: dict[str, Any] | None) -> list[str]:
    """Markdown for the strip (``file``, ``rows``, ``total``); nothing when none was flagged."""
    if not info:
        return []
    shown, total = len(info["rows"]), info["total"]
    more = f" (the first {shown} of {total})" if shown < total else ""
    return ["## Flagged images", "",
            f"Images flagged garbled or blank{more}, with their scores (above 0.5 = flagged; "
            "a blank image is never also counted garbled). Check them by eye: a flag is a "
            "measurement, not a verdict on the adapter.", "",
            f"![flagged images]({info['file']})", "", "| # | image | flag |", "|---|---|---|",
            *[f"| {i} | {md_code(r['image'])} | {md_text(r['caption'])} |"
              for i, r in enumerate(info["rows"], start=1)], ""]


def write_score_report(document: dict[str, Any], samples: pd.DataFrame, images_root: Path,
                       out_dir: Path) -> Path:
    """`gatebench score --out`: report.md with the metrics (95% CI, N) and the flagged strip."""
    from gatebench.render.format import value_ci  # noqa: PLC0415

    png, rows, total = flagged_strip(samples, images_root, out_dir / "flagged.png")
    lines = [f"# gatebench score: {md_text(document.get('images'))}", "",
             f"{md_text(document.get('n_images'))} images, layouts "
             f"{md_code(document.get('layouts'))}, protocol {md_code(document.get('protocol'))}; "
             f"verdict **{md_text(document.get('verdict'))}**.", "",
             "| metric | value [95% CI] | N |", "|---|---|---|"]
    for name, metric in (document.get("metrics") or {}).items():
        lines.append(f"| {md_text(name)} | {value_ci(metric)} | {md_text(metric.get('n'))} |")
    for name, reason in (document.get("not_computed") or {}).items():
        lines.append(f"| {md_text(name)} | not computed ({md_text(reason)}) | - |")
    lines.append("")
    info = {"file": png.name, "rows": rows, "total": total} if png is not None else None
    lines += flagged_section(info) or [
        "## Flagged images", "", "No image was flagged garbled or blank.", ""]
    path = out_dir / "report.md"
    return atomic_write_text(path, "\n".join(lines))
