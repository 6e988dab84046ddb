"""Ground-truth layouts (boxes + phrases + captions) from the user's files.

Every scored number rests on these boxes, so loading is strict: a bad row raises ``LayoutError``
naming ``file:line`` and the reason, or, with ``skip_bad=True``, is skipped AND counted in the
``LoadReport`` (the user's own loader skipped bad lines silently, which hid broken data). Cleaning
thresholds (the user's 0.02 < area < 0.95, w, h > 0.03) drop boxes, also counted.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Literal

import ftfy

from gatebench.errors import GatebenchError, LayoutError, ModelFileError
from gatebench.files import atomic_write_text
from gatebench.protocol import DataSpec, Protocol
from gatebench.readers.bbox import SCALE_1000_ABOVE, BadRow, Box, parse_bbox
from gatebench.readers.jsonl import first_row, read_jsonl

LayoutFormat = Literal["auto", "jsonl", "results", "coco"]


# Only the mojibake fixers: the default ftfy config would also turn Chinese full-width
# punctuation ("，") into ASCII and uncurl quotes, silently changing correct captions.
_FTFY = ftfy.TextFixerConfig(unescape_html=False, fix_latin_ligatures=False,
                             fix_character_width=False, uncurl_quotes=False,
                             fix_line_breaks=False, remove_control_chars=False, normalization=None)


@dataclass(frozen=True)
class LayoutObject:
    """One ground-truth box: phrase ``name`` (the text the adapter saw), normalised xyxy box."""

    name: str
    bbox: Box
    name_en: str | None = None
    category_id: int | None = None


@dataclass(frozen=True)
class Layout:
    layout_id: str
    caption: str
    objects: tuple[LayoutObject, ...]
    image_path: str | None = None
    caption_en: str | None = None
    source_line: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """The user's JSONL row shape (plus ``layout_id``), for writing back."""
        row: dict[str, Any] = {"layout_id": self.layout_id, "image_path": self.image_path,
                               "caption": self.caption}
        if self.caption_en is not None:
            row["caption_en"] = self.caption_en
        row["objects"] = [{k: v for k, v in asdict(o).items() if v is not None}
                          for o in self.objects]
        for obj in row["objects"]:
            obj["bbox"] = [round(v, 6) for v in obj["bbox"]]
        return row


@dataclass
class LoadReport:
    """What ``load_layouts`` kept, skipped and changed: nothing is dropped without a count."""

    path: str
    format: str
    layouts: list[Layout] = field(default_factory=list)
    skipped: list[tuple[int, str]] = field(default_factory=list)   # (line or COCO image id, why)
    dropped_boxes: int = 0
    clipped_boxes: int = 0
    repaired_text: list[tuple[int, str]] = field(default_factory=list)  # (line, field) by ftfy
    missing_zh_captions: int = 0

    @property
    def empty_layouts(self) -> int:
        return sum(1 for layout in self.layouts if not layout.objects)

    def summary(self) -> str:
        return (f"{len(self.layouts)} layouts from {self.path} ({self.format}); "
                f"{len(self.skipped)} bad rows skipped, {self.dropped_boxes} boxes dropped by "
                f"cleaning, {self.clipped_boxes} clipped, {len(self.repaired_text)} texts "
                f"repaired, {self.empty_layouts} layouts without boxes")


@dataclass(frozen=True)
class _Cleaning:
    min_area: float
    max_area: float
    min_side: float
    max_boxes: int | None


def _fix(text: str, report: LoadReport, line: int, what: str) -> str:
    fixed = ftfy.fix_text(text, _FTFY)
    if fixed != text:
        report.repaired_text.append((line, what))
    return fixed


def _text(value: Any, what: str, required: bool = True) -> str | None:
    if value is None and not required:
        return None
    if not isinstance(value, str):
        raise BadRow(f"expected {what} to be a string, got {type(value).__name__} {value!r}")
    return value


def _keep_box(box: Box, clean: _Cleaning) -> bool:
    w, h = box[2] - box[0], box[3] - box[1]
    return clean.min_area < w * h < clean.max_area and w > clean.min_side and h > clean.min_side


def _objects(raw: Any, clean: _Cleaning, report: LoadReport, line: int) -> tuple[LayoutObject, ...]:
    if not isinstance(raw, list):
        raise BadRow(f"expected 'objects' to be a list, got {type(raw).__name__}")
    kept: list[LayoutObject] = []
    clipped_here = 0
    scales: dict[bool, int] = {}     # one row, one scale: normalised and 0-1000 boxes don't mix
    for i, obj in enumerate(raw):
        if not isinstance(obj, dict):
            raise BadRow(f"expected objects[{i}] to be an object, got {type(obj).__name__}")
        name = _text(obj.get("name", obj.get("name_en")), f"objects[{i}].name")
        name_en = _text(obj.get("name_en"), f"objects[{i}].name_en", required=False)
        cat = obj.get("category_id")
        if cat is not None and (isinstance(cat, bool) or not isinstance(cat, int)):
            raise BadRow(f"expected objects[{i}].category_id to be an integer, got {cat!r}")
        if "bbox" in obj:
            box, clipped = parse_bbox(obj["bbox"])
            values = obj["bbox"]
            scales.setdefault(max(float(v) for v in values) > SCALE_1000_ABOVE, i)
            if len(scales) > 1:
                raise BadRow(f"expected every bbox of a row on one scale, got objects"
                             f"[{scales[False]}] normalised and objects[{scales[True]}] "
                             f"on the 0-1000 scale")
        elif "bbox_1000" in obj:
            box, clipped = parse_bbox(obj["bbox_1000"], scale_1000=True)
        else:
            raise BadRow(f"expected objects[{i}] to have 'bbox' or 'bbox_1000'")
        clipped_here += clipped
        if not _keep_box(box, clean):
            report.dropped_boxes += 1
            continue
        kept.append(LayoutObject(_fix(name or "", report, line, f"objects[{i}].name"), box,
                                 _fix(name_en, report, line, f"objects[{i}].name_en")
                                 if name_en is not None else None, cat))
    report.clipped_boxes += clipped_here
    if clean.max_boxes is not None and len(kept) > clean.max_boxes:
        report.dropped_boxes += len(kept) - clean.max_boxes
        kept = kept[:clean.max_boxes]
    return tuple(kept)


def _unique_ids(rows: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """Stems stay as they are unless shared; shared ones get ``@<line>`` so ids stay unique."""
    counts: dict[str, int] = {}
    for key, _ in rows:
        counts[key] = counts.get(key, 0) + 1
    return [key if counts[key] == 1 else f"{key}@{row['_line']}" for key, row in rows]


def _read_jsonl(path: Path, report: LoadReport, skip_bad: bool) -> list[tuple[int, dict[str, Any]]]:
    def skip(number: int, reason: str) -> None:
        report.skipped.append((number, reason))

    rows = read_jsonl(path, what="layouts", error=LayoutError, on_bad=skip if skip_bad else None)
    return [(row.line, row.value) for row in rows]


def _rows_to_layouts(path: Path, rows: list[tuple[int, dict[str, Any]]], fmt: str,
                     clean: _Cleaning, report: LoadReport, skip_bad: bool) -> None:
    parsed: list[tuple[str, dict[str, Any]]] = []
    for number, row in rows:
        try:
            if fmt == "results":
                layout = row.get("layout")
                if not isinstance(layout, dict):
                    raise BadRow("expected 'layout' to be an object with 'objects'")
                caption = _text(row.get("prompt"), "'prompt'")
                objects_raw = layout.get("objects")
            else:
                caption = _text(row.get("caption"), "'caption'")
                objects_raw = row.get("objects")
            image = _text(row.get("image_path"), "'image_path'", required=False)
            caption_en = _text(row.get("caption_en"), "'caption_en'", required=False)
            objects = _objects(objects_raw, clean, report, number)
        except BadRow as exc:
            if not skip_bad:
                raise LayoutError(str(exc), path=path, line=number) from None
            report.skipped.append((number, str(exc)))
            continue
        explicit = row.get("layout_id", row.get("id"))
        key = str(explicit) if explicit is not None else (
            Path(image).stem if image else f"line{number:06d}")
        parsed.append((key, {"_line": number, "caption": _fix(caption or "", report, number,
                                                              "caption"),
                             "caption_en": caption_en, "image": image, "objects": objects}))
    for layout_id, (_, p) in zip(_unique_ids(parsed), parsed, strict=True):
        report.layouts.append(Layout(layout_id, p["caption"], p["objects"], p["image"],
                                     p["caption_en"], p["_line"]))


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))
    except OSError as exc:
        raise LayoutError(f"cannot read file ({exc})", path=path) from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LayoutError(f"expected a UTF-8 JSON document, got {exc}", path=path) from None


def _first_captions(data: Any, path: Path) -> dict[int, str]:
    """image id -> caption: COCO captions json (first annotation id wins) or {id: text|[text]}."""
    out: dict[int, str] = {}
    if isinstance(data, dict) and "annotations" in data:
        anns = sorted(data["annotations"], key=lambda a: a.get("id", 0))
        for ann in anns:
            out.setdefault(int(ann["image_id"]), str(ann["caption"]).strip())
    elif isinstance(data, dict):
        for key, value in data.items():
            text = value[0] if isinstance(value, list) and value else value
            if not isinstance(text, str) or not str(key).isdigit():
                raise LayoutError(f"expected {{image id: caption}}, got {key!r}: {value!r}",
                                  path=path)
            out[int(key)] = text.strip()
    elif isinstance(data, list):
        for item in data:
            if not isinstance(item, dict) or "image_id" not in item or "caption" not in item:
                raise LayoutError(f"expected items with 'image_id' and 'caption', got {item!r}",
                                  path=path)
            out.setdefault(int(item["image_id"]), str(item["caption"]).strip())
    else:
        raise LayoutError(f"expected a captions object or list, got {type(data).__name__}",
                          path=path)
    return out


def _coco(path: Path, data: dict[str, Any], clean: _Cleaning, report: LoadReport,
          skip_bad: bool, captions: str | Path | None, zh_captions: str | Path | None,
          caption_language: str) -> None:
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise LayoutError(f"expected COCO instances json with a '{key}' list", path=path)
    cats = {int(c["id"]): str(c["name"]) for c in data["categories"]}
    if captions is None:
        guess = path.with_name(path.name.replace("instances_", "captions_"))
        captions = guess if guess != path and guess.is_file() else None
    en = _first_captions(_load_json(Path(captions)), Path(captions)) if captions else {}
    zh = _first_captions(_load_json(Path(zh_captions)), Path(zh_captions)) if zh_captions else {}
    anns: dict[int, list[dict[str, Any]]] = {}
    for ann in data["annotations"]:
        anns.setdefault(int(ann["image_id"]), []).append(ann)
    seen: set[str] = set()
    for img in data["images"]:
        image_id = int(img["id"])
        try:
            width, height = float(img["width"]), float(img["height"])
            if width <= 0 or height <= 0:
                raise BadRow(f"expected positive width/height, got {width}x{height}")
            objects = []
            for ann in sorted(anns.get(image_id, []), key=lambda a: a.get("id", 0)):
                if ann.get("iscrowd", 0):
                    report.dropped_boxes += 1
                    continue
                x, y, w, h = ann["bbox"]
                box, clipped = parse_bbox([x / width, y / height, (x + w) / width,
                                           (y + h) / height], scale_1000=False)
                report.clipped_boxes += clipped
                cid = int(ann["category_id"])
                if cid not in cats:
                    raise BadRow(f"expected a category id in the categories list, got {cid} "
                                 f"(annotation id {ann.get('id')})")
                objects.append({"name": cats[cid], "name_en": cats[cid], "category_id": cid,
                                "bbox": list(box)})
            kept = _objects(objects, clean, report, image_id)
        except (BadRow, KeyError, TypeError, ValueError) as exc:
            reason = f"image id {image_id}: {exc}"
            if not skip_bad:
                raise LayoutError(reason, path=path) from None
            report.skipped.append((image_id, reason))
            continue
        caption_en = en.get(image_id)
        caption = caption_en or ""
        if caption_language == "zh":
            if image_id in zh:
                caption = zh[image_id]
            elif zh_captions:
                report.missing_zh_captions += 1
        file_name = str(img.get("file_name", image_id))
        layout_id = Path(file_name).stem
        if layout_id in seen:
            layout_id = f"{layout_id}@{image_id}"
        seen.add(layout_id)
        report.layouts.append(Layout(layout_id, _fix(caption, report, image_id, "caption"), kept,
                                     file_name, caption_en, None))


def detect_format(path: Path) -> str:
    """'coco' for a .json document, 'results' when rows have 'prompt'/'layout', else 'jsonl'."""
    if path.suffix.lower() == ".json":
        return "coco"
    row = first_row(path)   # None: the strict reader reports the exact problem with its line
    return "results" if row is not None and "layout" in row else "jsonl"


def load_layouts(path: str | Path, format: LayoutFormat = "auto", *,
                 min_area: float = DataSpec.min_area, max_area: float = DataSpec.max_area,
                 min_side: float = DataSpec.min_side, max_boxes: int | None = DataSpec.max_boxes,
                 skip_bad: bool = False, captions: str | Path | None = None,
                 zh_captions: str | Path | None = None,
                 caption_language: str = DataSpec.caption_language) -> LoadReport:
    """Load layouts from the user's JSONL, a generated ``results.jsonl`` or COCO instances json.

    Thresholds default to the protocol's ``[data]`` defaults (the user's training filter); pass
    ``min_area=0, max_area=1, min_side=0, max_boxes=None`` to keep every valid box.
    """
    path = Path(path)
    if not path.is_file():
        raise LayoutError(f"expected a layouts file, got a missing path '{path}'", path=path)
    fmt = detect_format(path) if format == "auto" else format
    if fmt not in ("jsonl", "results", "coco"):
        raise LayoutError(f"expected format auto, jsonl, results or coco, got '{format}'")
    clean = _Cleaning(min_area, max_area, min_side, max_boxes)
    report = LoadReport(path=str(path), format=fmt)
    if fmt == "coco":
        data = _load_json(path)
        if not isinstance(data, dict):
            raise LayoutError(f"expected a COCO json object, got {type(data).__name__}", path=path)
        _coco(path, data, clean, report, skip_bad, captions, zh_captions, caption_language)
    else:
        _rows_to_layouts(path, _read_jsonl(path, report, skip_bad), fmt, clean, report, skip_bad)
    return report


def load_layouts_for(spec: DataSpec, *, skip_bad: bool = False) -> LoadReport:
    """``load_layouts`` with every setting taken from a protocol's ``[data]`` section."""
    if spec.layouts is None:
        raise LayoutError("expected [data] layouts to name a file, got nothing")
    return load_layouts(spec.layouts, spec.format, min_area=spec.min_area,
                        max_area=spec.max_area, min_side=spec.min_side,
                        max_boxes=spec.max_boxes, skip_bad=skip_bad,
                        captions=spec.coco_captions, zh_captions=spec.zh_captions,
                        caption_language=spec.caption_language)


def select_layouts(protocol: Protocol) -> tuple[list[Layout], str]:
    """The protocol's layouts: the first ``num_samples`` with boxes, in file order (stable),
    and the loading report's one-line summary (results.json ``layouts``)."""
    d = protocol.data
    if not d.layouts:
        raise ModelFileError("expected [data] layouts in the protocol, got none",
                             path=protocol.source, hint="set it or pass --layouts FILE")
    report = load_layouts_for(d)
    layouts = [lay for lay in report.layouts if lay.objects]
    if protocol.num_samples is not None:
        layouts = layouts[: protocol.num_samples]
    if not layouts:
        raise GatebenchError("expected at least one layout with boxes, got none", path=d.layouts)
    return layouts, report.summary()


def write_layouts_jsonl(layouts: Iterable[Layout], path: str | Path) -> Path:
    """Write layouts in the user's JSONL shape, UTF-8 with Chinese kept readable."""
    lines = [json.dumps(layout.to_dict(), ensure_ascii=False) + "\n" for layout in layouts]
    return atomic_write_text(Path(path), "".join(lines))
