"""FID and KID from image features, with recipe-named cached reference statistics.

FID is only comparable when everything behind it is: the reference images, their count N, the
resize and the feature extractor. So reference statistics are cached under a name that encodes all
four, and the report states them. The maths (exact, no sqrtm, which route a number takes) is in
``fid_maths``.
"""
from __future__ import annotations

import hashlib
import io
import logging
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Literal, Protocol, Sequence

import numpy as np

from gatebench.errors import MetricError, ModelFileError
from gatebench.metrics.fid_maths import feature_stats, sqrt_factor
from gatebench.metrics.images import ImageLike, to_pil_rgb

if TYPE_CHECKING:     # torch loads with an extractor, not with this module
    import torch

_log = logging.getLogger(__name__)
ResizeMode = Literal["bilinear", "bicubic", "clean"]


class FeatureExtractor(Protocol):
    """uint8 images (B x 3 x H x W) -> features (B x D); ``name``/``digest`` feed the cache."""

    name: str
    input_size: int | None

    def __call__(self, images: torch.Tensor) -> torch.Tensor: ...

    def digest(self) -> str: ...


def _module_digest(module: Any) -> str:
    digest = hashlib.sha256(type(module).__qualname__.encode())
    for key, tensor in sorted(module.state_dict().items()):
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


@dataclass
class ModuleExtractor:
    """Any ``torch.nn.Module``: float images in [0, 1] (or uint8 if ``uint8_input``) -> features."""

    module: Any
    name: str = "module"
    input_size: int | None = None
    uint8_input: bool = False
    device: str = "cpu"
    _digest: str | None = field(default=None, repr=False)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        import torch  # noqa: PLC0415

        x = images.to(self.device)
        if not self.uint8_input:
            x = x.float() / 255.0
        with torch.no_grad():
            out = self.module(x)
        return out.reshape(out.shape[0], -1)

    def digest(self) -> str:
        if self._digest is None:
            self._digest = _module_digest(self.module)
        return self._digest


def inception_extractor(weights_path: str | Path, device: str = "cpu") -> ModuleExtractor:
    """torchmetrics' InceptionV3 (torch-fidelity FID weights) from a LOCAL weights file."""
    path = Path(weights_path)
    if not path.is_file():
        raise ModelFileError(f"expected the Inception weights file, got a missing path '{path}'",
                             path=path, hint="put torch-fidelity's weights-inception-2015-12-05-"
                             "6726825d.pth there and set [models] inception_weights")
    from torchmetrics.image.fid import NoTrainInceptionV3  # noqa: PLC0415

    from gatebench.files import file_sha256  # noqa: PLC0415

    net = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"],
                             feature_extractor_weights_path=str(path)).to(device)
    return ModuleExtractor(net, name="inception-v3-2048", input_size=299, uint8_input=True,
                           device=device, _digest=file_sha256(path))


def load_images_uint8(images: Sequence[ImageLike], size: int | None, resize: ResizeMode) -> Any:
    """Paths / PIL images / HWC uint8 arrays -> uint8 tensor B x 3 x size x size.

    ``clean`` = PIL bicubic with antialiasing (clean-fid's point); ``bilinear``/``bicubic`` =
    torch interpolation with antialiasing on the uint8 grid.
    """
    import torch  # noqa: PLC0415
    from PIL import Image  # noqa: PLC0415

    tensors = []
    for item in images:
        pil = to_pil_rgb(item)
        if size is not None and resize == "clean" and pil.size != (size, size):
            pil = pil.resize((size, size), Image.Resampling.BICUBIC)
        t = torch.from_numpy(np.asarray(pil, dtype=np.uint8).copy()).permute(2, 0, 1)
        if size is not None and t.shape[1:] != (size, size):
            t = torch.nn.functional.interpolate(t[None].float(), size=(size, size), mode=resize,
                                                antialias=True, align_corners=False)[0]
            t = t.round().clamp(0, 255).to(torch.uint8)
        tensors.append(t)
    return torch.stack(tensors)


def extract_features(images: Sequence[ImageLike], extractor: Callable[[Any], Any], *,
                     input_size: int | None = None, resize: ResizeMode = "bilinear",
                     batch_size: int = 32) -> np.ndarray:
    """Features (N x D, float64) of images through ``extractor``, in batches."""
    size = input_size if input_size is not None else getattr(extractor, "input_size", None)
    chunks = []
    for start in range(0, len(images), batch_size):
        batch = load_images_uint8(images[start:start + batch_size], size, resize)
        chunks.append(np.asarray(extractor(batch).detach().cpu().numpy(), dtype=np.float64))
    if not chunks:
        raise MetricError("expected images to extract features from, got none")
    return np.concatenate(chunks)


def data_hash(paths: Iterable[str | Path]) -> str:
    """Content hash of an image set: file names and bytes, order-independent."""
    digest = hashlib.sha256()
    for path in sorted(Path(p) for p in paths):
        digest.update(path.name.encode("utf-8"))
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


@dataclass
class ReferenceStats:
    """Real-image features for FID/KID plus the recipe that made them.

    ``sigma_sqrt()`` (sqrt of the covariance, for the ``eigen`` route) is computed once per
    object and saved with it when known; files saved without it still load.
    """

    mu: np.ndarray
    sigma: np.ndarray
    features: np.ndarray
    n: int
    recipe: dict[str, str]
    _sigma_sqrt: np.ndarray | None = field(default=None, repr=False, compare=False)

    def sigma_sqrt(self, device: str | None = None) -> np.ndarray:
        """R (D x rank) with R R^T = sigma: the ``eigen`` route's reference half, so a set then
        costs one symmetric eigendecomposition (``fid_maths.sqrt_factor``)."""
        if self._sigma_sqrt is None:
            self._sigma_sqrt = sqrt_factor(self.sigma, device)
        return self._sigma_sqrt

    @staticmethod
    def file_name(data_digest: str, n: int, resize: str, extractor_digest: str) -> str:
        return f"refstats_data-{data_digest[:12]}_n{n}_{resize}_feat-{extractor_digest[:12]}.npz"

    def save(self, path: str | Path) -> Path:
        """Atomically; features as float32 when that is lossless (Inception's own dtype), so a
        cached run scores exactly as the run that computed them."""
        from gatebench.files import atomic_write_bytes  # noqa: PLC0415

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        feats = np.asarray(self.features, np.float64)
        small = feats.astype(np.float32)
        arrays: dict[str, Any] = {
            "mu": self.mu, "sigma": self.sigma, "n": self.n,
            "features": small if np.array_equal(small, feats) else feats,
            "recipe": np.array([f"{k}={v}" for k, v in sorted(self.recipe.items())])}
        if self._sigma_sqrt is not None:
            arrays["sigma_sqrt"] = self._sigma_sqrt
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        return atomic_write_bytes(path, buffer.getvalue())

    @classmethod
    def load(cls, path: str | Path) -> "ReferenceStats":
        """Read a saved file; ValueError (or the reader's own error: OSError, EOFError, KeyError,
        zipfile.BadZipFile) when it is not a complete, consistent one."""
        with np.load(Path(path), allow_pickle=False) as data:
            recipe = dict(str(item).split("=", 1) for item in data["recipe"])
            root = data["sigma_sqrt"] if "sigma_sqrt" in data.files else None
            stats = cls(data["mu"], data["sigma"], data["features"].astype(np.float64),
                        int(data["n"]), recipe, root)
        stats._check_shapes()
        return stats

    def _check_shapes(self) -> None:
        """mu (D,), sigma (D, D), features (n, D), sigma_sqrt (D, r): else ValueError."""
        dim = self.mu.shape[0] if self.mu.ndim == 1 else -1
        shapes = [("mu", self.mu.shape, self.mu.ndim == 1),
                  ("sigma", self.sigma.shape, self.sigma.shape == (dim, dim)),
                  ("features", self.features.shape, self.features.shape == (self.n, dim))]
        if self._sigma_sqrt is not None:
            shapes.append(("sigma_sqrt", self._sigma_sqrt.shape,
                           self._sigma_sqrt.ndim == 2 and self._sigma_sqrt.shape[0] == dim))
        for name, shape, ok in shapes:
            if not ok:
                raise ValueError(f"{name} has shape {shape} (n={self.n}, D={dim})")


def _load_cached(path: Path) -> ReferenceStats | None:
    """The cached statistics at ``path``, or None when the file does not load (zero bytes, a
    truncated zip, missing arrays, wrong shapes): then it is deleted with a one-line warning and
    the caller recomputes it, so the cache never stays corrupt."""
    try:
        return ReferenceStats.load(path)
    except (OSError, EOFError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as exc:
        reason = str(exc).splitlines()[0][:120] if str(exc) else ""
        _log.warning("FID cache %s does not load (%s%s); deleted, recomputing", path,
                     type(exc).__name__, f": {reason}" if reason else "")
        path.unlink(missing_ok=True)
        return None


def reference_stats(paths: Sequence[str | Path], extractor: FeatureExtractor, *,
                    cache_dir: str | Path | None = None, resize: ResizeMode = "bilinear",
                    batch_size: int = 32) -> ReferenceStats:
    """Compute (or reuse from ``cache_dir``) reference statistics for ``paths``."""
    if len(paths) < 2:
        raise MetricError(f"expected at least 2 reference images for FID, got {len(paths)}")
    recipe = {"data_hash": data_hash(paths), "n": str(len(paths)), "resize": resize,
              "extractor": extractor.name, "extractor_hash": extractor.digest()}
    cache = None
    if cache_dir is not None:
        cache = Path(cache_dir) / ReferenceStats.file_name(
            recipe["data_hash"], len(paths), resize, recipe["extractor_hash"])
        if cache.is_file():
            stats = _load_cached(cache)
            if stats is not None and stats.recipe == recipe:
                _log.info("FID reference statistics reused from %s", cache)
                return stats
            if stats is not None:
                _log.warning("FID cache %s has another recipe; deleted, recomputing", cache)
                cache.unlink(missing_ok=True)
    feats = extract_features(paths, extractor, resize=resize, batch_size=batch_size)
    mu, sigma = feature_stats(feats)
    stats = ReferenceStats(mu, sigma, feats, len(paths), recipe)
    if cache is not None:
        stats.save(cache)
    return stats
