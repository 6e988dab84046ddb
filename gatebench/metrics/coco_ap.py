"""COCO-style AP50 and AP (IoU 0.50:0.95) through faster-coco-eval.

We do not re-implement AP: the maintained COCO evaluator (a drop-in for pycocotools) defines the
number that papers report. Boxes arrive normalised; COCO wants pixel xywh and uses pixel areas
for its small/medium/large split, so each image's size is needed.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from gatebench.errors import MetricError

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class APImage:
    """One image's scorable GT and its detections (normalised xyxy; labels are detector names)."""

    width: int
    height: int
    gt_boxes: Sequence[Sequence[float]]
    gt_labels: Sequence[str]
    det_boxes: Sequence[Sequence[float]]
    det_labels: Sequence[str]
    det_scores: Sequence[float]


def _xywh(box: Sequence[float], w: int, h: int) -> list[float]:
    x1, y1, x2, y2 = (float(v) for v in box)
    return [x1 * w, y1 * h, (x2 - x1) * w, (y2 - y1) * h]


def coco_ap(images: Sequence[APImage], max_dets: int = 100) -> dict[str, float]:
    """``{"ap50": ..., "ap": ...}`` in [0, 1] over all images and GT classes (COCO rules).

    Detections of classes with no GT box anywhere do not lower AP (COCO averages over GT classes).
    Raises MetricError when there is no GT box at all (COCO would return -1).
    """
    from faster_coco_eval import COCO, COCOeval_faster  # noqa: PLC0415 (heavy C++ extension)

    labels = sorted({lab for im in images for lab in (*im.gt_labels, *im.det_labels)})
    cat_id = {lab: i + 1 for i, lab in enumerate(labels)}
    gt = {"images": [], "annotations": [], "categories": [
        {"id": i, "name": lab} for lab, i in cat_id.items()]}
    dets: list[dict[str, object]] = []
    for image_id, im in enumerate(images, start=1):
        if len(im.gt_boxes) != len(im.gt_labels) or not (
                len(im.det_boxes) == len(im.det_labels) == len(im.det_scores)):
            raise MetricError(f"expected one label per box and one score per detection, got "
                              f"mismatched lengths in image {image_id}")
        gt["images"].append({"id": image_id, "width": im.width, "height": im.height})
        for box, lab in zip(im.gt_boxes, im.gt_labels, strict=True):
            xywh = _xywh(box, im.width, im.height)
            gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": image_id,
                                      "category_id": cat_id[lab], "bbox": xywh,
                                      "area": xywh[2] * xywh[3], "iscrowd": 0})
        for box, lab, score in zip(im.det_boxes, im.det_labels, im.det_scores, strict=True):
            dets.append({"image_id": image_id, "category_id": cat_id[lab],
                         "bbox": _xywh(box, im.width, im.height), "score": float(score)})
    if not gt["annotations"]:
        raise MetricError("expected at least one scorable ground-truth box for AP, got none")
    quiet = _log.debug
    coco_gt = COCO(gt, print_function=quiet)
    coco_dt = coco_gt.loadRes(dets) if dets else coco_gt.loadRes([])
    evaluator = COCOeval_faster(coco_gt, coco_dt, iouType="bbox", print_function=quiet)
    evaluator.params.maxDets = [1, 10, max_dets]
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    stats = np.asarray(evaluator.stats, dtype=np.float64)
    # COCO writes -1 when nothing defines the number; with GT present AP is defined, so clamp.
    return {"ap": float(max(stats[0], 0.0)), "ap50": float(max(stats[1], 0.0))}
