"""Detections: the JSONL file format, the YOLO backend and the GT-class -> detector-label mapping.

The detector decides which ground-truth boxes can be scored at all: a box whose class it cannot
name is *unscorable* and counted apart, never silently counted as a miss (or a hit).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Collection, Mapping, Protocol, Sequence, runtime_checkable

from gatebench.errors import LayoutError, ModelFileError
from gatebench.files import atomic_write_text
from gatebench.readers.bbox import BadRow, Box, parse_bbox
from gatebench.readers.jsonl import read_jsonl

if TYPE_CHECKING:   # metrics sit below the protocol and the layouts: annotations only
    from gatebench.layouts import LayoutObject
    from gatebench.metrics.images import ImageLike
    from gatebench.protocol import DetectionSpec

# The 80 COCO detection classes in the order detectors (YOLO) index them.
COCO80_NAMES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush")
# COCO annotation category ids (1-90, with the paper's 11 unused ids left out) in the same order.
COCO80_TO_91: tuple[int, ...] = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28,
    31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55,
    56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84,
    85, 86, 87, 88, 89, 90)
COCO_ID_TO_NAME: dict[int, str] = dict(zip(COCO80_TO_91, COCO80_NAMES, strict=True))

OFFLINE_ENV = {"YOLO_OFFLINE": "1", "YOLO_AUTOINSTALL": "false", "HF_HUB_OFFLINE": "1",
               "TRANSFORMERS_OFFLINE": "1"}


@dataclass(frozen=True)
class Detection:
    bbox: Box          # normalised xyxy
    label: str         # the detector's class name (COCO English for YOLO-COCO)
    score: float
    # a zero-shot detector's: the object query it was assigned to (None: to none); it, not the
    # decoded label, is what the detection is matched by (metrics/zeroshot.py)
    phrase: str | None = None


class Detector(Protocol):
    """Anything that turns images into detections with a known label vocabulary."""

    @property
    def labels(self) -> frozenset[str]: ...

    def detect(self, images: Sequence[ImageLike]) -> list[list[Detection]]: ...


@runtime_checkable
class PhraseDetector(Protocol):
    """An open-vocabulary detector: each image is queried with its own objects' phrases, and
    each detection comes back with the phrase it was assigned to (``Detection.phrase``)."""

    open_vocabulary: bool

    @property
    def labels(self) -> frozenset[str]: ...     # empty: the vocabulary is each image's queries

    def detect_phrases(self, images: Sequence[ImageLike], queries: Sequence[Sequence[str]]
                       ) -> list[list[Detection]]: ...

    def identity(self) -> dict[str, Any]: ...


def gt_label(obj: LayoutObject, labels: Collection[str],
             class_map: Mapping[str, str] | None = None) -> str | None:
    """The detector label a GT object is scored as, or None (unscorable).

    Tried in order: ``class_map[name]`` / ``class_map[name_en]`` (the protocol's explicit
    mapping, e.g. Chinese names), ``name_en``, the name itself, and last the ``category_id`` read
    as a COCO id; each only if the detector can produce it. Names come before the number because
    a category id is not always a COCO id (the shapes world's id 7 is "blue square", COCO's 7 is
    "train"): a row's own names say what it is, the id only fills in when they match nothing.
    """
    lookup = {label.strip().lower(): label for label in labels}
    candidates: list[str | None] = []
    if class_map:
        candidates.append(class_map.get(obj.name))
        if obj.name_en is not None:
            candidates.append(class_map.get(obj.name_en))
    candidates += [obj.name_en, obj.name,
                   COCO_ID_TO_NAME.get(obj.category_id) if obj.category_id is not None else None]
    for candidate in candidates:
        if candidate is not None and candidate.strip().lower() in lookup:
            return lookup[candidate.strip().lower()]
    return None


def _parse_detection(raw: Any, i: int) -> Detection:
    if not isinstance(raw, dict):
        raise BadRow(f"expected detections[{i}] to be an object, got {type(raw).__name__}")
    box, _ = parse_bbox(raw.get("bbox"), scale_1000=False)
    label, score = raw.get("label"), raw.get("score", 1.0)
    if not isinstance(label, str) or not label:
        raise BadRow(f"expected detections[{i}].label to be a class name, got {label!r}")
    if isinstance(score, bool) or not isinstance(score, (int, float)) or score != score:
        raise BadRow(f"expected detections[{i}].score to be a number, got {score!r}")
    return Detection(box, label, float(score))


def load_detections(path: str | Path) -> dict[str, list[Detection]]:
    """Read ``{"image": NAME, "detections": [{"bbox", "label", "score"}]}`` lines, keyed by name.

    Keys are the image *file name* (``Path(image).name``); a repeated image is an error, since
    two detection lists for one image would make every rate ambiguous.
    """
    path = Path(path)
    out: dict[str, list[Detection]] = {}
    for number, row in ((r.line, r.value) for r in read_jsonl(path, what="detections",
                                                              error=LayoutError)):
        try:
            if not isinstance(row.get("image"), str):
                raise BadRow("expected an object with an 'image' file name")
            dets = row.get("detections")
            if not isinstance(dets, list):
                raise BadRow(f"expected 'detections' to be a list, got {type(dets).__name__}")
            parsed = [_parse_detection(d, i) for i, d in enumerate(dets)]
        except BadRow as exc:
            raise LayoutError(str(exc), path=path, line=number) from None
        name = Path(row["image"]).name
        if name in out:
            raise LayoutError(f"expected one line per image, got '{name}' again", path=path,
                              line=number)
        out[name] = parsed
    return out


def import_ultralytics() -> Any:
    """Import ultralytics with every download/auto-install/online check switched off first."""
    for key, value in OFFLINE_ENV.items():
        os.environ[key] = value
    os.environ.setdefault("YOLO_VERBOSE", "false")
    import ultralytics  # noqa: PLC0415 (lazy: heavy, and the env must be set first)
    return ultralytics


class YoloDetector:
    """Ultralytics YOLO from a local weights file; normalised xyxy + class names out."""

    def __init__(self, model: Any, spec: DetectionSpec, device: str | None = None,
                 weights: str | Path | None = None) -> None:
        self.model = model
        self.spec = spec            # the protocol's [detection]: conf, iou, imgsz, batch_size
        self.device = None if device in (None, "auto") else device
        self.weights = Path(weights) if weights is not None else None

    @classmethod
    def from_file(cls, path: str | Path, spec: DetectionSpec,
                  device: str | None = None) -> "YoloDetector":
        """Load ``path`` (a local .pt); never a hub/asset name that ultralytics would download."""
        path = Path(path)
        if not path.is_file():
            raise ModelFileError(f"expected a local YOLO weights file, got a missing path '{path}'",
                                 path=path, hint="put the .pt file there or set [models] detector "
                                 "in the protocol to its path (weights are never downloaded)")
        yolo = import_ultralytics().YOLO
        try:
            model = yolo(str(path))
        except (RuntimeError, ValueError, KeyError, AttributeError, OSError) as exc:
            raise ModelFileError(f"expected an ultralytics YOLO checkpoint, got {exc}",
                                 path=path) from None
        return cls(model, spec, device, weights=path)

    @property
    def labels(self) -> frozenset[str]:
        return frozenset(str(n) for n in self.model.names.values())

    @property
    def sha256(self) -> str | None:
        from gatebench.files import file_sha256  # noqa: PLC0415

        return file_sha256(self.weights) if self.weights is not None else None

    def detect(self, images: Sequence[ImageLike]) -> list[list[Detection]]:
        """Detections per image (paths, PIL images or HWC uint8 arrays), in batches."""
        out: list[list[Detection]] = []
        size = max(1, self.spec.batch_size)
        for start in range(0, len(images), size):
            batch = [str(i) if isinstance(i, Path) else i for i in images[start:start + size]]
            results = self.model.predict(source=batch, imgsz=self.spec.imgsz, conf=self.spec.conf,
                                         iou=self.spec.iou, device=self.device, verbose=False)
            for result in results:
                names = result.names
                boxes = result.boxes
                xyxyn = boxes.xyxyn.cpu().numpy().tolist()
                classes = boxes.cls.cpu().numpy().astype(int).tolist()
                scores = boxes.conf.cpu().numpy().tolist()
                out.append([Detection((float(b[0]), float(b[1]), float(b[2]), float(b[3])),
                                      str(names[c]), float(s))
                            for b, c, s in zip(xyxyn, classes, scores, strict=True)])
        return out


def write_detections_jsonl(detections: Mapping[str, Sequence[Detection]], path: str | Path) -> Path:
    """The JSONL format ``load_detections`` reads (UTF-8, names kept readable)."""
    lines = []
    for image, dets in detections.items():
        row = {"image": image, "detections": [
            {"bbox": [round(v, 6) for v in d.bbox], "label": d.label,
             "score": round(d.score, 6)} for d in dets]}
        lines.append(json.dumps(row, ensure_ascii=False) + "\n")
    return atomic_write_text(Path(path), "".join(lines))


def detections_vocabulary(detections: Mapping[str, Sequence[Detection]] | None) -> frozenset[str]:
    """A detections file's detector is unknown: every label it produced, plus COCO's 80 (so a
    COCO class that was never detected still counts as a miss, not as unscorable)."""
    found = {d.label for dets in (detections or {}).values() for d in dets}
    return frozenset(COCO80_NAMES) | found
