"""Metric building blocks: matching, COCO AP, FID/KID, CLIP score, image health, bootstrap.

Each is a plain function over arrays/images; ``gatebench.score`` composes them into the stage.
Heavy dependencies (torch, transformers, open_clip, faster-coco-eval) are imported lazily.
"""
from gatebench.metrics.clip_score import (ClipBackend, OpenClip, TransformersClip, clip_scores,
                                          crop_box, region_clip_scores)
from gatebench.metrics.coco_ap import APImage, coco_ap
from gatebench.metrics.fid import (FeatureExtractor, ModuleExtractor, ReferenceStats,
                                   extract_features, feature_stats, fid_from_features,
                                   frechet_distance, inception_extractor, kid, mmd2_unbiased,
                                   reference_stats)
from gatebench.metrics.health import (ImageHealth, assess, blank_components, blank_score,
                                      garbled_components, garbled_score, health_stats,
                                      is_garbled, structure_similarity)
from gatebench.metrics.matching import BoxMatch, box_iou, match_boxes, summarize_matches
from gatebench.metrics.stats import (MetricValue, PairedDiff, bootstrap_ci, mean_ci,
                                     paired_bootstrap_diff)

__all__ = [
    "APImage", "BoxMatch", "ImageHealth", "assess", "blank_components", "blank_score",
    "structure_similarity", "ClipBackend", "FeatureExtractor", "MetricValue", "ModuleExtractor",
    "OpenClip", "PairedDiff", "ReferenceStats", "TransformersClip", "bootstrap_ci", "box_iou",
    "clip_scores", "coco_ap", "crop_box", "extract_features", "feature_stats",
    "fid_from_features", "frechet_distance", "garbled_components", "garbled_score",
    "health_stats", "inception_extractor", "is_garbled", "kid", "match_boxes", "mean_ci",
    "mmd2_unbiased", "paired_bootstrap_diff", "reference_stats", "region_clip_scores",
    "summarize_matches",
]
