"""Spatial relations between a layout's objects: left / right / above / below, kept or not.

The user's relation accuracy (their ``rel_acc_all`` / ``rel_acc_matched``), restated:

* A pair (i, j), i < j, of a layout's objects has a relation when their box centres differ by at
  least ``min_sep`` along the dominant axis (``|dx| >= |dy|``: horizontal, else vertical); with
  ``d = centre_i - centre_j``: ``left`` (dx < 0), ``right``, ``above`` (dy < 0, image y points
  down), ``below``. Closer pairs carry no relation and are not counted.
* The relation holds in the image when the detections assigned to i and j keep it with a
  ``margin``: ``left`` is ``cx_i + margin < cx_j``, and so on.
* A pair whose objects are not both detected fails in ``relation_rate`` and is left out of
  ``relation_rate_matched``. A pair with an object the detector cannot name (unscorable) is in
  neither: it is counted apart (``rel_pairs_unscorable``), as unscorable boxes are for IoU.

Per image three counts (``rel_pairs``, ``rel_pairs_matched``, ``rel_held``): the metrics are
ratios of their sums (gatebench.metrics.spec), so they get CIs, compare and --until-decided.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from gatebench.readers.bbox import Box

RELATIONS = ("left", "right", "above", "below")


def _centre(box: Sequence[float]) -> tuple[float, float]:
    return (box[0] + box[2]) / 2.0, (box[1] + box[3]) / 2.0


def relation(a: Sequence[float], b: Sequence[float], min_sep: float) -> str | None:
    """The relation of box ``a`` to box ``b`` in the layout, or None (centres too close)."""
    (ax, ay), (bx, by) = _centre(a), _centre(b)
    dx, dy = ax - bx, ay - by
    if abs(dx) >= abs(dy):
        return None if abs(dx) < min_sep else ("left" if dx < 0 else "right")
    return None if abs(dy) < min_sep else ("above" if dy < 0 else "below")


def holds(rel: str, a: Sequence[float], b: Sequence[float], margin: float) -> bool:
    """Whether detected boxes ``a``, ``b`` keep ``rel`` with ``margin`` (normalised units)."""
    (ax, ay), (bx, by) = _centre(a), _centre(b)
    if rel == "left":
        return ax + margin < bx
    if rel == "right":
        return ax > bx + margin
    if rel == "above":
        return ay + margin < by
    if rel == "below":
        return ay > by + margin
    raise ValueError(f"expected a relation in {', '.join(RELATIONS)}, got {rel!r}")


@dataclass(frozen=True)
class RelationCounts:
    pairs: int              # pairs of scorable objects with a relation
    matched: int            # ... whose two objects are both detected
    held: int               # ... whose relation the detections keep
    unscorable: int         # pairs with a relation and an object the detector cannot name


def relation_counts(gt_boxes: Sequence[Sequence[float]], scorable: Sequence[bool],
                    detected: Sequence[Box | Sequence[float] | None], *, min_sep: float,
                    margin: float) -> RelationCounts:
    """Count one image's pairs. ``detected[i]``: the detection box assigned to object i (None:
    not detected); ``scorable[i]`` False: the detector cannot name object i."""
    n = len(gt_boxes)
    if len(scorable) != n or len(detected) != n:
        raise ValueError(f"expected one scorable flag and one detection per object, got "
                         f"{len(scorable)} and {len(detected)} for {n} objects")
    pairs = matched = held = unscorable = 0
    for i in range(n):
        for j in range(i + 1, n):
            rel = relation(gt_boxes[i], gt_boxes[j], min_sep)
            if rel is None:
                continue
            if not (scorable[i] and scorable[j]):
                unscorable += 1
                continue
            pairs += 1
            a, b = detected[i], detected[j]
            if a is None or b is None:
                continue
            matched += 1
            held += holds(rel, a, b, margin)
    return RelationCounts(pairs, matched, held, unscorable)
