"""The score stage: images + layouts -> per-sample records and metrics with intervals.

Called by ``gatebench score`` (images made elsewhere) and ``gatebench run`` (after generation).
A metric whose model is not configured (no detector / detections, no CLIP, no FID extractor or
real images) is ABSENT from ``metrics`` and listed in ``not_computed`` with the reason: a default
number would read as a measurement.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Collection, Mapping, Sequence, cast

import numpy as np
import pandas as pd

from gatebench.errors import LayoutError, MetricError
from gatebench.layouts import Layout, load_layouts
from gatebench.metrics.aggregate import SetAggregator
from gatebench.metrics.clip_score import ClipBackend, clip_scores, region_clip_scores
from gatebench.metrics.coco_ap import APImage
from gatebench.metrics.detect import (
    Detection,
    Detector,
    PhraseDetector,
    detections_vocabulary,
    gt_label,
)
from gatebench.metrics.fid import (
    FeatureExtractor,
    ReferenceStats,
    extract_features,
    reference_stats,
)
from gatebench.metrics.health import ImageHealth
from gatebench.metrics.health_prefetch import HealthPrefetch, assess_with
from gatebench.metrics.images import to_pil_rgb
from gatebench.metrics.matching import BoxMatch, match_boxes, summarize_matches
from gatebench.metrics.relations import RelationCounts, relation_counts
from gatebench.metrics.stats import MetricValue
from gatebench.metrics.timing import StageTimer, phase
from gatebench.metrics.twin_cache import TwinCache
from gatebench.metrics.zeroshot import object_queries
from gatebench.protocol import Protocol
from gatebench.rundir.samples import jsonable
from gatebench.writes.records import read_record, sample_columns

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
HEALTH_METRICS = ("garbled_rate", "blank_rate")     # from the image-health cues
_CHUNK = 32


@dataclass(frozen=True)
class ImageItem:
    image_path: Path
    layout: Layout
    gate_scale: float | None = None
    reference_image_path: Path | None = None   # gate-0 twin (same layout, same seed)
    # where the adapter wrote while making it (writes.records); None: read the image's sidecar
    writes: dict[str, Any] | None = field(default=None, compare=False, hash=False)
    # the pixels themselves (uint8 HWC, as written to image_path), when the caller has them in
    # memory (gatebench run: just generated): scored without reading the file back
    image: Any = field(default=None, compare=False, hash=False, repr=False)
    reference_image: Any = field(default=None, compare=False, hash=False, repr=False)


@dataclass
class ScoreResult:
    samples: pd.DataFrame
    metrics: dict[str, MetricValue]
    not_computed: dict[str, str]
    metrics_by_gate_scale: dict[float | None, dict[str, MetricValue]] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``metrics`` as {name: {value, ci_low, ci_high, n}} plus what was skipped."""
        return {"metrics": {k: v.to_dict() for k, v in self.metrics.items()},
                "not_computed": dict(self.not_computed),
                "metrics_by_gate_scale": {
                    ("none" if g is None else f"{g:g}"): {k: v.to_dict() for k, v in m.items()}
                    for g, m in self.metrics_by_gate_scale.items()},
                "n_images": int(len(self.samples)), "info": jsonable(self.info)}


def _items(images: Sequence[Any]) -> list[ImageItem]:
    out = []
    for i, item in enumerate(images):
        if isinstance(item, ImageItem):
            out.append(item)
            continue
        if not isinstance(item, (tuple, list)) or not 2 <= len(item) <= 4:
            raise MetricError(f"expected (image_path, Layout, gate_scale, reference) for image "
                              f"{i}, got {item!r}")
        path, layout, scale, ref = (*item, None, None)[:4]
        out.append(ImageItem(Path(path), layout, None if scale is None else float(scale),
                             None if ref is None else Path(ref)))
    return out


def _pixels(image: Any, path: Path | None) -> Any:
    """The in-memory image when there is one (no read-back), else the file's."""
    if image is not None:
        return to_pil_rgb(image)
    assert path is not None, "an item without its image in memory names its file"
    return _load(path)


_NO_HEALTH = ImageHealth(float("nan"), False, float("nan"), False)   # image_health=False


def _twin(it: ImageItem) -> Any:
    """The reference as assess_many takes it: pixels in memory, else the path (decoded only if
    the twin cache has not got its maps yet)."""
    return it.reference_image if it.reference_image is not None else it.reference_image_path


def _load(path: Path) -> Any:
    from PIL import UnidentifiedImageError  # noqa: PLC0415

    try:
        return to_pil_rgb(path)
    except (OSError, UnidentifiedImageError) as exc:
        raise MetricError(f"expected a readable image, got {exc}", path=path) from None


def _reason(boxes: list[dict[str, Any]], det: bool, health: Any,
            unscorable_why: str = "no detector class") -> str:
    parts = []
    if det:
        scorable = [b for b in boxes if b["scorable"]]
        missed = [b for b in scorable if not b["matched"]]
        if scorable:
            text = f"{len(scorable) - len(missed)}/{len(scorable)} boxes matched"
            if missed:
                text += " (unmatched: " + ", ".join(
                    f"{b['label']} IoU {b['iou']:.2f}" for b in missed) + ")"
            parts.append(text)
    else:
        parts.append("no detector")
    unscorable = [b["label"] for b in boxes if b["scorable"] is False]
    if unscorable:
        parts.append(f"{len(unscorable)} unscorable ({', '.join(unscorable)}: {unscorable_why})")
    if health.garbled:
        parts.append(f"garbled {health.garbled_score:.2f}")
    if health.blank:
        parts.append(f"blank {health.blank_score:.2f}")
    return "; ".join(parts) if parts else "ok"


def score_images(images: Sequence[Any], protocol: Protocol, *,
                 detections: Mapping[str, Sequence[Detection]] | None = None,
                 detector: Detector | PhraseDetector | None = None,
                 detector_labels: Collection[str] | None = None,
                 clip: ClipBackend | None = None, fid_extractor: FeatureExtractor | None = None,
                 real_images: Sequence[str | Path] | ReferenceStats | None = None,
                 cache_dir: str | Path | None = None, clip_language: str = "native",
                 twin_cache: TwinCache | None = None, image_health: bool = True,
                 health_prefetch: HealthPrefetch | None = None,
                 timer: StageTimer | None = None) -> ScoreResult:
    """Score ``(image_path, Layout, gate_scale|None, reference_image_path|None)`` items.

    ``detections`` (keyed by image file name) wins over ``detector``. ``detector_labels``: the
    vocabulary GT classes are mapped into (default: the detector's, else the 80 COCO names). A
    zero-shot ``detector`` (PhraseDetector) is queried with each image's own object queries
    (metrics/zeroshot.py) and matched by the query each detection was assigned to.
    ``clip_language="en"`` scores ``caption_en``/``name_en`` where present instead of the
    caption/phrase the image was generated from. Items that carry their pixels (``image``,
    ``reference_image``: uint8 RGB, what their PNG holds) are scored from memory, no file read;
    the others are decoded once for CLIP, FID features and health (the detector still gets the
    path: its own decoder can differ from PIL's on JPEGs or 16-bit PNGs). ``twin_cache``: one
    TwinCache over several calls (a run's sets) analyses each gate-0 twin once;
    ``health_prefetch``: verdicts started while generating (taken, not recomputed).
    ``image_health=False`` (the detector ceiling, which reports detection only) skips the health
    cues: their columns are empty and garbled_rate / blank_rate are not computed.
    ``timer``: charged each step's phases (metrics/timing.py names them); None records nothing.

    Three steps: per-image records (``_Scorer``), the set-level inputs (AP images, FID features
    and the reference statistics), aggregation (``metrics.aggregate``, once over all images and
    once per gate scale).
    """
    items = _items(images)
    if not items:
        raise MetricError("expected at least one image to score, got none")
    _check_detections(items, detections)
    labels = frozenset(detector_labels) if detector_labels is not None else (
        detector.labels if detector is not None and detections is None else
        detections_vocabulary(detections))
    want_fid = fid_extractor is not None and real_images is not None
    scorer = _Scorer(protocol, detections, detector, labels, clip, clip_language,
                     fid_extractor if want_fid else None, twin_cache, image_health,
                     health_prefetch, timer=timer)
    rows: list[dict[str, Any]] = []
    ap_images: list[APImage] = []
    fid_chunks: list[np.ndarray] = []
    for start in range(0, len(items), _CHUNK):
        chunk_rows, chunk_ap, feats = scorer.chunk(items[start:start + _CHUNK])
        rows += chunk_rows
        ap_images += chunk_ap
        if feats is not None:
            fid_chunks.append(feats)
    samples = pd.DataFrame(rows)
    reference = (_fid_reference(fid_extractor, real_images, cache_dir, protocol)
                 if fid_extractor is not None and real_images is not None else None)  # want_fid
    device, scoring = getattr(fid_extractor, "device", None), protocol.scoring
    sets = SetAggregator({"detector": scorer.has_det, "clip": clip is not None, "none": True,
                          "adapter": True, "fid": reference is not None}, ap_images, reference,
                         np.concatenate(fid_chunks) if want_fid else None, scoring.bootstrap,
                         scoring.ci_level, protocol.seed,
                         None if device is None or str(device) == "cpu" else str(device),
                         timer=timer)
    # without health cues the rates would average empty flags: counted as False, then dropped
    frame = samples if image_health else samples.assign(garbled=False, blank=False)
    metrics, not_computed, by_scale, fid_routes = sets.all_and_by_scale(
        frame, [it.gate_scale for it in items], {} if image_health else dict.fromkeys(
            HEALTH_METRICS, "image health not computed for this set (image_health=False)"))
    info = {"detection": "detections file" if detections is not None else (
                "detector" if detector is not None else None),
            "detector_labels": len(labels), "clip": getattr(clip, "name", None),
            "fid_extractor": getattr(fid_extractor, "name", None),
            "fid_reference": dict(reference.recipe) if reference is not None else None,
            # how each FID/KID number was computed (all images, then each gate scale's)
            "fid_route": fid_routes if reference is not None else None,
            "match_iou": scoring.match_iou, "bootstrap": scoring.bootstrap,
            "ci_level": scoring.ci_level, "garbled_threshold": scoring.garbled_threshold,
            "blank_threshold": scoring.blank_threshold,
            "relations": {k: getattr(protocol.detection, f"relation_{k}")
                          for k in ("min_sep", "margin", "min_iou")}}
    return ScoreResult(samples, metrics, not_computed, by_scale, info)


def _check_detections(items: list[ImageItem],
                      detections: Mapping[str, Sequence[Detection]] | None) -> None:
    """A detections file must name every image, and names must be unique to key it."""
    if detections is None:
        return
    names = [it.image_path.name for it in items]
    if len(set(names)) != len(names):
        raise MetricError("expected unique image file names when detections are keyed by "
                          "file name, got duplicates")
    missing = [n for n in names if n not in detections]
    if missing:
        raise LayoutError(f"expected a detections line for every image, got none for "
                          f"{len(missing)} (e.g. '{missing[0]}')",
                          hint='add {"image": NAME, "detections": []} for empty images')


@dataclass
class _Scorer:
    """Per-image records: one chunk of images -> (records, AP inputs, FID features or None)."""

    protocol: Protocol
    detections: Mapping[str, Sequence[Detection]] | None
    detector: Detector | PhraseDetector | None
    labels: frozenset[str]               # the vocabulary GT classes are mapped into
    clip: ClipBackend | None
    clip_language: str
    fid_extractor: FeatureExtractor | None   # None: no FID features wanted
    twin_cache: TwinCache | None
    image_health: bool
    health: HealthPrefetch | None      # verdicts started during generation (run.py)
    timer: StageTimer | None = None    # the bench's phase split (metrics/timing.py)

    @property
    def has_det(self) -> bool:
        return self.detections is not None or self.detector is not None

    @property
    def phrases(self) -> bool:
        """Zero-shot: objects are classed by their query text, detections by their phrase."""
        return self.detections is None and isinstance(self.detector, PhraseDetector)

    def chunk(self, chunk: list[ImageItem]
              ) -> tuple[list[dict[str, Any]], list[APImage], np.ndarray | None]:
        scoring = self.protocol.scoring
        with phase(self.timer, "pixels"):
            pils = [_pixels(it.image, it.image_path) for it in chunk]
        with phase(self.timer, "image_health"):
            healths = assess_with(
                self.health, [str(it.image_path) for it in chunk], pils,
                [_twin(it) for it in chunk], garbled_threshold=scoring.garbled_threshold,
                blank_threshold=scoring.blank_threshold, twin_cache=self.twin_cache,
                twin_keys=[str(it.reference_image_path) if it.reference_image_path else None
                           for it in chunk]) if self.image_health else [_NO_HEALTH] * len(chunk)
        # the FID extractor's batches are these chunks, as when it read the files
        with phase(self.timer, "fid_features"):
            feats = None if self.fid_extractor is None else extract_features(
                pils, self.fid_extractor, resize=scoring.fid_resize, batch_size=_CHUNK)
        with phase(self.timer, "detection"):
            if self.detections is not None:
                dets = [list(self.detections[it.image_path.name]) for it in chunk]
            elif self.phrases:            # each image queried with its own objects' phrases
                phrase_detector = cast(PhraseDetector, self.detector)   # what self.phrases means
                dets = phrase_detector.detect_phrases(pils, [
                    [q for q in object_queries(it.layout.objects, self.protocol.detection) if q]
                    for it in chunk])
            elif self.detector is not None:   # a file by its path: the detector decodes it
                detector = cast(Detector, self.detector)    # not self.phrases: a label detector
                dets = detector.detect([pil if it.image is not None else it.image_path
                                        for it, pil in zip(chunk, pils, strict=True)])
            else:
                dets = [[] for _ in chunk]
        g_clip: Sequence[float] | np.ndarray = [float("nan")] * len(chunk)
        r_clip: Sequence[np.ndarray | None] = [None] * len(chunk)
        if self.clip is not None:
            use_en = self.clip_language == "en"
            caps = [(it.layout.caption_en if use_en and it.layout.caption_en else it.layout.caption)
                    for it in chunk]
            with phase(self.timer, "clip"):
                g_clip = clip_scores(self.clip, pils, caps)
                r_clip = region_clip_scores(
                    self.clip, pils, [[o.bbox for o in it.layout.objects] for it in chunk],
                    [[(o.name_en if use_en and o.name_en else o.name) for o in it.layout.objects]
                     for it in chunk])
        rows, ap_images = [], []
        for it, pil, det, health, g, r in zip(chunk, pils, dets, healths, g_clip, r_clip,
                                                  strict=True):
            row, ap_image = self.record(it, pil, det, health, g, r)
            rows.append(row)
            ap_images.append(ap_image)
        return rows, ap_images, feats

    def relations(self, objs: Sequence[Any], records: Sequence[BoxMatch],
                  det: Sequence[Detection]) -> RelationCounts:
        """The image's relation pairs: each object's assigned detection (IoU above the
        protocol's relation_min_iou) stands for it (metrics/relations.py)."""
        spec = self.protocol.detection
        boxes = [det[r.det_index].bbox if r.scorable and r.det_index is not None
                 and r.iou > spec.relation_min_iou else None for r in records]
        return relation_counts([o.bbox for o in objs], [r.scorable for r in records], boxes,
                               min_sep=spec.relation_min_sep, margin=spec.relation_margin)

    def record(self, it: ImageItem, pil: Any, det: Sequence[Detection], health: ImageHealth,
               clip_score: float, region_scores: Sequence[float] | None
               ) -> tuple[dict[str, Any], APImage]:
        """One image's per-sample record (``region_scores`` None: no CLIP) and its AP input."""
        has_det, image_health = self.has_det, self.image_health
        objs = it.layout.objects
        phrases = self.phrases
        gt_labels = object_queries(objs, self.protocol.detection) if phrases else [
            gt_label(o, self.labels, self.protocol.detection.class_map) for o in objs]
        det_labels = [d.phrase if phrases else d.label for d in det]
        records = match_boxes([o.bbox for o in objs], gt_labels, [d.bbox for d in det],
                              det_labels, [d.score for d in det], self.protocol.scoring.match_iou)
        summary = summarize_matches(records)
        rel = self.relations(objs, records, det) if has_det else None
        boxes = [{"label": o.name, "class": lab, "bbox": [round(v, 6) for v in o.bbox],
                  "scorable": r.scorable, "matched": r.matched if has_det else None,
                  "iou": round(r.iou, 6) if has_det else None}
                 for o, lab, r in zip(objs, gt_labels, records, strict=True)]
        region = float("nan")
        if region_scores is not None:
            for b, s in zip(boxes, region_scores, strict=True):
                b["region_clip_score"] = float(s)
            region = float(np.mean(region_scores)) if len(region_scores) else float("nan")
        row = {
            "image": it.image_path.name, "image_path": str(it.image_path),
            "layout_id": it.layout.layout_id, "gate_scale": it.gate_scale,
            "clip_score": float(clip_score), "region_clip_score": region,
            "garbled_score": health.garbled_score,
            "garbled": health.garbled if image_health else None,
            "blank_score": health.blank_score, "blank": health.blank if image_health else None,
            "n_boxes": len(objs), "n_scorable": summary["n_scorable"],
            "n_matched": summary["n_matched"] if has_det else None,
            "iou_sum": summary["iou_sum"] if has_det else None,
            "all_matched": summary["all_matched"] if has_det else None,
            "rel_pairs": rel.pairs if rel else None,
            "rel_pairs_matched": rel.matched if rel else None,
            "rel_held": rel.held if rel else None,
            "rel_pairs_unscorable": rel.unscorable if rel else None,
            **sample_columns(it.writes if it.writes is not None else
                             read_record(it.image_path), it.gate_scale),
            "boxes": boxes, "reason": _reason(boxes, has_det, health, "no English query"
                                              if phrases else "no detector class"),
            # optional extras for report grids (not Stable names): prompt and raw detections
            "caption": it.layout.caption,
            "detections": [{"bbox": [round(v, 6) for v in d.bbox], "label": d.label,
                            "score": round(float(d.score), 4),
                            **({"phrase": d.phrase} if phrases else {})}
                           for d in det] if has_det else None}
        kept = [(d, lab) for d, lab in zip(det, det_labels, strict=True) if lab is not None]  # AP: a phrase
        ap_image = APImage(
            pil.size[0], pil.size[1], [o.bbox for o, r in zip(objs, records, strict=True) if r.scorable],
            [str(lab) for lab, r in zip(gt_labels, records, strict=True) if r.scorable],
            [d.bbox for d, _ in kept], [str(lab) for _, lab in kept], [d.score for d, _ in kept])
        return row, ap_image


def _fid_reference(fid_extractor: FeatureExtractor,
                   real_images: Sequence[str | Path] | ReferenceStats,
                   cache_dir: str | Path | None, protocol: Protocol) -> ReferenceStats:
    """The real images' FID statistics (given, or computed and cached under ``cache_dir``)."""
    if isinstance(real_images, ReferenceStats):
        return real_images
    if cache_dir is None:
        from gatebench.files import cache_dir as gatebench_cache  # noqa: PLC0415

        cache_dir = gatebench_cache() / "refstats"
    return reference_stats(list(real_images), fid_extractor, cache_dir=cache_dir,
                           resize=protocol.scoring.fid_resize)


def _pair(images_dir: Path, layouts: list[Layout], source: Path) -> list[ImageItem]:
    by_key: dict[str, Layout] = {}
    for layout in layouts:
        keys = {layout.layout_id}
        if layout.image_path:
            keys.add(Path(layout.image_path).stem)
        for key in keys:
            if key in by_key and by_key[key] is not layout:
                raise LayoutError(f"expected one layout per image name, got two for '{key}' "
                                  f"(lines {by_key[key].source_line} and {layout.source_line})",
                                  path=source)
            by_key[key] = layout
    files = sorted(p for p in images_dir.iterdir()
                   if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise LayoutError(f"expected images ({', '.join(IMAGE_SUFFIXES)}) in '{images_dir}', "
                          f"got none", path=images_dir)
    items: list[ImageItem] = []
    orphans: list[str] = []
    used: set[str] = set()
    for file in files:
        match = by_key.get(file.stem)
        if match is None:
            orphans.append(file.name)
            continue
        if match.layout_id in used:
            raise LayoutError(f"expected one image per layout, got two for '{match.layout_id}' "
                              f"(e.g. '{file.name}')", path=images_dir)
        used.add(match.layout_id)
        items.append(ImageItem(file, match))
    unused = [lay.layout_id for lay in layouts if lay.layout_id not in used]
    if orphans:
        raise LayoutError(f"expected a layout for every image, got {len(orphans)} image(s) "
                          f"without one (e.g. {', '.join(orphans[:3])})", path=images_dir,
                          hint=f"image file stems must match image_path stems or layout ids "
                          f"in {source}")
    if unused:
        raise LayoutError(f"expected an image for every layout, got {len(unused)} layout(s) "
                          f"without one (e.g. {', '.join(unused[:3])})", path=source,
                          hint=f"generate the missing images into {images_dir} or remove "
                          f"those rows")
    return items


def score_folder(images_dir: str | Path, layouts_path: str | Path, protocol: Protocol,
                 detections_path: str | Path | None = None, *, skip_bad: bool = False,
                 **kwargs: Any) -> ScoreResult:
    """Pair every image in ``images_dir`` with its layout by file stem, then ``score_images``.

    Unpaired images or layouts are errors (a silently smaller set changes every number).
    ``kwargs`` go to ``score_images`` (detector, clip, fid_extractor, real_images, ...).
    """
    from gatebench.metrics.detect import load_detections  # noqa: PLC0415

    images_dir, layouts_path = Path(images_dir), Path(layouts_path)
    if not images_dir.is_dir():
        raise LayoutError(f"expected an images folder, got a missing path '{images_dir}'",
                          path=images_dir)
    d = protocol.data
    report = load_layouts(layouts_path, d.format, min_area=d.min_area, max_area=d.max_area,
                          min_side=d.min_side, max_boxes=d.max_boxes, skip_bad=skip_bad,
                          captions=d.coco_captions, zh_captions=d.zh_captions,
                          caption_language=d.caption_language)
    items = _pair(images_dir, report.layouts, layouts_path)
    dets = load_detections(detections_path) if detections_path is not None else None
    result = score_images(items, protocol, detections=dets, **kwargs)
    result.info["layouts"] = report.summary()
    return result
