"""Scoring image sets: a run's (every checkpoint x gate scale, the shared scale 0 once, and the
detector on the real images: the ceiling) and a folder made elsewhere (`gatebench score`)."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence
from typing import Protocol as TypingProtocol

import pandas as pd

from gatebench.adapters.types import CheckpointInfo
from gatebench.image_cache import read_png_meta
from gatebench.metrics.health_prefetch import HealthPrefetch
from gatebench.metrics.spec import DETECTOR_METRICS
from gatebench.metrics.timing import StageTimer
from gatebench.metrics.twin_cache import TwinCache
from gatebench.protocol import Protocol, load_protocol, with_flags
from gatebench.rundir.saved import checkpoint_labels
from gatebench.score import ImageItem, ScoreResult, score_folder, score_images

if TYPE_CHECKING:
    from gatebench.metrics.evalmodels import EvalModels
    from gatebench.verdict import TargetRow



# A watch's memo of gate-0 scores: the gate-0 set's image paths -> that set's ScoreResult.
ZeroScores = dict[tuple[str, ...], ScoreResult]


class ScoreModels(TypingProtocol):
    """What scoring needs of the evaluation models: score_images' model keywords (EvalModels,
    or a round's per-image-only view of them in sequential/rounds.py)."""

    def score_kwargs(self) -> dict[str, Any]: ...


def nonfinite_count(items: Sequence[ImageItem]) -> int:
    return sum(bool(read_png_meta(item.image_path).get("nonfinite")) for item in items)


def score_sets(items: Mapping[tuple[str, float], Sequence[ImageItem]],
               infos: Sequence[CheckpointInfo], scales: Sequence[float], protocol: Protocol,
               eval_models: ScoreModels, cache_dir: Path, health: HealthPrefetch | None = None,
               zero_scores: ZeroScores | None = None, timer: StageTimer | None = None
               ) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """(samples of every image, one results row per checkpoint x gate scale).

    Items that carry their pixels are scored from memory; every gate-0 twin's health maps are
    made once for all the sets (one TwinCache: ``health``'s, when its verdicts were started
    during generation, which are then taken instead of computed). ``zero_scores``: a memo kept
    by the caller across calls, keyed by the gate-0 set's image paths (`watch`: the base
    model's images are scored once per watch, not once per checkpoint). ``timer``: each set's
    scoring phases (metrics/timing.py), for the bench; None records nothing."""
    frames, rows = [], []
    zero: ScoreResult | None = None
    twins = health.twin_cache if health is not None and health.twin_cache is not None \
        else TwinCache()
    labels = checkpoint_labels(info.path for info in infos)   # runA/final.pt vs runB/final.pt
    for info in infos:
        for s in scales:
            group = items[(info.sha256, s)]
            key = tuple(str(item.image_path) for item in group)   # the memo's key (scale 0)
            if s == 0.0 and zero is None and zero_scores is not None:
                zero = zero_scores.get(key)
            if s == 0.0 and zero is not None:      # scale 0 is shared: score it once
                result = zero
            else:
                result = score_images(group, protocol, **eval_models.score_kwargs(),
                                      cache_dir=cache_dir, twin_cache=twins,
                                      health_prefetch=health, timer=timer)
                zero = result if s == 0.0 else zero
                if s == 0.0 and zero_scores is not None:
                    zero_scores[key] = result
            frame = result.samples.copy()
            frame.insert(0, "checkpoint", labels[str(info.path)])
            frames.append(frame)
            rows.append({"checkpoint": str(info.path), "label": labels[str(info.path)],
                         "checkpoint_sha256": info.sha256,
                         "gate_scale": s, "n_images": len(group),
                         "nonfinite_images": nonfinite_count(group),
                         "metrics": {k: v.to_dict() for k, v in result.metrics.items()},
                         "not_computed": dict(result.not_computed),
                         # how FID/KID were computed here (README: "which route each took")
                         "fid_route": (result.info.get("fid_route") or {}).get("all")})
    return pd.concat(frames, ignore_index=True), rows


def detector_ceiling(protocol: Protocol, eval_models: EvalModels) -> dict[str, Any] | None:
    """The detector on the ground-truth images: what a perfect generator would score."""
    if eval_models.detector is None or not eval_models.real_images:
        return None
    real = score_images([ImageItem(path, lay) for lay, path in eval_models.real_images],
                        protocol, detector=eval_models.detector, image_health=False)
    return {"n_images": len(eval_models.real_images),
            "metrics": {k: v.to_dict() for k, v in real.metrics.items() if k in DETECTOR_METRICS}}


def score_elsewhere(images: Path, layouts: Path, protocol: str | None, detections: Path | None,
                    *, device: str = "auto", skip_bad: bool = False,
                    garbled_threshold: float | None = None,
                    blank_threshold: float | None = None
                    ) -> tuple[dict[str, Any], ScoreResult, list[TargetRow]]:
    """`gatebench score`: (the score.json document, the ScoreResult, the target rows)."""
    from gatebench.metrics.evalmodels import load_eval_models  # noqa: PLC0415
    from gatebench.models.device import resolve_device  # noqa: PLC0415
    from gatebench.rundir.results import decide_verdict, record_verdict  # noqa: PLC0415
    from gatebench.verdict import evaluate_targets  # noqa: PLC0415

    proto = load_protocol(protocol) if protocol else Protocol(name="score")
    # Targets of a generation protocol name gate scales; here every image counts once.
    proto = dataclasses.replace(proto, targets=tuple(dataclasses.replace(t, gate_scales=None)
                                                     for t in proto.targets))
    proto = with_flags(proto, garbled_threshold=garbled_threshold,
                       blank_threshold=blank_threshold)
    dev = resolve_device(device)
    vocabulary = None
    if detections is not None:
        # the protocol's YOLO names the classes, not COCO (a zero-shot folder has no fixed ones)
        if proto.models.detector and not Path(proto.models.detector).is_dir():
            from gatebench.metrics.detect import YoloDetector  # noqa: PLC0415
            vocabulary = YoloDetector.from_file(proto.models.detector, proto.detection).labels
        proto = proto.replace(models={"detector": None})
    models = load_eval_models(proto, device=dev) if protocol else None
    kwargs = models.score_kwargs() if models else {}
    if vocabulary is not None:
        kwargs["detector_labels"] = vocabulary
    result = score_folder(images, layouts, proto, detections, skip_bad=skip_bad, **kwargs)
    row = {"checkpoint": str(images), "gate_scale": None, "n_images": len(result.samples),
           "metrics": {k: v.to_dict() for k, v in result.metrics.items()},
           "not_computed": dict(result.not_computed)}
    targets = evaluate_targets(proto.targets, [row])
    document = {"schema_version": 1, "images": str(images), "layouts": str(layouts),
                "protocol": proto.name, **result.to_dict(),
                "models": models.identity() if models else {},
                "targets": [t.to_dict() for t in targets]}
    record_verdict(document, decide_verdict(targets))
    return document, result, targets


def write_score_outputs(document: dict[str, Any], result: ScoreResult, images: Path,
                        out: Path) -> None:
    """samples.jsonl, score.json and report.md (with the flagged images) into ``out``."""
    from gatebench.render.flagged import write_score_report  # noqa: PLC0415
    from gatebench.rundir.outputs import ensure_out_dir  # noqa: PLC0415
    from gatebench.rundir.results import write_json  # noqa: PLC0415
    from gatebench.rundir.samples import write_samples_jsonl  # noqa: PLC0415

    ensure_out_dir(out)
    write_samples_jsonl(result.samples, out / "samples.jsonl")
    write_json(out / "score.json", document)
    write_score_report(document, result.samples, images, out)
