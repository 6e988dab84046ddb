"""The score stage end to end on tiny files: Chinese names, detections file, samples round trip."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from gatebench.errors import LayoutError
from gatebench.layouts import Layout, LayoutObject
from gatebench.metrics.clip_score import TransformersClip
from gatebench.metrics.detect import Detection, write_detections_jsonl
from gatebench.metrics.fid import ModuleExtractor
from gatebench.protocol import DataSpec, Protocol, ScoringSpec
from gatebench.rundir.samples import read_samples_jsonl, write_samples_jsonl
from gatebench.score import ImageItem, score_folder, score_images
from tests.builders import TinyFeatures

PROTOCOL = Protocol(name="test", data=DataSpec(min_area=0.0, max_area=1.0, min_side=0.0),
                    scoring=ScoringSpec(bootstrap=200))
BOX_A, BOX_B, BOX_C = (0.1, 0.1, 0.5, 0.5), (0.55, 0.5, 0.95, 0.9), (0.5, 0.1, 0.9, 0.4)


def draw(path: Path, boxes: list[tuple[float, ...]], noise: bool = False, size: int = 48) -> Path:
    image = Image.new("RGB", (size, size), (200, 210, 220))
    pen = ImageDraw.Draw(image)
    for box, colour in zip(boxes, [(220, 30, 30), (30, 30, 220), (30, 180, 30)], strict=False):
        pen.rectangle([v * size for v in box], fill=colour)
    if noise:
        rng = np.random.default_rng(0)
        hsv = np.stack([rng.uniform(0, 255, (size, size)), np.full((size, size), 245.0),
                        rng.uniform(150, 255, (size, size))], -1).astype(np.uint8)
        image = Image.fromarray(hsv, "HSV").convert("RGB")
    image.save(path)
    return path


@pytest.fixture()
def folder(tmp_path: Path) -> dict[str, Path]:
    images = tmp_path / "图片"
    images.mkdir()
    rows = [{"image_path": "猫_一.png", "caption": "一只红色的猫和一只蓝色的狗",
             "objects": [{"name": "猫", "name_en": "cat", "bbox": list(BOX_A)},
                         {"name": "狗", "category_id": 18, "bbox": list(BOX_B)}]},
            {"image_path": "狗_二.png", "caption": "一只狗",
             "objects": [{"name": "狗", "name_en": "dog", "bbox": list(BOX_B)},
                         {"name": "独角兽", "name_en": "unicorn", "bbox": list(BOX_C)}]},
            {"image_path": "garbled.png", "caption": "一只猫",
             "objects": [{"name": "猫", "name_en": "cat", "bbox": list(BOX_A)}]}]
    layouts = tmp_path / "layouts.jsonl"
    layouts.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n",
                       encoding="utf-8")
    draw(images / "猫_一.png", [BOX_A, BOX_B])
    draw(images / "狗_二.png", [BOX_B])
    draw(images / "garbled.png", [], noise=True)
    detections = write_detections_jsonl({
        "猫_一.png": [Detection(BOX_A, "cat", 0.9), Detection((0.55, 0.5, 0.75, 0.7), "dog", 0.8)],
        "狗_二.png": [Detection(BOX_B, "dog", 0.95), Detection(BOX_B, "cat", 0.3)],
        "garbled.png": []}, tmp_path / "detections.jsonl")
    return {"images": images, "layouts": layouts, "detections": detections, "root": tmp_path}


def test_score_folder_with_detections_and_clip(folder: dict[str, Path], tiny_clip) -> None:
    result = score_folder(folder["images"], folder["layouts"], PROTOCOL, folder["detections"],
                          clip=TransformersClip(*tiny_clip))
    df = result.samples.set_index("image")
    assert list(df.index) == sorted(["猫_一.png", "狗_二.png", "garbled.png"])
    one = df.loc["猫_一.png"]
    assert one["layout_id"] == "猫_一" and one["n_scorable"] == 2 and one["n_matched"] == 1
    assert [b["matched"] for b in one["boxes"]] == [True, False]
    assert one["boxes"][1]["iou"] == pytest.approx(0.25)       # dog det covers a quarter
    assert one["boxes"][0]["label"] == "猫" and one["boxes"][0]["class"] == "cat"
    two = df.loc["狗_二.png"]
    assert [b["scorable"] for b in two["boxes"]] == [True, False] and two["all_matched"]
    assert "1 unscorable (独角兽" in two["reason"]
    assert df.loc["garbled.png", "garbled"] and not one["garbled"]
    assert "garbled" in df.loc["garbled.png", "reason"]
    m = result.metrics
    assert m["iou50_rate"].value == pytest.approx(2 / 4) and m["iou50_rate"].n == 4
    assert m["miou"].value == pytest.approx((1 + 0.25 + 1 + 0) / 4)
    assert m["all_matched_rate"].value == pytest.approx(1 / 3) and m["all_matched_rate"].n == 3
    assert m["garbled_rate"].value == pytest.approx(1 / 3)
    assert 0 < m["ap50"].value <= 1 and m["ap"].value <= m["ap50"].value
    assert 0 <= m["clip_score"].value <= 1 and m["region_clip_score"].n == 5
    assert m["iou50_rate"].ci_low <= m["iou50_rate"].value <= m["iou50_rate"].ci_high
    assert "fid" not in m and "kid" not in m and "no FID" in result.not_computed["fid"]
    as_dict = result.to_dict()
    text = json.dumps(as_dict, ensure_ascii=False, allow_nan=False)
    assert set(as_dict["metrics"]["miou"]) == {"value", "ci_low", "ci_high", "n"}
    assert "layouts" in as_dict["info"] and text


def test_samples_jsonl_round_trip(folder: dict[str, Path]) -> None:
    result = score_folder(folder["images"], folder["layouts"], PROTOCOL, folder["detections"])
    path = write_samples_jsonl(result.samples, folder["root"] / "samples.jsonl")
    text = path.read_text(encoding="utf-8")
    assert "猫_一.png" in text and "\\u" not in text and "NaN" not in text
    first = json.loads(text.splitlines()[0])
    for key in ("image", "layout_id", "gate_scale", "clip_score", "garbled_score", "garbled",
                "boxes", "reason"):
        assert key in first
    assert first["clip_score"] is None                         # no CLIP: null, never a number
    assert set(first["boxes"][0]) >= {"label", "bbox", "scorable", "matched", "iou"}
    back = read_samples_jsonl(path)
    assert list(back["image"]) == list(result.samples["image"])
    assert list(back["boxes"]) == [json.loads(json.dumps(b)) for b in result.samples["boxes"]]
    assert "clip_score" in result.not_computed


def test_no_detector_means_absent_metrics(folder: dict[str, Path]) -> None:
    result = score_folder(folder["images"], folder["layouts"], PROTOCOL)
    for name in ("iou50_rate", "miou", "ap50", "ap", "all_matched_rate", "clip_score"):
        assert name not in result.metrics and name in result.not_computed
    assert set(result.metrics) == {"garbled_rate", "blank_rate"}      # image health needs no model
    box = result.samples["boxes"][0][0]
    assert box["matched"] is None and box["iou"] is None
    assert "no detector" in result.samples["reason"][0]


def test_pairing_errors(folder: dict[str, Path]) -> None:
    draw(folder["images"] / "多余的.png", [BOX_A])
    with pytest.raises(LayoutError, match="without one.*多余的.png"):
        score_folder(folder["images"], folder["layouts"], PROTOCOL)
    (folder["images"] / "多余的.png").unlink()
    (folder["images"] / "狗_二.png").unlink()
    with pytest.raises(LayoutError, match="an image for every layout.*狗_二"):
        score_folder(folder["images"], folder["layouts"], PROTOCOL)
    draw(folder["images"] / "狗_二.png", [BOX_B])
    lines = folder["detections"].read_text(encoding="utf-8").splitlines()
    folder["detections"].write_text("\n".join(lines[:2]) + "\n", encoding="utf-8")
    with pytest.raises(LayoutError, match="detections line for every image.*garbled.png"):
        score_folder(folder["images"], folder["layouts"], PROTOCOL, folder["detections"])


def test_gate_scales_references_and_fid(tmp_path: Path) -> None:
    items, real = [], []
    for i in range(3):
        layout = Layout(f"L{i}", "红色方块", (LayoutObject("红色方块", BOX_A, "red square"),))
        base = draw(tmp_path / f"s0_{i}.png", [BOX_A])
        strong = draw(tmp_path / f"s2_{i}.png", [BOX_A], noise=True)
        real.append(draw(tmp_path / f"real_{i}.png", [BOX_A, BOX_C]))
        items += [(base, layout, 0.0, None), ImageItem(strong, layout, 2.0, base)]
    detections = {p.image_path.name if isinstance(p, ImageItem) else p[0].name: [
        Detection(BOX_A, "red square", 0.9)] for p in items}
    extractor = ModuleExtractor(TinyFeatures(), name="tiny", input_size=16)
    with pytest.warns(UserWarning, match="feature dimension"):
        result = score_images(items, PROTOCOL, detections=detections,
                              detector_labels={"red square"}, fid_extractor=extractor,
                              real_images=real, cache_dir=tmp_path / "cache")
    by = result.metrics_by_gate_scale
    assert set(by) == {0.0, 2.0}
    assert by[0.0]["garbled_rate"].value == 0.0 and by[2.0]["garbled_rate"].value == 1.0
    assert by[2.0]["iou50_rate"].value == 1.0 and by[2.0]["iou50_rate"].n == 3
    assert by[2.0]["fid"].value > by[0.0]["fid"].value and by[2.0]["fid"].n == 3
    assert "kid" in result.metrics and result.info["fid_reference"]["n"] == "3"
    assert list((tmp_path / "cache").glob("refstats_*_n3_bilinear_*.npz"))
    assert json.dumps(result.to_dict(), allow_nan=False)
    assert set(result.to_dict()["metrics_by_gate_scale"]) == {"0", "2"}


def test_score_command_json_targets_and_exit_codes(folder: dict[str, Path]) -> None:
    from click.testing import CliRunner

    from gatebench.cli import cli

    args = ["score", "--images", str(folder["images"]), "--layouts", str(folder["layouts"]),
            "--detections", str(folder["detections"])]
    result = CliRunner().invoke(cli, [*args, "--json", "--out", str(folder["root"] / "out")])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert {"iou50_rate", "miou", "garbled_rate"} <= set(doc["metrics"])
    assert "clip_score" in doc["not_computed"] and "clip_score" not in doc["metrics"]
    lines = (folder["root"] / "out" / "samples.jsonl").read_text(encoding="utf-8").splitlines()
    assert any("猫_一.png" in line for line in lines)
    strict = folder["root"] / "strict.toml"
    strict.write_text('[[targets]]\nmetric = "iou50_rate"\nop = ">"\nthreshold = 0.99\n'
                      'gate_scales = [1.0]\n\n[[targets]]\nmetric = "clip_score"\nop = ">"\n'
                      'threshold = 0.25\n', encoding="utf-8")
    failed = CliRunner().invoke(cli, [*args, "--protocol", str(strict)])
    assert failed.exit_code == 1
    assert "not computed" in failed.output
    missing = CliRunner().invoke(cli, ["score", "--images", str(folder["root"] / "nope"),
                                       "--layouts", str(folder["layouts"])])
    assert missing.exit_code == 2


def test_blank_images_are_a_rate_of_their_own(folder: dict[str, Path]) -> None:
    Image.new("RGB", (48, 48), (3, 3, 4)).save(folder["images"] / "狗_二.png")   # a black frame
    result = score_folder(folder["images"], folder["layouts"], PROTOCOL)
    df = result.samples.set_index("image")
    assert df.loc["狗_二.png", "blank"] and not df.loc["狗_二.png", "garbled"]
    assert df.loc["狗_二.png", "blank_score"] > 0.5 and "blank" in df.loc["狗_二.png", "reason"]
    assert not df["blank"].drop("狗_二.png").any()
    blank = result.metrics["blank_rate"]
    assert blank.value == pytest.approx(1 / 3) and blank.n == 3 and blank.ci_low is not None
    assert result.metrics["garbled_rate"].value == pytest.approx(1 / 3)
    out = folder["root"] / "samples.jsonl"
    write_samples_jsonl(result.samples, out)
    record = json.loads(out.read_text(encoding="utf-8").splitlines()[1])
    assert isinstance(record["blank"], bool) and isinstance(record["blank_score"], float)
