"""Metric building blocks: matching, COCO AP, FID/KID, CLIP score, image health, bootstrap.

Each is a plain function over arrays/images; ``gatebench.score`` composes them into the stage.
The metric table (``gatebench.metrics.spec``) says what each metric is. Names below load their
module on first use (PEP 562), so importing the light ``spec`` (as ``gatebench.protocol`` does)
pulls in neither scipy nor ``health``. Heavy dependencies (torch, transformers, open_clip,
faster-coco-eval) are imported lazily too.
"""
from __future__ import annotations

import importlib
from typing import Any

# Eager: the function shares its submodule's name, and a lazy name would lose to the submodule
# attribute Python sets on first import of ``gatebench.metrics.coco_ap`` (numpy only; light).
from gatebench.metrics.coco_ap import APImage as APImage, coco_ap as coco_ap

_WHERE = {
    "clip_score": ("ClipBackend", "OpenClip", "TransformersClip", "clip_scores", "crop_box",
                   "region_clip_scores"),
    "fid": ("FeatureExtractor", "ModuleExtractor", "ReferenceStats", "extract_features",
            "inception_extractor", "reference_stats"),
    "fid_maths": ("feature_stats", "fid_from_features", "frechet_distance", "kid",
                  "mmd2_unbiased"),
    "health": ("ImageHealth", "assess", "blank_components", "blank_score", "garbled_components",
               "garbled_score", "health_stats", "is_garbled", "structure_similarity"),
    "matching": ("BoxMatch", "box_iou", "match_boxes", "summarize_matches"),
    "stats": ("MetricValue", "PairedDiff", "bootstrap_ci", "mean_ci", "paired_bootstrap_diff"),
}
_MODULE_OF = {name: module for module, names in _WHERE.items() for name in names}

__all__ = ["APImage", "coco_ap", *_MODULE_OF]  # noqa: PLE0604, PLE0605


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'gatebench.metrics' has no attribute '{name}'")
    value = getattr(importlib.import_module(f"gatebench.metrics.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
