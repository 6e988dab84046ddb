"""The embedded shapes world: generator, user-format JSONL, YOLO export, world CLIP plumbing."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from gatebench.world import shapes
from gatebench.world.shapes import (
    CLASS_BY_EN,
    CLASSES,
    export_yolo,
    generate_split,
    read_split,
    render_sample,
)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("world")
    generate_split(out, "train", 64, 11)
    generate_split(out, "val", 24, 12)
    return out


def test_class_table_has_12_classes():
    assert len(CLASSES) == 12
    assert [c.id for c in CLASSES] == list(range(1, 13))
    assert {c.shape for c in CLASSES} == {"square", "circle", "triangle"}
    assert {c.colour for c in CLASSES} == {"red", "green", "blue", "yellow"}
    assert len({c.name_en for c in CLASSES}) == len({c.name_zh for c in CLASSES}) == 12
    assert CLASS_BY_EN["red circle"].name_zh == "红色圆形"
    assert CLASS_BY_EN["blue square"].name_zh == "蓝色正方形"
    assert all(len(c.rgb) == 3 for c in CLASSES)


def test_same_seed_gives_identical_files_and_other_seed_differs(tmp_path):
    a = generate_split(tmp_path / "a", "val", 12, 7)
    b = generate_split(tmp_path / "b", "val", 12, 7)
    c = generate_split(tmp_path / "c", "val", 12, 8)
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()
    for png in sorted((tmp_path / "a" / "images" / "val").glob("*.png")):
        assert _sha(png) == _sha(tmp_path / "b" / "images" / "val" / png.name)
    # any single image can be regenerated alone
    assert render_sample(7, 5).caption_en == read_split(tmp_path / "a", "val")[5]["caption_en"]


def test_boxes_in_range_disjoint_and_tight():
    size = 32
    for i in range(60):
        s = render_sample(3, i, size)
        assert 1 <= len(s.objects) <= 3
        assert s.image.size == (size, size) and s.image.mode == "RGB"
        assert min(s.background) >= 255 - 35   # pale
        boxes = np.array([o.bbox for o in s.objects])
        assert (boxes >= 0).all() and (boxes <= 1).all()
        side = boxes[:, 2] - boxes[:, 0]
        assert np.allclose(side, boxes[:, 3] - boxes[:, 1])
        assert (side >= 0.25 - 1e-9).all() and (side <= 0.60 + 1e-9).all()
        for j in range(len(boxes)):          # IoU 0 with a gap of >= 1 pixel
            for k in range(j + 1, len(boxes)):
                a, b = boxes[j] * size, boxes[k] * size
                assert (a[2] + 1 <= b[0] + 1e-9 or b[2] + 1 <= a[0] + 1e-9 or
                        a[3] + 1 <= b[1] + 1e-9 or b[3] + 1 <= a[1] + 1e-9)
        s4 = size * shapes.SUPERSAMPLE
        for o in s.objects:                  # the geometric mask fills its box exactly
            x1, y1, x2, y2 = (np.array(o.bbox) * s4).round().astype(int)
            m = shapes._mask(o.cls.shape, x1, y1, x2 - x1, s4) > 0
            ys, xs = np.nonzero(m)
            assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x1, y1, x2, y2)
        # the drawn image: ink lies inside the boxes (+1 px of antialiasing / Lanczos ringing)
        a = np.asarray(s.image).astype(float)
        diff = np.abs(a - np.array(s.background)).max(-1)
        inside = np.zeros((size, size), bool)
        for o in s.objects:
            x1, y1, x2, y2 = np.array(o.bbox) * size
            inside[max(0, int(y1) - 1):int(np.ceil(y2)) + 1, max(0, int(x1) - 1):int(np.ceil(x2)) + 1] = True
            # and every box edge band holds ink (tight: the shape reaches each side)
            band = diff[int(y1):int(np.ceil(y2)), int(x1):int(np.ceil(x2))]
            # (2-pixel bands: an edge at a sub-pixel position covers its last pixel partly)
            assert band[:2].max() > 20 and band[-2:].max() > 20
            assert band[:, :2].max() > 20 and band[:, -2:].max() > 20
        assert diff[~inside].max(initial=0) < 12


def test_rows_are_the_users_layout_format(world):
    raw = (world / "train.jsonl").read_text(encoding="utf-8")
    assert "\\u" not in raw and "红色" in raw or "绿色" in raw or "蓝色" in raw or "黄色" in raw
    rows = read_split(world, "train")
    assert len(rows) == 64
    for row in rows:
        assert set(row) == {"image_path", "caption", "caption_en", "objects"}
        assert (world / "images" / "train" / row["image_path"]).is_file()
        objs = row["objects"]
        assert 1 <= len(objs) <= 3
        for o in objs:
            assert set(o) == {"name", "name_en", "category_id", "bbox", "bbox_1000"}
            cls = CLASS_BY_EN[o["name_en"]]
            assert o["name"] == cls.name_zh and o["category_id"] == cls.id
            assert np.allclose(np.array(o["bbox"]) * 1000, o["bbox_1000"], atol=1e-3)
            x1, y1, x2, y2 = o["bbox"]
            assert 0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1
        centres = [(o["bbox"][0] + o["bbox"][2]) / 2 for o in objs]
        assert centres == sorted(centres)   # captions name objects left to right
        assert row["caption"] == "和".join(
            ["、".join("一个" + o["name"] for o in objs[:-1]), "一个" + objs[-1]["name"]]
        ).lstrip("和")
        en = [f"a {o['name_en']}" for o in objs]
        assert row["caption_en"] == (en[0] if len(en) == 1 else ", ".join(en[:-1]) + " and " + en[-1])
    assert any(len(r["objects"]) == 3 for r in rows)


def test_captions_examples():
    red_c, blue_s, green_t = (CLASS_BY_EN[n] for n in ("red circle", "blue square", "green triangle"))
    assert shapes.caption_en([red_c, blue_s]) == "a red circle and a blue square"
    assert shapes.caption_zh([red_c, blue_s]) == "一个红色圆形和一个蓝色正方形"
    assert shapes.caption_zh([red_c, blue_s, green_t]) == "一个红色圆形、一个蓝色正方形和一个绿色三角形"


def test_harness_loader_reads_world_jsonl(world):
    from gatebench.layouts import load_layouts

    report = load_layouts(world / "val.jsonl")
    layouts = getattr(report, "layouts", report)
    assert len(layouts) == 24
    first = read_split(world, "val")[0]
    assert layouts[0].caption == first["caption"]
    assert [o.name for o in layouts[0].objects] == [o["name"] for o in first["objects"]]


def test_export_yolo_layout(world, tmp_path):
    data_yaml = export_yolo(world, tmp_path / "yolo")
    text = data_yaml.read_text(encoding="utf-8")
    assert "nc: 12" in text and "train: images/train" in text and "val: images/val" in text
    assert "  2: red triangle" in text and "  11: yellow triangle" in text
    rows = read_split(world, "val")
    imgs = sorted((tmp_path / "yolo" / "images" / "val").glob("*.png"))
    labels = sorted((tmp_path / "yolo" / "labels" / "val").glob("*.txt"))
    assert len(imgs) == len(labels) == len(rows)
    assert not (tmp_path / "yolo" / "images" / "test").exists()
    for row in rows:
        lines = (tmp_path / "yolo" / "labels" / "val" / (Path(row["image_path"]).stem + ".txt")
                 ).read_text().split("\n")
        lines = [ln for ln in lines if ln]
        assert len(lines) == len(row["objects"])
        for ln, o in zip(lines, row["objects"], strict=True):
            c, cx, cy, w, h = ln.split()
            x1, y1, x2, y2 = o["bbox"]
            assert int(c) == o["category_id"] - 1
            assert np.allclose([float(cx), float(cy), float(w), float(h)],
                               [(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], atol=1e-5)


def test_world_tokenizer_covers_both_languages():
    from gatebench.world.clip_model import WorldTokenizer

    tok = WorldTokenizer.default()
    for i in range(40):
        s = render_sample(9, i)
        for cap in (s.caption_en, s.caption_zh):
            ids = tok(cap)[0].tolist()
            assert tok.unk_id not in ids
            assert ids[0] == tok.sot_id and tok.eot_id in ids
    assert tok.words("一个红色圆形和一个蓝色正方形") == ["一个", "红色", "圆形", "和", "一个", "蓝色", "正方形"]
    assert tok.unk_id in tok("一只猫")[0].tolist()


def test_clip_training_smoke_and_roundtrip(world, tmp_path):
    import torch

    from gatebench.metrics.fid import ModuleExtractor
    from gatebench.train.world.clip import evaluate_clip, train_clip
    from gatebench.world.clip_model import load_world_clip, save_world_clip

    model, state = train_clip(world, tmp_path / "run", epochs=2, batch=32, max_steps=3,
                              warmup=1, ckpt_every=2, log=lambda m: None,
                              model_kwargs={"width": 64, "vision_layers": 1, "text_layers": 1,
                                            "embed_dim": 32})
    assert state["step"] == 3 and (tmp_path / "run" / "ckpt.pt").is_file()
    # resuming a finished run does no more steps
    _, state2 = train_clip(world, tmp_path / "run", epochs=2, batch=32, max_steps=3,
                           log=lambda m: None)
    assert state2["step"] == 3
    w, c = tmp_path / "w.safetensors", tmp_path / "w.json"
    save_world_clip(model, w, c)
    loaded, tok, pre = load_world_clip(w, c)
    img = pre(render_sample(1, 0).image)
    assert img.shape == (3, 32, 32)
    with torch.no_grad():
        a = loaded.encode_image(img[None], normalize=True)
        b = loaded.encode_text(tok(["a red circle", "一个红色圆形"]), normalize=True)
        f = loaded.image_features(torch.rand(4, 3, 32, 32))
        g = ModuleExtractor(loaded, input_size=32)(torch.randint(0, 256, (4, 3, 32, 32),
                                                                 dtype=torch.uint8))
    assert a.shape == (1, 32) and b.shape == (2, 32) and f.shape == (4, 32) and g.shape == (4, 32)
    assert torch.allclose(f.norm(dim=-1), torch.ones(4), atol=1e-4)
    from gatebench.metrics.clip_score import OpenClip, clip_scores

    backend = OpenClip(loaded, pre, tok, name="world-clip")
    sample = render_sample(1, 0)
    scores = clip_scores(backend, [sample.image, sample.image], [sample.caption_zh, sample.caption_en])
    assert scores.shape == (2,) and ((scores >= 0) & (scores <= 1)).all()
    metrics = evaluate_clip(loaded, tok, world, "val")
    for lang in ("en", "zh"):
        assert 0 <= metrics[lang]["top1_among_all_val_captions"] <= 1
        assert -1 <= metrics[lang]["mean_cos_matched"] <= 1
