"""The procedural "shapes" world: 1-3 coloured shapes on a pale tinted background.

12 classes = {square, circle, triangle} x {red, green, blue, yellow}. Every image comes with
normalised xyxy boxes tight to the drawn shapes, an English and a Chinese caption (objects named
left to right), written as the user's layout JSONL (ARCHITECTURE.md, "The user's formats") with
real PNGs on disk.

Geometry is exact: each shape is rasterised as a coverage mask at ``SUPERSAMPLE`` x the output
size (one sample per sub-pixel centre), composited there and downsampled with PIL LANCZOS, so
edges are antialiased and the box of a shape is its geometric box (multiples of 1/(size*4)).
Shapes never overlap: boxes are at least ``GAP`` output pixels apart along some axis (IoU 0) and
at least ``MARGIN`` output pixels inside the image.

Everything is a pure function of (split seed, image index): the same seed gives byte-identical
JSONL and PNGs, and any single image can be regenerated alone (``render_sample``).
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from PIL import Image

from gatebench.files import atomic_output, atomic_write_text

SUPERSAMPLE = 4
MIN_SIDE = 0.25          # box side as a share of the image side
MAX_SIDE = 0.60
GAP = 1.0                # output pixels between two boxes (along at least one axis)
MARGIN = 1.0             # output pixels between a box and the image border
COLOUR_JITTER = 12       # +- per channel around the class colour
DEFAULT_SIZE = 32
DEFAULT_SPLITS: dict[str, tuple[int, int]] = {   # split -> (default n, fixed seed)
    "train": (20000, 1001),
    "val": (1000, 2002),
    "test": (500, 3003),
}

SHAPES = ("square", "circle", "triangle")
SHAPES_ZH = {"square": "正方形", "circle": "圆形", "triangle": "三角形"}
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 165, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 195, 20),
}
COLOURS_ZH = {"red": "红色", "green": "绿色", "blue": "蓝色", "yellow": "黄色"}


@dataclass(frozen=True)
class ShapeClass:
    id: int                       # category_id, 1..12 (YOLO class index = id - 1)
    name_en: str                  # "red circle"
    name_zh: str                  # "红色圆形"
    colour: str                   # "red"
    shape: str                    # "circle"
    rgb: tuple[int, int, int]


CLASSES: tuple[ShapeClass, ...] = tuple(
    ShapeClass(id=1 + i * len(SHAPES) + j, name_en=f"{colour} {shape}",
               name_zh=COLOURS_ZH[colour] + SHAPES_ZH[shape], colour=colour, shape=shape,
               rgb=COLOURS[colour])
    for i, colour in enumerate(COLOURS) for j, shape in enumerate(SHAPES))
CLASS_BY_EN: dict[str, ShapeClass] = {c.name_en: c for c in CLASSES}
CLASS_NAMES_EN: tuple[str, ...] = tuple(c.name_en for c in CLASSES)   # YOLO index order


@dataclass(frozen=True)
class WorldObject:
    cls: ShapeClass
    bbox: tuple[float, float, float, float]   # normalised xyxy
    rgb: tuple[int, int, int]                 # the drawn colour (class colour + jitter)


@dataclass(frozen=True)
class Sample:
    image: Image.Image
    objects: tuple[WorldObject, ...]          # left to right (box centre x, then y)
    background: tuple[int, int, int]

    @property
    def caption_en(self) -> str:
        return caption_en([o.cls for o in self.objects])

    @property
    def caption_zh(self) -> str:
        return caption_zh([o.cls for o in self.objects])


def _join(parts: Sequence[str], comma: str, last: str) -> str:
    if len(parts) == 1:
        return parts[0]
    return comma.join(parts[:-1]) + last + parts[-1]


def caption_en(classes: Sequence[ShapeClass]) -> str:
    """``a red circle``, ``a red circle and a blue square``, ``a, b and c`` (given order)."""
    return _join([f"a {c.name_en}" for c in classes], ", ", " and ")


def caption_zh(classes: Sequence[ShapeClass]) -> str:
    """``一个红色圆形``, ``一个红色圆形和一个蓝色正方形``, ``甲、乙和丙`` (given order)."""
    return _join([f"一个{c.name_zh}" for c in classes], "、", "和")


def _sample_boxes(rng: np.random.Generator, n_obj: int, size: int) -> list[tuple[int, int, int]]:
    """``n_obj`` square boxes (x, y, side) in sub-pixel units, separated by GAP, inside MARGIN."""
    s = size * SUPERSAMPLE
    lo, hi = int(np.ceil(MIN_SIDE * s)), int(np.floor(MAX_SIDE * s))
    margin, gap = int(round(MARGIN * SUPERSAMPLE)), int(round(GAP * SUPERSAMPLE))
    while True:   # retry the whole layout, so the object count stays as drawn
        boxes: list[tuple[int, int, int]] = []
        for _ in range(n_obj):
            for _try in range(100):
                side = int(rng.integers(lo, hi + 1))
                x = int(rng.integers(margin, s - margin - side + 1))
                y = int(rng.integers(margin, s - margin - side + 1))
                if all(x + side + gap <= bx or bx + bs + gap <= x or
                       y + side + gap <= by or by + bs + gap <= y for bx, by, bs in boxes):
                    boxes.append((x, y, side))
                    break
            else:
                break
        if len(boxes) == n_obj:
            return boxes


def _mask(shape: str, x: int, y: int, side: int, s: int) -> np.ndarray:
    """Coverage (0/1 float) at sub-pixel centres of an s x s canvas."""
    c = np.arange(s, dtype=np.float64) + 0.5
    xx, yy = c[None, :], c[:, None]
    inside_box = (xx >= x) & (xx < x + side) & (yy >= y) & (yy < y + side)
    if shape == "square":
        m = inside_box
    elif shape == "circle":
        r = side / 2.0
        m = (xx - x - r) ** 2 + (yy - y - r) ** 2 <= r * r
    elif shape == "triangle":   # apex at the top centre, base along the bottom edge
        # width taken at the bottom of each sub-pixel row, so the apex row is never empty and
        # the sampled shape fills its box exactly (1/8 output pixel fatter than the ideal)
        t = (yy + 0.5 - y) / side                 # 1/side at the apex row, 1 at the base
        half = 0.5 * side * t
        m = inside_box & (np.abs(xx - (x + side / 2.0)) <= half)
    else:
        raise ValueError(f"expected a shape in {SHAPES}, got {shape!r}")
    return m.astype(np.float32)


def render_sample(seed: int, index: int, size: int = DEFAULT_SIZE) -> Sample:
    """Image ``index`` of the split with ``seed`` (a pure function of the three arguments)."""
    rng = np.random.default_rng([int(seed), int(index)])
    s = size * SUPERSAMPLE
    # pale tint: each channel 255 minus 5-35, so light but visibly coloured
    b0, b1, b2 = (int(v) for v in 255 - rng.integers(5, 36, size=3))
    background = (b0, b1, b2)
    n_obj = int(rng.integers(1, 4))
    classes = [CLASSES[int(k)] for k in rng.integers(0, len(CLASSES), size=n_obj)]
    boxes = _sample_boxes(rng, n_obj, size)
    canvas = np.empty((s, s, 3), dtype=np.float32)
    canvas[:] = background
    objects = []
    for cls, (x, y, side) in zip(classes, boxes, strict=True):
        r, g, b = (int(np.clip(v + rng.integers(-COLOUR_JITTER, COLOUR_JITTER + 1), 0, 255))
                   for v in cls.rgb)
        rgb = (r, g, b)
        m = _mask(cls.shape, x, y, side, s)[..., None]
        canvas = canvas * (1.0 - m) + np.asarray(rgb, dtype=np.float32) * m
        objects.append(WorldObject(cls, (x / s, y / s, (x + side) / s, (y + side) / s), rgb))
    big = Image.fromarray(np.clip(np.rint(canvas), 0, 255).astype(np.uint8), "RGB")
    image = big.resize((size, size), Image.Resampling.LANCZOS)
    objects.sort(key=lambda o: ((o.bbox[0] + o.bbox[2]) / 2, (o.bbox[1] + o.bbox[3]) / 2))
    return Sample(image, tuple(objects), background)


def _r(v: float, nd: int) -> float:
    return float(round(v, nd))


def layout_row(sample: Sample, image_path: str) -> dict:
    """One row of the user's layout JSONL for ``sample``."""
    return {
        "image_path": image_path,
        "caption": sample.caption_zh,
        "caption_en": sample.caption_en,
        "objects": [{"name": o.cls.name_zh, "name_en": o.cls.name_en,
                     "category_id": o.cls.id,
                     "bbox": [_r(v, 8) for v in o.bbox],
                     "bbox_1000": [_r(v * 1000, 4) for v in o.bbox]} for o in sample.objects],
    }


def generate_split(out_dir: str | Path, split: str, n: int | None = None, seed: int | None = None,
                   size: int = DEFAULT_SIZE) -> Path:
    """Write ``n`` images to ``out_dir/images/{split}/NNNNNN.png`` and ``out_dir/{split}.jsonl``.

    ``image_path`` in each row is relative to the split's image folder (``out_dir/images/{split}``,
    the ``--image-dir`` of that split). ``n``/``seed`` default to ``DEFAULT_SPLITS[split]``.
    Returns the JSONL path. Same (n, seed, size) -> byte-identical JSONL and PNGs.
    """
    if n is None or seed is None:
        if split not in DEFAULT_SPLITS:
            raise ValueError(f"expected n and seed for a split not in {list(DEFAULT_SPLITS)}, "
                             f"got split {split!r}")
        n = DEFAULT_SPLITS[split][0] if n is None else n
        seed = DEFAULT_SPLITS[split][1] if seed is None else seed
    out = Path(out_dir)
    img_dir = out / "images" / split
    img_dir.mkdir(parents=True, exist_ok=True)
    width = max(6, len(str(n - 1)))
    jsonl = out / f"{split}.jsonl"
    rows = []
    for i in range(n):
        sample = render_sample(seed, i, size)
        name = f"{i:0{width}d}.png"
        with atomic_output(img_dir / name) as tmp:
            sample.image.save(tmp, format="PNG", optimize=False)
        rows.append(json.dumps(layout_row(sample, name), ensure_ascii=False) + "\n")
    return atomic_write_text(jsonl, "".join(rows))


def read_split(dataset_dir: str | Path, split: str) -> list[dict]:
    """The rows of ``dataset_dir/{split}.jsonl``."""
    with open(Path(dataset_dir) / f"{split}.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _place(src: Path, dst: Path, link: str) -> None:
    if dst.exists() or dst.is_symlink():
        dst.unlink()
    if link == "hardlink":
        try:
            os.link(src, dst)
            return
        except OSError:
            pass
    elif link == "symlink":
        dst.symlink_to(src.resolve())
        return
    shutil.copyfile(src, dst)


def export_yolo(dataset_dir: str | Path, yolo_dir: str | Path,
                splits: Iterable[str] = ("train", "val", "test"), link: str = "hardlink") -> Path:
    """An ultralytics dataset from a world dataset: images/, labels/ and ``data.yaml``.

    ``yolo_dir/images/{split}/*.png`` (hard links where possible, else copies; ``link`` may be
    ``"copy"``/``"symlink"``), ``yolo_dir/labels/{split}/*.txt`` (``cls cx cy w h``, class =
    category_id - 1), and ``data.yaml`` naming the 12 English classes. Splits whose JSONL is
    missing are skipped. Returns the ``data.yaml`` path.
    """
    src, dst = Path(dataset_dir), Path(yolo_dir)
    present = []
    for split in splits:
        if not (src / f"{split}.jsonl").is_file():
            continue
        present.append(split)
        (dst / "images" / split).mkdir(parents=True, exist_ok=True)
        (dst / "labels" / split).mkdir(parents=True, exist_ok=True)
        for row in read_split(src, split):
            name = row["image_path"]
            _place(src / "images" / split / name, dst / "images" / split / name, link)
            lines = []
            for obj in row["objects"]:
                x1, y1, x2, y2 = obj["bbox"]
                lines.append(f"{int(obj['category_id']) - 1} {(x1 + x2) / 2:.6f} "
                             f"{(y1 + y2) / 2:.6f} {x2 - x1:.6f} {y2 - y1:.6f}")
            atomic_write_text(dst / "labels" / split / (Path(name).stem + ".txt"),
                              "\n".join(lines) + "\n")
    if not present:
        raise FileNotFoundError(f"expected split JSONL files in '{src}', found none")
    yaml_lines = [f"path: {dst.resolve()}"]
    for key in ("train", "val", "test"):
        if key in present:
            yaml_lines.append(f"{key}: images/{key}")
    if "val" not in present:   # ultralytics needs a val set
        yaml_lines.append(f"val: images/{present[0]}")
    yaml_lines.append(f"nc: {len(CLASSES)}")
    yaml_lines.append("names:")
    yaml_lines += [f"  {c.id - 1}: {c.name_en}" for c in CLASSES]
    data_yaml = dst / "data.yaml"
    atomic_write_text(data_yaml, "\n".join(yaml_lines) + "\n")
    return data_yaml
