"""Scoring a run's image sets: every checkpoint x gate scale (the shared scale 0 once), and the
detector on the real images (the ceiling), into per-sample frames and results rows."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from gatebench.checkpoint import CheckpointInfo
from gatebench.generate import read_png_meta
from gatebench.protocol import Protocol
from gatebench.rundir.saved import checkpoint_labels
from gatebench.score import ImageItem, score_images

CEILING_METRICS = ("iou50_rate", "miou", "ap50", "ap", "all_matched_rate")   # detector-only


def nonfinite_count(items: Sequence[ImageItem]) -> int:
    return sum(bool(read_png_meta(item.image_path).get("nonfinite")) for item in items)


def score_sets(items: Mapping[tuple[str, float], Sequence[ImageItem]],
               infos: Sequence[CheckpointInfo], scales: Sequence[float], protocol: Protocol,
               eval_models: Any, cache_dir: Path) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """(samples of every image, one results row per checkpoint x gate scale)."""
    frames, rows = [], []
    zero: Any = None
    labels = checkpoint_labels(info.path for info in infos)   # runA/final.pt vs runB/final.pt
    for info in infos:
        for s in scales:
            group = items[(info.sha256, s)]
            if s == 0.0 and zero is not None:      # scale 0 is shared: score it once
                result = zero
            else:
                result = score_images(group, protocol, **eval_models.score_kwargs(),
                                      cache_dir=cache_dir)
                zero = result if s == 0.0 else zero
            frame = result.samples.copy()
            frame.insert(0, "checkpoint", labels[str(info.path)])
            frames.append(frame)
            rows.append({"checkpoint": str(info.path), "label": labels[str(info.path)],
                         "checkpoint_sha256": info.sha256,
                         "gate_scale": s, "n_images": len(group),
                         "nonfinite_images": nonfinite_count(group),
                         "metrics": {k: v.to_dict() for k, v in result.metrics.items()},
                         "not_computed": dict(result.not_computed)})
    return pd.concat(frames, ignore_index=True), rows


def detector_ceiling(protocol: Protocol, eval_models: Any) -> dict[str, Any] | None:
    """The detector on the ground-truth images: what a perfect generator would score."""
    if eval_models.detector is None or not eval_models.real_images:
        return None
    real = score_images([ImageItem(path, lay) for lay, path in eval_models.real_images],
                        protocol, detector=eval_models.detector)
    return {"n_images": len(eval_models.real_images),
            "metrics": {k: v.to_dict() for k, v in real.metrics.items() if k in CEILING_METRICS}}
