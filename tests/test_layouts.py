"""Layout loading: the user's JSONL, results.jsonl, COCO; strict errors, counted cleaning."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from gatebench.errors import LayoutError
from gatebench.layouts import Layout, LayoutObject, load_layouts, write_layouts_jsonl

KEEP_ALL = {"min_area": 0.0, "max_area": 1.0, "min_side": 0.0, "max_boxes": None}
ROW = {"image_path": "COCO_train2014_000000000009.jpg",
       "caption": "一个戴着红色头盔的人，骑着一辆小型摩托车在泥土路上行驶。",
       "objects": [{"name": "摩托车", "name_en": "motorcycle", "category_id": 4,
                    "bbox": [0.5612, 0.4060, 0.7369, 0.9993],
                    "bbox_1000": [561.2, 406.0, 736.9, 999.3]}]}


def write_jsonl(path: Path, rows: list, raw_lines: dict[int, str] | None = None) -> Path:
    lines = [json.dumps(r, ensure_ascii=False) for r in rows]
    for index, text in (raw_lines or {}).items():
        lines.insert(index, text)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_user_jsonl_scales_and_ids(tmp_path: Path) -> None:
    rows = [ROW,
            {"image_path": "b.jpg", "caption": "两只狗",
             "objects": [{"name": "狗", "bbox": [100, 200, 600, 900]}]},          # 0-1000 scale
            {"image_path": "c.jpg", "caption": "猫",
             "objects": [{"name": "猫", "bbox_1000": [0, 0, 500, 500]}]}]
    report = load_layouts(write_jsonl(tmp_path / "l.jsonl", rows), **KEEP_ALL)
    assert report.format == "jsonl" and len(report.layouts) == 3 and not report.skipped
    first, second, third = report.layouts
    assert first.layout_id == "COCO_train2014_000000000009"
    assert first.objects[0] == LayoutObject("摩托车", (0.5612, 0.4060, 0.7369, 0.9993),
                                            "motorcycle", 4)
    assert first.caption == ROW["caption"]       # full-width "，" survives the mojibake repair
    assert second.objects[0].bbox == pytest.approx((0.1, 0.2, 0.6, 0.9))
    assert third.objects[0].bbox == pytest.approx((0.0, 0.0, 0.5, 0.5))
    assert [lay.source_line for lay in report.layouts] == [1, 2, 3]


def test_chinese_round_trip(tmp_path: Path) -> None:
    layouts = [Layout("图片_一", "一只猫在草地上。", (LayoutObject("猫", (0.1, 0.2, 0.5, 0.6)),),
                      "图片_一.png", "a cat on grass.")]
    path = write_layouts_jsonl(layouts, tmp_path / "out.jsonl")
    text = path.read_text(encoding="utf-8")
    assert "一只猫" in text and "\\u" not in text
    back = load_layouts(path, **KEEP_ALL).layouts
    assert back[0].layout_id == "图片_一" and back[0].caption == layouts[0].caption
    assert back[0].objects == layouts[0].objects and back[0].caption_en == "a cat on grass."


@pytest.mark.parametrize("bad, reason", [
    ("{not json", "invalid JSON"),
    (json.dumps({"image_path": "x.jpg", "caption": "c", "objects": [{"name": "n"}]}),
     "'bbox'"),
    (json.dumps({"image_path": "x.jpg", "caption": "c",
                 "objects": [{"name": "n", "bbox": [0.5, 0.5, 0.2, 0.9]}]}), "x2 > x1"),
    (json.dumps({"image_path": "x.jpg", "caption": "c",
                 "objects": [{"name": "n", "bbox": [0.1, 0.1, 1.2, 0.9]}]}), "inside [0, 1]"),
    (json.dumps({"image_path": "x.jpg", "objects": []}), "caption"),
    (json.dumps([1, 2]), "JSON object"),
])
def test_bad_line_names_file_and_line(tmp_path: Path, bad: str, reason: str) -> None:
    path = write_jsonl(tmp_path / "bad.jsonl", [ROW, ROW], raw_lines={1: bad})
    with pytest.raises(LayoutError) as info:
        load_layouts(path, **KEEP_ALL)
    assert "bad.jsonl:2" in str(info.value) and reason in str(info.value)
    report = load_layouts(path, skip_bad=True, **KEEP_ALL)
    assert len(report.layouts) == 2 and report.skipped[0][0] == 2 and reason in report.skipped[0][1]
    assert len({lay.layout_id for lay in report.layouts}) == 2     # duplicate stems made unique


def test_clipping_cleaning_and_max_boxes(tmp_path: Path) -> None:
    objects = [{"name": "a", "bbox": [-0.005, 0.0, 0.5, 1.008]},      # clipped (within 0.01)
               {"name": "tiny", "bbox": [0.1, 0.1, 0.12, 0.12]},       # area 0.0004 < 0.02
               {"name": "thin", "bbox": [0.1, 0.1, 0.12, 0.9]},        # w 0.02 < 0.03
               {"name": "huge", "bbox": [0.0, 0.0, 1.0, 0.99]},        # area 0.99 > 0.95
               {"name": "b", "bbox": [0.2, 0.2, 0.6, 0.6]},
               {"name": "c", "bbox": [0.3, 0.3, 0.7, 0.7]}]
    path = write_jsonl(tmp_path / "l.jsonl", [{"image_path": "x.png", "caption": "c",
                                                "objects": objects}])
    report = load_layouts(path, max_boxes=2)           # protocol defaults otherwise
    names = [o.name for o in report.layouts[0].objects]
    assert names == ["a", "b"]
    assert report.layouts[0].objects[0].bbox == (0.0, 0.0, 0.5, 1.0)
    assert report.clipped_boxes == 1 and report.dropped_boxes == 4   # 3 by size + 1 by max_boxes
    assert "4 boxes dropped" in report.summary()


def test_mojibake_repaired_and_counted(tmp_path: Path) -> None:
    caption = "一只红色的猫。"
    garbled = caption.encode("utf-8").decode("latin-1")
    name = "猫".encode("utf-8").decode("latin-1")
    row = {"image_path": "m.png", "caption": garbled,
           "objects": [{"name": name, "bbox": [0.1, 0.1, 0.6, 0.6]}]}
    report = load_layouts(write_jsonl(tmp_path / "m.jsonl", [row]), **KEEP_ALL)
    assert report.layouts[0].caption == caption and report.layouts[0].objects[0].name == "猫"
    assert sorted(report.repaired_text) == [(1, "caption"), (1, "objects[0].name")]


def test_results_jsonl(tmp_path: Path) -> None:
    rows = [{"prompt": "一辆红色的车", "status": "success",
             "layout": {"layout_text": "车", "objects": [{"name": "车", "name_en": "car",
                                                         "bbox": [0.1, 0.2, 0.7, 0.8]}]},
             "image_path": "outputs/run/0001_一辆红色的车.png"}]
    report = load_layouts(write_jsonl(tmp_path / "results.jsonl", rows), **KEEP_ALL)
    assert report.format == "results"
    layout = report.layouts[0]
    assert layout.layout_id == "0001_一辆红色的车" and layout.caption == "一辆红色的车"
    assert layout.objects[0].name_en == "car"


def test_coco_with_captions(tmp_path: Path) -> None:
    instances = {"images": [{"id": 42, "file_name": "COCO_val2014_000000000042.jpg",
                             "width": 200, "height": 100},
                            {"id": 7, "file_name": "COCO_val2014_000000000007.jpg",
                             "width": 100, "height": 100}],
                 "annotations": [{"id": 1, "image_id": 42, "category_id": 18,
                                  "bbox": [20, 10, 100, 50], "iscrowd": 0},
                                 {"id": 2, "image_id": 42, "category_id": 1,
                                  "bbox": [0, 0, 200, 100], "iscrowd": 1}],
                 "categories": [{"id": 1, "name": "person"}, {"id": 18, "name": "dog"}]}
    captions = {"annotations": [{"id": 5, "image_id": 42, "caption": "A dog."},
                                {"id": 3, "image_id": 42, "caption": "A brown dog. "},
                                {"id": 4, "image_id": 7, "caption": "Nothing."}]}
    (tmp_path / "instances_val2014.json").write_text(json.dumps(instances), encoding="utf-8")
    (tmp_path / "captions_val2014.json").write_text(json.dumps(captions), encoding="utf-8")
    zh = tmp_path / "zh.json"
    zh.write_text(json.dumps({"42": "一只棕色的狗。"}, ensure_ascii=False), encoding="utf-8")
    report = load_layouts(tmp_path / "instances_val2014.json", zh_captions=zh, **KEEP_ALL)
    assert report.format == "coco" and report.dropped_boxes == 1      # the crowd box
    dog = report.layouts[0]
    assert dog.layout_id == "COCO_val2014_000000000042"
    assert dog.caption == "一只棕色的狗。" and dog.caption_en == "A brown dog."
    assert dog.objects[0] == LayoutObject("dog", pytest.approx((0.1, 0.1, 0.6, 0.6)), "dog", 18)
    assert report.layouts[1].objects == () and report.missing_zh_captions == 1
    assert report.layouts[1].caption == "Nothing."
    english = load_layouts(tmp_path / "instances_val2014.json", caption_language="en", **KEEP_ALL)
    assert english.layouts[0].caption == "A brown dog."


def test_missing_file_and_undecodable(tmp_path: Path) -> None:
    with pytest.raises(LayoutError, match="missing path"):
        load_layouts(tmp_path / "nope.jsonl")
    bad = tmp_path / "gbk.jsonl"
    bad.write_bytes(json.dumps({"caption": "一只猫在草地上"}, ensure_ascii=False).encode("gbk"))
    with pytest.raises(LayoutError, match="UTF-8"):
        load_layouts(bad)
