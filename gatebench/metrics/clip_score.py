"""CLIP score (global: image vs caption; regional: GT-box crop vs its phrase) from LOCAL models.

Scale: ``max(cos(image, text), 0)`` in [0, 1]. The user's "CLIP score > 0.25" target is on this
scale; torchmetrics' ``CLIPScore`` reports 100x the same cosine (and clamps the MEAN at 0, where we
clamp each sample), so 0.25 here is 25 there. Two backends: transformers (``CLIPModel``,
``ChineseCLIPModel`` for Chinese captions) and open_clip; both are loaded from local files only.
Texts longer than the model's context are truncated by the tokenizer (keeping the end token).
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, Sequence

import numpy as np

from gatebench.errors import MetricError, ModelFileError
from gatebench.metrics.images import ImageLike, to_pil_rgb

if TYPE_CHECKING:     # torch loads with a backend, not with this module
    import torch
    from PIL.Image import Image as PILImage


class ClipBackend(Protocol):
    """Encodes PIL images and texts to L2-normalised embeddings of one space."""

    name: str

    def encode_images(self, images: Sequence[PILImage]) -> torch.Tensor: ...

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor: ...


def _features(out: Any) -> Any:
    """transformers >= 5 returns a ModelOutput from get_*_features; older versions a tensor."""
    return out.pooler_output if hasattr(out, "pooler_output") else out


def _normalise(x: Any) -> Any:
    return x / x.norm(p=2, dim=-1, keepdim=True).clamp_min(1e-12)


class TransformersClip:
    """``CLIPModel``/``ChineseCLIPModel`` + processor (tokenizer and image processor)."""

    def __init__(self, model: Any, processor: Any, device: str = "cpu", batch_size: int = 32,
                 name: str = "transformers") -> None:
        self.model = model.to(device).eval()
        self.processor = processor
        self.device = device
        self.batch_size = batch_size
        self.name = name

    @classmethod
    def from_folder(cls, path: str | Path, device: str = "cpu",
                    batch_size: int = 32) -> "TransformersClip":
        """A local ``save_pretrained`` folder; ``model_type`` picks CLIP or ChineseCLIP."""
        path = Path(path)
        if not (path / "config.json").is_file():
            raise ModelFileError(f"expected a CLIP model folder with config.json, got '{path}'",
                                 path=path, hint="save the model and processor there with "
                                 "save_pretrained and set [models] clip_model to the folder")
        import transformers  # noqa: PLC0415

        config = transformers.AutoConfig.from_pretrained(path, local_files_only=True)
        model_cls: type[transformers.PreTrainedModel]
        proc_cls: type[transformers.ProcessorMixin]
        if config.model_type == "chinese_clip":
            model_cls, proc_cls = transformers.ChineseCLIPModel, transformers.ChineseCLIPProcessor
        elif config.model_type == "clip":
            model_cls, proc_cls = transformers.CLIPModel, transformers.CLIPProcessor
        else:
            raise ModelFileError(f"expected model_type clip or chinese_clip, got "
                                 f"'{config.model_type}'", path=path / "config.json")
        try:
            model = model_cls.from_pretrained(path, local_files_only=True)
            processor = proc_cls.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise ModelFileError(f"expected loadable CLIP weights and processor files, got {exc}",
                                 path=path) from None
        return cls(model, processor, device, batch_size, name=f"transformers:{path.name}")

    def encode_images(self, images: Sequence[PILImage]) -> torch.Tensor:
        import torch  # noqa: PLC0415

        inputs = self.processor(images=list(images), return_tensors="pt")
        with torch.no_grad():
            out = self.model.get_image_features(pixel_values=inputs["pixel_values"].to(self.device))
        return _normalise(_features(out).float())

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        import torch  # noqa: PLC0415

        max_len = getattr(getattr(self.model.config, "text_config", None),
                          "max_position_embeddings", 77)
        inputs = self.processor(text=list(texts), return_tensors="pt", padding=True,
                                truncation=True, max_length=max_len)
        inputs = {k: v.to(self.device) for k, v in inputs.items() if k != "pixel_values"}
        with torch.no_grad():
            out = self.model.get_text_features(**inputs)
        return _normalise(_features(out).float())


class OpenClip:
    """An open_clip model + its eval preprocess + tokenizer."""

    def __init__(self, model: Any, preprocess: Any, tokenizer: Any, device: str = "cpu",
                 name: str = "open_clip") -> None:
        self.model = model.to(device).eval()
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.device = device
        self.name = name

    @classmethod
    def from_file(cls, arch: str, weights: str | Path, device: str = "cpu",
                  tokenizer: Any = None) -> "OpenClip":
        """``open_clip.create_model_and_transforms(arch, pretrained=<local file>)``."""
        path = Path(weights)
        if not path.is_file():
            raise ModelFileError(f"expected a local open_clip weights file, got a missing path "
                                 f"'{path}'", path=path, hint="set [models] clip_model to the "
                                 "file and clip_arch to its architecture")
        import open_clip  # noqa: PLC0415

        try:
            model, _, preprocess = open_clip.create_model_and_transforms(
                arch, pretrained=str(path), require_pretrained=True)
        except (RuntimeError, KeyError, ValueError) as exc:
            raise ModelFileError(f"expected open_clip weights for '{arch}', got {exc}",
                                 path=path) from None
        tok = tokenizer if tokenizer is not None else open_clip.get_tokenizer(arch)
        return cls(model, preprocess, tok, device, name=f"open_clip:{arch}:{path.name}")

    def encode_images(self, images: Sequence[PILImage]) -> torch.Tensor:
        import torch  # noqa: PLC0415

        batch = torch.stack([self.preprocess(im) for im in images]).to(self.device)
        with torch.no_grad():
            return _normalise(self.model.encode_image(batch).float())

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        import torch  # noqa: PLC0415

        with torch.no_grad():
            return _normalise(self.model.encode_text(self.tokenizer(list(texts)).to(self.device))
                              .float())


def clip_scores(backend: ClipBackend, images: Sequence[ImageLike], texts: Sequence[str],
                batch_size: int = 32) -> np.ndarray:
    """Per-pair ``max(cos, 0)`` of image i and text i (paths, PIL images or HWC uint8 arrays)."""
    if len(images) != len(texts):
        raise MetricError(f"expected one text per image, got {len(texts)} texts for "
                          f"{len(images)} images")
    out = []
    for start in range(0, len(images), batch_size):
        ims = [to_pil_rgb(im) for im in images[start:start + batch_size]]
        img = backend.encode_images(ims)
        txt = backend.encode_texts(list(texts[start:start + batch_size]))
        out.append((img * txt).sum(-1).clamp_min(0.0).cpu().numpy().astype(np.float64))
    return np.concatenate(out) if out else np.zeros(0)


def crop_box(image: PILImage, box: Sequence[float]) -> PILImage:
    """Crop a normalised xyxy box (at least 1 pixel each side) from a PIL image."""
    w, h = image.size
    x1, y1 = int(np.floor(box[0] * w)), int(np.floor(box[1] * h))
    x2, y2 = max(int(np.ceil(box[2] * w)), x1 + 1), max(int(np.ceil(box[3] * h)), y1 + 1)
    return image.crop((x1, y1, min(x2, w), min(y2, h)))


def region_clip_scores(backend: ClipBackend, images: Sequence[ImageLike],
                       boxes: Sequence[Sequence[Sequence[float]]],
                       phrases: Sequence[Sequence[str]], batch_size: int = 32) -> list[np.ndarray]:
    """Per image, per box: ``max(cos(crop, phrase), 0)``; batched across images."""
    crops: list[PILImage] = []
    texts: list[str] = []
    counts = []
    for image, bxs, phs in zip(images, boxes, phrases, strict=True):
        if len(bxs) != len(phs):
            raise MetricError(f"expected one phrase per box, got {len(phs)} for {len(bxs)}")
        if bxs:
            pil = to_pil_rgb(image)
            crops.extend(crop_box(pil, b) for b in bxs)
        texts.extend(phs)
        counts.append(len(bxs))
    flat = clip_scores(backend, crops, texts, batch_size) if crops else np.zeros(0)
    return list(np.split(flat, np.cumsum(counts)[:-1])) if counts else []
