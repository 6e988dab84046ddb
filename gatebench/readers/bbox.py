"""Box values of layout and detection rows: one list of four numbers -> a normalised xyxy box.

The scale of a box (normalised or 0-1000, ARCHITECTURE.md "The user's formats") is decided from all four of its
values, and a row never mixes scales (layouts.py checks the row); a value that fits neither is
an error naming the box, never a silent reinterpretation.
"""
from __future__ import annotations

from typing import Any

Box = tuple[float, float, float, float]

CLIP_TOLERANCE = 0.01   # boxes this far outside [0, 1] are clipped; further out is an error
SCALE_1000_ABOVE = 1.5  # the user's layouts: bbox values above 1.5 mean a 0-1000 scale


class BadRow(Exception):
    """A row is invalid: the row's reader (layouts.py, metrics/detect.py) turns it into a
    LayoutError naming the file and line, or a counted skip."""


def parse_bbox(raw: Any, *, scale_1000: bool | None = None) -> tuple[Box, bool]:
    """Normalised xyxy from a list of 4 numbers; returns (box, clipped). Raises BadRow."""
    if not isinstance(raw, (list, tuple)) or len(raw) != 4 or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in raw):
        raise BadRow(f"expected bbox to be 4 numbers [x1, y1, x2, y2], got {raw!r}")
    values = [float(v) for v in raw]
    if any(v != v or v in (float("inf"), float("-inf")) for v in values):
        raise BadRow(f"expected finite bbox values, got {raw!r}")
    if scale_1000 is None:
        scale_1000 = bbox_scale_1000(values, raw)
    if scale_1000:
        values = [v / 1000.0 for v in values]
    if min(values) < -CLIP_TOLERANCE or max(values) > 1 + CLIP_TOLERANCE:
        raise BadRow(f"expected bbox inside [0, 1] (or 0-1000), got {raw!r}")
    clipped = [min(max(v, 0.0), 1.0) for v in values]
    x1, y1, x2, y2 = clipped
    if not (x2 > x1 and y2 > y1):
        raise BadRow(f"expected x2 > x1 and y2 > y1, got {raw!r}")
    return (x1, y1, x2, y2), clipped != values


def bbox_scale_1000(values: list[float], raw: Any) -> bool:
    """The scale of one box, decided from all four values: every value <= 1.5 is normalised;
    otherwise 0-1000, but only when the box is one on that scale too. [0.2, 0.3, 1.6, 0.9] has
    one stray coordinate: read as 0-1000 it shrank to a 1.4 x 0.6 speck that the cleaning
    dropped without a word; such a mix of scales is refused instead."""
    if max(values) <= SCALE_1000_ABOVE:
        return False
    x1, y1, x2, y2 = values
    if x2 - x1 <= SCALE_1000_ABOVE or y2 - y1 <= SCALE_1000_ABOVE:
        raise BadRow(f"expected bbox values all in [0, 1] (normalised) or all on the 0-1000 "
                     f"scale, got a mix {raw!r}")
    return True
