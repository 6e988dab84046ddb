"""Where the adapter wrote, drawn: its residual's energy map over the image it made.

The map is the one generation recorded beside the image (``writes.records.read_map``:
energy density of ||delta||^2 pooled over every cross-attention site and grounded step, 32x32,
scaled to its maximum), upsampled bilinearly to the cell and laid in red over a dimmed grey copy
of the image, so a write inside the boxes and a write all over the picture look different.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from gatebench.writes.records import read_map

HEAT = (232, 17, 45)


def write_scale(scales: Sequence[float | None]) -> float | None:
    """The gate scale whose writes a grid shows: 1 (the trained strength) if run, else the
    largest positive one; None when the adapter was never on."""
    positive = [s for s in scales if s is not None and s > 0]
    return 1.0 if 1.0 in positive else (max(positive) if positive else None)


def write_map(image: Path | None) -> Any:
    """The image's write map (uint8 array), or None."""
    return None if image is None else read_map(image)


def overlay(cell: Any, density: Any) -> Any:
    """``cell`` (a PIL RGB image) greyed and dimmed, with the write map in red over it."""
    from PIL import Image  # noqa: PLC0415

    heat = Image.fromarray(density, mode="L").resize(cell.size, Image.Resampling.BILINEAR)
    grey = cell.convert("L").point(lambda v: 60 + v * 0.45).convert("RGB")
    red = Image.new("RGB", cell.size, HEAT)
    return Image.composite(red, grey, heat.point(lambda v: min(255, int(v * 0.9))))
