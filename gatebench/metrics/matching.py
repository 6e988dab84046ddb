"""One-to-one, class-aware matching of ground-truth boxes to detections.

Definitions (also in the report):

* Matching is per class, with the Hungarian algorithm (``scipy.optimize.linear_sum_assignment``).
  A detection matches at most one GT box; a different class never matches. The assignment first
  maximises the number of pairs with IoU > threshold, then the total IoU (weight
  ``[iou > t] * BIG + iou``): the IoU>0.5 rate asks whether SOME one-to-one assignment places each
  box, so a greedy or pure sum-of-IoU assignment must not lose a match the boxes allow.
* ``matched``: the assigned detection has IoU strictly greater than the threshold (the user's
  target is stated as "IoU > 0.5", protocols/oracle-coco2014.toml).
* ``iou``: the IoU of the detection assigned to this GT box (even when <= threshold), 0.0 when no
  same-class detection overlaps it. mIoU = mean of ``iou`` over scorable GT boxes.
* GT boxes whose class the detector cannot name (``scorable=False``) take no part: no detection is
  assigned to them and every rate excludes them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

from gatebench.errors import MetricError

_BIG = 1e3


@dataclass(frozen=True)
class BoxMatch:
    gt_index: int
    label: str | None
    scorable: bool
    matched: bool
    iou: float
    det_index: int | None


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of xyxy boxes: (N, 4) x (M, 4) -> (N, M), float64."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0.0, None)
    inter = wh[..., 0] * wh[..., 1]
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, inter / union, 0.0)
    return iou


def match_boxes(gt_boxes: Sequence[Sequence[float]], gt_labels: Sequence[str | None],
                det_boxes: Sequence[Sequence[float]], det_labels: Sequence[str | None],
                det_scores: Sequence[float] | None = None, iou_threshold: float = 0.5,
                scorable: Sequence[bool] | None = None) -> list[BoxMatch]:
    """Per-GT match records (see the module docstring for the exact definitions).

    ``gt_labels`` are detector labels (None = unscorable); ``scorable`` may mark more boxes
    unscorable. ``det_scores`` are not used to match (AP uses them); accepted for one call shape.
    """
    n_gt, n_det = len(gt_boxes), len(det_boxes)
    if len(gt_labels) != n_gt or len(det_labels) != n_det:
        raise MetricError(f"expected one label per box, got {len(gt_labels)} labels for {n_gt} GT "
                         f"boxes and {len(det_labels)} for {n_det} detections")
    if det_scores is not None and len(det_scores) != n_det:
        raise MetricError(f"expected one score per detection, got {len(det_scores)} for {n_det}")
    ok = [lab is not None for lab in gt_labels]
    if scorable is not None:
        ok = [a and bool(b) for a, b in zip(ok, scorable, strict=True)]
    iou_all = box_iou(np.asarray(gt_boxes, dtype=np.float64).reshape(-1, 4),
                      np.asarray(det_boxes, dtype=np.float64).reshape(-1, 4))
    best_iou = np.zeros(n_gt)
    best_det: list[int | None] = [None] * n_gt
    for label in sorted({lab for lab, s in zip(gt_labels, ok, strict=True) if s}, key=str):
        gi = [i for i in range(n_gt) if ok[i] and gt_labels[i] == label]
        di = [j for j in range(n_det) if det_labels[j] == label]
        if not di:
            continue
        sub = iou_all[np.ix_(gi, di)]
        weight = (sub > iou_threshold) * _BIG + sub
        rows, cols = linear_sum_assignment(weight, maximize=True)
        for r, c in zip(rows, cols, strict=True):
            if sub[r, c] > 0:
                best_iou[gi[r]] = sub[r, c]
                best_det[gi[r]] = di[c]
    return [BoxMatch(i, gt_labels[i], ok[i], bool(ok[i] and best_iou[i] > iou_threshold),
                     float(best_iou[i]) if ok[i] else 0.0, best_det[i]) for i in range(n_gt)]


def summarize_matches(records: Sequence[BoxMatch]) -> dict[str, float | int | bool | None]:
    """Per-image counts: scorable, matched, IoU sum and all-matched (None: nothing scorable)."""
    scorable = [r for r in records if r.scorable]
    matched = sum(r.matched for r in scorable)
    return {"n_boxes": len(records), "n_scorable": len(scorable), "n_matched": matched,
            "iou_sum": float(sum(r.iou for r in scorable)),
            "all_matched": (matched == len(scorable)) if scorable else None}
