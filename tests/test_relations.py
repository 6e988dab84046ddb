"""relation_rate / relation_rate_matched: the user's rule on hand-made layouts, known answers."""
from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from gatebench.errors import ProtocolError
from gatebench.layouts import Layout, LayoutObject
from gatebench.metrics import spec as metric_spec
from gatebench.metrics.detect import Detection
from gatebench.metrics.relations import holds, relation, relation_counts
from gatebench.protocol import DataSpec, DetectionSpec, Protocol, ScoringSpec, parse_protocol
from gatebench.score import ImageItem, score_images

PROTOCOL = Protocol(name="test", data=DataSpec(min_area=0.0, max_area=1.0, min_side=0.0),
                    scoring=ScoringSpec(bootstrap=50))
CAT, DOG = (0.1, 0.3, 0.5, 0.7), (0.5, 0.3, 0.9, 0.7)          # cat left of dog (centres 0.4 apart)
BIRD = (0.3, 0.0, 0.7, 0.2)                                      # above both


def obj(name: str, box: tuple[float, ...]) -> LayoutObject:
    return LayoutObject(name=name, bbox=box, name_en=name)


def score(tmp_path: Path, objects: list[LayoutObject], dets: list[Detection],
          protocol: Protocol = PROTOCOL) -> dict:
    path = tmp_path / "one.png"
    Image.new("RGB", (32, 32), (120, 130, 140)).save(path)
    layout = Layout(layout_id="one", caption="", objects=tuple(objects))
    result = score_images([ImageItem(path, layout)], protocol, detections={"one.png": dets},
                          image_health=False)
    return {"metrics": {k: v.value for k, v in result.metrics.items()},
            "not_computed": result.not_computed, "row": result.samples.iloc[0]}


def test_relation_rule_dominant_axis_and_min_sep() -> None:
    assert relation(CAT, DOG, 0.1) == "left" and relation(DOG, CAT, 0.1) == "right"
    assert relation(BIRD, CAT, 0.1) == "above" and relation(CAT, BIRD, 0.1) == "below"
    assert relation(CAT, (0.15, 0.3, 0.55, 0.7), 0.1) is None       # 0.05 apart: no relation
    # dx = 0.3, dy = 0.35: vertical dominates although dx alone would pass min_sep
    assert relation((0.0, 0.0, 0.2, 0.2), (0.3, 0.35, 0.5, 0.55), 0.1) == "above"
    assert holds("left", CAT, DOG, 0.02) and not holds("left", DOG, CAT, 0.02)
    # centres 0.015 apart: kept without a margin, not with the user's 0.02
    assert holds("left", (0.0, 0, 0.2, 1), (0.015, 0, 0.215, 1), 0.0)
    assert not holds("left", (0.0, 0, 0.2, 1), (0.015, 0, 0.215, 1), 0.02)


def test_relation_counts_unscorable_and_undetected() -> None:
    counts = relation_counts([CAT, DOG, BIRD], [True, True, False], [CAT, None, BIRD],
                             min_sep=0.1, margin=0.02)
    # cat-dog: counted, dog undetected; cat-bird, dog-bird: bird unscorable, counted apart
    assert (counts.pairs, counts.matched, counts.held, counts.unscorable) == (1, 0, 0, 2)


def test_right_order_gives_one(tmp_path: Path) -> None:
    out = score(tmp_path, [obj("cat", CAT), obj("dog", DOG)],
                [Detection(CAT, "cat", 0.9), Detection(DOG, "dog", 0.9)])
    assert out["metrics"]["relation_rate"] == 1.0
    assert out["metrics"]["relation_rate_matched"] == 1.0
    assert (out["row"]["rel_pairs"], out["row"]["rel_held"]) == (1, 1)


def test_swapped_objects_give_zero(tmp_path: Path) -> None:
    # each detection still overlaps its own object's box (so both are detected), but the cat
    # is now right of the dog
    cat_right, dog_left = (0.45, 0.3, 0.85, 0.7), (0.15, 0.3, 0.55, 0.7)
    out = score(tmp_path, [obj("cat", CAT), obj("dog", DOG)],
                [Detection(cat_right, "cat", 0.9), Detection(dog_left, "dog", 0.9)])
    assert out["metrics"]["relation_rate"] == 0.0
    assert out["metrics"]["relation_rate_matched"] == 0.0
    assert out["row"]["rel_pairs_matched"] == 1
    # relation_min_iou 0.5: these detections no longer count, so no matched pair is left
    strict = PROTOCOL.replace(detection={"relation_min_iou": 0.5})
    out = score(tmp_path, [obj("cat", CAT), obj("dog", DOG)],
                [Detection(cat_right, "cat", 0.9), Detection(dog_left, "dog", 0.9)], strict)
    assert out["metrics"]["relation_rate"] == 0.0
    assert "relation_rate_matched" not in out["metrics"]
    assert out["not_computed"]["relation_rate_matched"] == metric_spec.NO_MATCHED_PAIRS


def test_unmatched_object_fails_in_rate_and_is_excluded_in_matched(tmp_path: Path) -> None:
    # three pairs with a relation: cat-dog kept; cat-bird and dog-bird have an undetected bird
    out = score(tmp_path, [obj("cat", CAT), obj("dog", DOG), obj("bird", BIRD)],
                [Detection(CAT, "cat", 0.9), Detection(DOG, "dog", 0.9)])
    assert out["metrics"]["relation_rate"] == pytest.approx(1 / 3)
    assert out["metrics"]["relation_rate_matched"] == 1.0
    row = out["row"]
    assert (row["rel_pairs"], row["rel_pairs_matched"], row["rel_held"]) == (3, 1, 1)


def test_wrong_class_detection_is_not_the_object(tmp_path: Path) -> None:
    out = score(tmp_path, [obj("cat", CAT), obj("dog", DOG)],
                [Detection(CAT, "cat", 0.9), Detection(DOG, "horse", 0.9)])
    assert out["metrics"]["relation_rate"] == 0.0
    assert "relation_rate_matched" not in out["metrics"]


def test_pairs_bound_the_sequential_denominator() -> None:
    ratio = metric_spec.METRICS["relation_rate"].ratio
    assert ratio is not None and ratio.max_denominator(6) == 15
    assert metric_spec.METRICS["iou50_rate"].ratio.max_denominator(6) == 6
    assert metric_spec.METRICS["clip_score"].ratio.max_denominator(6) == 1


def test_relation_thresholds_are_validated_with_their_line(tmp_path: Path) -> None:
    text = 'name = "x"\n[detection]\nconf = 0.25\nrelation_min_sep = 1.5\n'
    with pytest.raises(ProtocolError) as exc:
        parse_protocol(text, tmp_path / "p.toml")
    assert exc.value.line == 4 and "relation_min_sep" in str(exc.value)
    text = 'name = "x"\n[detection]\nrelation_margin = "wide"\n'
    with pytest.raises(ProtocolError) as exc:
        parse_protocol(text, tmp_path / "p.toml")
    assert exc.value.line == 3
    ok = parse_protocol('name = "x"\n[detection]\nrelation_min_sep = 0.2\n', tmp_path / "p.toml")
    assert ok.detection == DetectionSpec(relation_min_sep=0.2)


def test_on_a_detections_file_right_order_one_swapped_zero(tmp_path: Path) -> None:
    import json

    from gatebench.metrics.detect import write_detections_jsonl
    from gatebench.score import score_folder

    images = tmp_path / "images"
    images.mkdir()
    row = {"image_path": "{}.png", "caption": "一只猫在狗的左边",
           "objects": [{"name": "猫", "name_en": "cat", "bbox": list(CAT)},
                       {"name": "狗", "name_en": "dog", "bbox": list(DOG)}]}
    rows = [json.dumps({**row, "image_path": f"{n}.png"}, ensure_ascii=False)
            for n in ("right", "swapped")]
    (tmp_path / "layouts.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")
    for name in ("right", "swapped"):
        Image.new("RGB", (32, 32), (120, 130, 140)).save(images / f"{name}.png")
    cat_right, dog_left = (0.45, 0.3, 0.85, 0.7), (0.15, 0.3, 0.55, 0.7)
    for name, dets in (("right", [Detection(CAT, "cat", 0.9), Detection(DOG, "dog", 0.9)]),
                       ("swapped", [Detection(cat_right, "cat", 0.9),
                                    Detection(dog_left, "dog", 0.9)])):
        file = write_detections_jsonl({f"{name}.png": dets}, tmp_path / f"{name}.jsonl")
        one = images.parent / f"only-{name}"
        one.mkdir()
        (one / f"{name}.png").write_bytes((images / f"{name}.png").read_bytes())
        layouts = tmp_path / f"{name}.layouts.jsonl"
        layouts.write_text(rows[0 if name == "right" else 1] + "\n", encoding="utf-8")
        result = score_folder(one, layouts, PROTOCOL, file)
        expected = 1.0 if name == "right" else 0.0
        assert result.metrics["relation_rate"].value == expected
        assert result.metrics["relation_rate_matched"].value == expected


def test_the_shipped_protocols_state_the_relation_and_zero_shot_settings() -> None:
    from gatebench.protocol import load_protocol

    oracle = load_protocol("oracle-coco2014").detection
    assert (oracle.relation_min_sep, oracle.relation_margin, oracle.relation_min_iou) == \
        (0.1, 0.02, 0.0)
    mig = load_protocol("coco-mig")
    assert mig.detection.query == "per_phrase"
    assert (mig.detection.box_threshold, mig.detection.text_threshold) == (0.25, 0.25)
    assert mig.models.detector and mig.scoring.match_iou == 0.5
