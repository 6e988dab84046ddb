"""One-to-one class-aware matching, GT->detector class mapping, detections files, YOLO plumbing."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from gatebench.errors import LayoutError, MetricError, ModelFileError
from gatebench.layouts import LayoutObject
from gatebench.metrics.detect import (
    COCO80_NAMES,
    COCO_ID_TO_NAME,
    Detection,
    YoloDetector,
    gt_label,
    load_detections,
    write_detections_jsonl,
)
from gatebench.metrics.matching import box_iou, match_boxes, summarize_matches
from gatebench.protocol import DetectionSpec


def strip(x1: float, x2: float) -> list[float]:
    """A full-height box: IoU between strips is the 1-D interval IoU."""
    return [x1, 0.0, x2, 1.0]


def test_box_iou() -> None:
    iou = box_iou(np.array([[0, 0, 0.5, 0.5]]), np.array([[0, 0, 0.5, 0.5], [0.25, 0, 0.75, 0.5],
                                                         [0.6, 0.6, 0.9, 0.9]]))
    assert iou == pytest.approx(np.array([[1.0, 1 / 3, 0.0]]))


def test_one_to_one_and_class_aware() -> None:
    gt = [strip(0.0, 0.4), strip(0.0, 0.4), strip(0.5, 0.9)]
    records = match_boxes(gt, ["cat", "cat", "dog"], [strip(0.0, 0.4), strip(0.5, 0.9)],
                          ["cat", "cat"], [0.9, 0.8])
    assert [r.matched for r in records] == [True, False, False]     # one det per GT; dog != cat
    assert records[0].iou == pytest.approx(1.0) and records[0].det_index == 0
    assert records[1].iou == 0.0 and records[1].det_index is None
    assert records[2].iou == 0.0                                    # wrong class never assigned


def test_assignment_maximises_matches_before_iou_sum() -> None:
    # IoU(A,d1)=.9, IoU(A,d2)=.46, IoU(B,d1)=.489, IoU(B,d2)=0: a pure max-sum assignment
    # (A-d2, B-d1: .949 > .9) would match nothing above 0.5; ours keeps A-d1.
    a, b = strip(0.0, 1.0), strip(0.46, 0.9)
    d1, d2 = strip(0.0, 0.9), strip(0.0, 0.46)
    records = match_boxes([a, b], ["x", "x"], [d1, d2], ["x", "x"])
    assert records[0].matched and records[0].iou == pytest.approx(0.9)
    assert not records[1].matched and records[1].iou == 0.0


def test_threshold_is_strict_and_iou_kept_when_unmatched() -> None:
    records = match_boxes([strip(0.0, 0.5)], ["x"], [strip(0.0, 0.25)], ["x"])   # IoU 0.5
    assert not records[0].matched and records[0].iou == pytest.approx(0.5)
    records = match_boxes([strip(0.0, 0.5)], ["x"], [strip(0.0, 0.3)], ["x"], iou_threshold=0.65)
    assert not records[0].matched and records[0].iou == pytest.approx(0.6)


def test_unscorable_excluded() -> None:
    records = match_boxes([strip(0, 0.4), strip(0.5, 0.9), strip(0.5, 0.9)], ["cat", None, "dog"],
                          [strip(0.5, 0.9)], ["dog"], scorable=[True, True, False])
    assert [r.scorable for r in records] == [True, False, False]
    summary = summarize_matches(records)
    assert summary == {"n_boxes": 3, "n_scorable": 1, "n_matched": 0, "iou_sum": 0.0,
                       "all_matched": False}
    assert summarize_matches(records[1:])["all_matched"] is None
    with pytest.raises(MetricError, match="one label per box"):
        match_boxes([strip(0, 1)], [], [], [])


def test_gt_label_mapping() -> None:
    assert len(COCO80_NAMES) == 80 and COCO_ID_TO_NAME[4] == "motorcycle"
    assert COCO_ID_TO_NAME[90] == "toothbrush" and 12 not in COCO_ID_TO_NAME
    labels = set(COCO80_NAMES)
    box = (0.1, 0.1, 0.5, 0.5)
    assert gt_label(LayoutObject("摩托车", box, "motorbike", 4), labels) == "motorcycle"
    assert gt_label(LayoutObject("摩托车", box, "Motorcycle"), labels) == "motorcycle"
    assert gt_label(LayoutObject("长颈鹿", box), labels, {"长颈鹿": "giraffe"}) == "giraffe"
    assert gt_label(LayoutObject("dog", box), labels) == "dog"
    assert gt_label(LayoutObject("独角兽", box, "unicorn"), labels) is None
    assert gt_label(LayoutObject("红色方块", box), {"red square"}, {"红色方块": "red square"}) \
        == "red square"


def test_detections_file(tmp_path: Path) -> None:
    dets = {"图片_一.png": [Detection((0.1, 0.2, 0.5, 0.6), "cat", 0.9)], "b.png": []}
    path = write_detections_jsonl(dets, tmp_path / "det.jsonl")
    assert "图片_一" in path.read_text(encoding="utf-8")
    back = load_detections(path)
    assert back["图片_一.png"][0] == Detection((0.1, 0.2, 0.5, 0.6), "cat", 0.9)
    assert back["b.png"] == []
    lines = path.read_text(encoding="utf-8").splitlines()
    for bad, reason in [('{"image": "c.png", "detections": [{"bbox": [0.1, 0.1, 2, 0.5], '
                         '"label": "cat"}]}', "inside [0, 1]"),
                        ('{"image": "c.png", "detections": [{"bbox": [0.1, 0.1, 0.2, 0.5]}]}',
                         "label"),
                        ('{"detections": []}', "'image'"),
                        (lines[0], "again")]:
        broken = tmp_path / "broken.jsonl"
        broken.write_text("\n".join([lines[0], lines[1], bad]) + "\n", encoding="utf-8")
        with pytest.raises(LayoutError) as info:
            load_detections(broken)
        assert "broken.jsonl:3" in str(info.value) and reason in str(info.value)


def test_yolo_missing_weights(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError) as info:
        YoloDetector.from_file(tmp_path / "yolov8n.pt", DetectionSpec())
    assert "yolov8n.pt" in str(info.value) and "never downloaded" in str(info.value)


def test_yolo_plumbing_random_weights() -> None:
    from gatebench.metrics.detect import import_ultralytics

    yolo = import_ultralytics().YOLO("yolov8n.yaml")          # config only: random weights
    detector = YoloDetector(yolo, DetectionSpec(imgsz=64, conf=0.0, batch_size=2), device="cpu")
    images = [np.random.default_rng(i).integers(0, 255, (48, 64, 3), dtype=np.uint8)
              for i in range(3)]
    out = detector.detect(images)
    assert len(out) == 3 and len(detector.labels) == 80
    for dets in out:
        for det in dets:
            assert all(0.0 <= v <= 1.0 for v in det.bbox) and det.label in detector.labels
            assert 0.0 <= det.score <= 1.0
    assert json.dumps([d.label for d in out[0]])
