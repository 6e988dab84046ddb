"""The evaluation models of a protocol (detector, CLIP, FID features, real-image reference),
loaded ONCE per run and shared by every checkpoint and gate scale.

A model the protocol does not configure stays ``None``: its metrics are reported as not computed.
A model the protocol names but that is missing on disk is an exit-2 error naming the file.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from gatebench.errors import ModelFileError
from gatebench.files import cache_dir, file_sha256

if TYPE_CHECKING:   # metrics sit below the protocol and the layouts: annotations only
    from gatebench.layouts import Layout
    from gatebench.metrics.clip_score import ClipBackend, OpenClip, TransformersClip
    from gatebench.metrics.detect import Detector, PhraseDetector, YoloDetector
    from gatebench.metrics.fid import FeatureExtractor, ModuleExtractor, ReferenceStats
    from gatebench.metrics.zeroshot import ZeroShotDetector
    from gatebench.protocol import Protocol


@dataclass
class EvalModels:
    detector: Detector | PhraseDetector | None = None
    clip: ClipBackend | None = None
    fid_extractor: FeatureExtractor | None = None
    reference: ReferenceStats | None = None     # of the real images
    real_images: list[tuple[Layout, Path]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    def score_kwargs(self) -> dict[str, Any]:
        return {"detector": self.detector, "clip": self.clip, "fid_extractor": self.fid_extractor,
                "real_images": self.reference}

    def identity(self) -> dict[str, Any]:
        return dict(self.info)


def _file_identity(path: Path, **extra: Any) -> dict[str, Any]:
    return {"path": str(path), "sha256": file_sha256(path) if path.is_file() else None, **extra}


def load_clip(protocol: Protocol, device: str
              ) -> tuple[TransformersClip | OpenClip, dict[str, Any]] | tuple[None, None]:
    m = protocol.models
    if not m.clip_model:
        return None, None
    path = Path(m.clip_model)
    if m.clip_backend == "transformers":
        from gatebench.metrics.clip_score import TransformersClip
        clip = TransformersClip.from_folder(path, device=device)
        weights = next((p for p in sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin"))), None)
        return clip, _file_identity(weights or path, backend="transformers", folder=str(path))
    if m.clip_backend == "gatebench-world":
        return load_world_clip_backend(path, device)
    if not m.clip_arch:
        raise ModelFileError("expected [models] clip_arch (an open_clip architecture name) for "
                             "the open_clip backend, got none", path=protocol.source)
    from gatebench.metrics.clip_score import OpenClip
    return OpenClip.from_file(m.clip_arch, path, device=device), _file_identity(
        path, backend="open_clip", arch=m.clip_arch)


def load_world_clip_backend(path: Path, device: str) -> tuple[OpenClip, dict[str, Any]]:
    """The shapes world's own CLIP (weights .safetensors + config .json beside it)."""
    from gatebench.metrics.clip_score import OpenClip
    from gatebench.world.clip_model import load_world_clip

    config = path.with_suffix(".json")
    for needed in (path, config):
        if not needed.is_file():
            raise ModelFileError("expected the shapes world's CLIP file, got a missing path",
                                 path=needed, hint="rebuild the world assets (train/world/README.md)")
    model, tokenizer, preprocess = load_world_clip(path, config, device=device)
    backend = OpenClip(model, preprocess, tokenizer, device=device, name=f"world-clip:{path.name}")
    return backend, _file_identity(path, backend="gatebench-world")


def clip_image_extractor(clip: TransformersClip | OpenClip, info: dict[str, Any]
                         ) -> ModuleExtractor:
    """FID/KID features from a CLIP image tower (the shapes world has no Inception)."""
    from gatebench.metrics.fid import ModuleExtractor

    model = clip.model
    if not hasattr(model, "image_features"):
        raise ModelFileError(f"expected a CLIP model with an image tower usable for FID features, "
                             f"got {type(model).__name__}", hint="use fid_features = 'inception'")
    size = getattr(model, "image_size", None)
    return ModuleExtractor(model, name=f"clip-image:{info.get('sha256', '')[:12]}",
                           input_size=size, device=clip.device, _digest=info.get("sha256"))


def real_image_paths(protocol: Protocol, layouts: Sequence[Layout]) -> list[tuple[Layout, Path]]:
    """Real images of the evaluated layouts (FID reference, detector ceiling); all must exist."""
    folder = protocol.data.image_dir
    if not folder:
        return []
    root = Path(folder)
    if not root.is_dir():
        raise ModelFileError("expected the real-image folder of [data] image_dir, got a missing "
                             "path", path=root, hint="set image_dir or remove it to skip FID")
    paths = []
    for layout in layouts:
        if not layout.image_path:
            continue
        path = Path(layout.image_path)
        path = path if path.is_absolute() else root / path
        if not path.is_file():
            raise ModelFileError(f"expected the real image of layout {layout.layout_id}, got a "
                                 f"missing file", path=path)
        paths.append((layout, path))
    return paths


def load_detector(protocol: Protocol, device: str
                  ) -> tuple[ZeroShotDetector | YoloDetector, dict[str, Any]]:
    """[models] detector: a transformers folder of a zero-shot detector (queried with each
    image's phrases), else an ultralytics YOLO weights file; and its results.json identity."""
    path = Path(protocol.models.detector or "")
    from gatebench.metrics.zeroshot import ZeroShotDetector, is_zero_shot_folder

    if path.is_dir():
        if not is_zero_shot_folder(path):
            raise ModelFileError("expected a zero-shot detection model folder (config.json "
                                 "model_type grounding-dino, mm-grounding-dino, owlv2 or "
                                 "owlvit) or a YOLO .pt file, got another folder", path=path)
        zero_shot = ZeroShotDetector.from_folder(path, protocol.detection, device=device)
        return zero_shot, zero_shot.identity()
    from gatebench.metrics.detect import YoloDetector
    yolo = YoloDetector.from_file(path, protocol.detection, device=device)
    return yolo, _file_identity(path, backend="ultralytics", kind="yolo")


def load_eval_models(protocol: Protocol, *, device: str, layouts: Sequence[Layout] = ()) -> EvalModels:
    m = protocol.models
    models = EvalModels()
    if m.detector:
        models.detector, models.info["detector"] = load_detector(protocol, device)
    clip, clip_info = load_clip(protocol, device)
    models.clip = clip
    if clip_info:
        models.info["clip"] = {**clip_info, "caption_language": protocol.data.caption_language}
    if m.fid_features == "inception" and m.inception_weights:
        from gatebench.metrics.fid import inception_extractor
        models.fid_extractor = inception_extractor(m.inception_weights, device=device)
        models.info["fid_features"] = _file_identity(Path(m.inception_weights), name="inception-v3-2048")
    elif m.fid_features == "clip-image" and clip is not None:
        clip_features = clip_image_extractor(clip, models.info["clip"])
        models.fid_extractor = clip_features
        models.info["fid_features"] = {"name": clip_features.name,
                                       "sha256": models.info["clip"]["sha256"]}
    models.real_images = real_image_paths(protocol, layouts)
    if models.fid_extractor is not None and len(models.real_images) >= 2:
        from gatebench.metrics.fid import reference_stats
        reference = reference_stats([p for _, p in models.real_images], models.fid_extractor,
                                    cache_dir=cache_dir() / "refstats",
                                    resize=protocol.scoring.fid_resize)
        models.reference = reference
        models.info["fid_reference"] = (f"{reference.n} real images from "
                                        f"{protocol.data.image_dir} (data hash "
                                        f"{reference.recipe['data_hash'][:12]}, resize "
                                        f"{reference.recipe['resize']})")
    return models
