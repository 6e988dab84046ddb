"""FID and KID from image features, with recipe-named cached reference statistics.

FID is only comparable when everything behind it is: the reference images, their count N, the
resize and the feature extractor. So reference statistics are cached under a name that encodes all
four, and the report states them. The Fréchet distance itself follows the float64
``scipy.linalg.sqrtm`` reference (pytorch-fid / clean-fid), including their eps fix-up for
near-singular products.
"""
from __future__ import annotations

import hashlib
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Protocol, Sequence

import numpy as np
import scipy.linalg

from gatebench.errors import MetricError, ModelFileError
from gatebench.metrics.images import to_pil_rgb

_log = logging.getLogger(__name__)
ResizeMode = Literal["bilinear", "bicubic", "clean"]


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6) -> float:
    """||mu1-mu2||^2 + Tr(S1 + S2 - 2 sqrt(S1 S2)) in float64.

    As pytorch-fid/clean-fid: if sqrtm of the product is singular or not finite, retry with
    ``eps * I`` added to both covariances; a significant imaginary part (numerical error beyond
    1e-3) is an error rather than a silently wrong number.
    """
    mu1 = np.atleast_1d(np.asarray(mu1, np.float64))
    mu2 = np.atleast_1d(np.asarray(mu2, np.float64))
    s1 = np.atleast_2d(np.asarray(sigma1, np.float64))
    s2 = np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise MetricError(f"expected means (D,) and covariances (D, D) of one D, got {mu1.shape}, "
                          f"{s1.shape}, {mu2.shape}, {s2.shape}")
    diff = mu1 - mu2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")      # scipy's LinAlgWarning: we check the result instead
        covmean = scipy.linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():
        _log.warning("FID: sqrtm of the covariance product is singular; adding %g to the "
                     "diagonals", eps)
        offset = np.eye(s1.shape[0]) * eps
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            covmean = scipy.linalg.sqrtm((s1 + offset) @ (s2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise MetricError(f"expected a real matrix square root, got an imaginary component "
                              f"{np.max(np.abs(covmean.imag)):.3g} (too few images for the "
                              f"feature dimension?)")
        covmean = covmean.real
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean))


def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance (float64); needs >= 2 rows; warns when N < D."""
    feats = np.asarray(features, dtype=np.float64)
    if feats.ndim != 2 or feats.shape[0] < 2:
        raise MetricError(f"expected at least 2 images' features for FID, got shape "
                          f"{feats.shape}")
    n, d = feats.shape
    if n < d:
        message = (f"FID from N={n} images with feature dimension {d}: the covariance is rank "
                   f"deficient and FID is strongly biased upwards; compare only at equal N")
        warnings.warn(message, stacklevel=2)
    return feats.mean(axis=0), np.cov(feats, rowvar=False)


def fid_from_features(real: np.ndarray, fake: np.ndarray) -> float:
    return frechet_distance(*feature_stats(real), *feature_stats(fake))


def _poly_kernel(x: np.ndarray, y: np.ndarray, degree: int, gamma: float | None,
                 coef: float) -> np.ndarray:
    gamma = 1.0 / x.shape[1] if gamma is None else gamma
    return (x @ y.T * gamma + coef) ** degree


def mmd2_unbiased(x: np.ndarray, y: np.ndarray, degree: int = 3, gamma: float | None = None,
                  coef: float = 1.0) -> float:
    """Unbiased squared MMD with the polynomial kernel (KID's estimator; sizes may differ)."""
    m, n = x.shape[0], y.shape[0]
    kxx = _poly_kernel(x, x, degree, gamma, coef)
    kyy = _poly_kernel(y, y, degree, gamma, coef)
    kxy = _poly_kernel(x, y, degree, gamma, coef)
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1))
                 + (kyy.sum() - np.trace(kyy)) / (n * (n - 1)) - 2.0 * kxy.mean())


def kid(real: np.ndarray, fake: np.ndarray, subsets: int = 100, subset_size: int = 1000,
        degree: int = 3, gamma: float | None = None, coef: float = 1.0,
        seed: int = 0) -> tuple[float, float]:
    """KID mean and std over random subsets (as torchmetrics), float64, seeded."""
    real = np.asarray(real, dtype=np.float64)
    fake = np.asarray(fake, dtype=np.float64)
    if min(real.shape[0], fake.shape[0]) < 2:
        raise MetricError(f"expected at least 2 real and 2 generated images for KID, got "
                          f"{real.shape[0]} and {fake.shape[0]}")
    size = min(subset_size, real.shape[0], fake.shape[0])
    if size < subset_size:
        _log.info("KID: subset_size %d reduced to %d (fewest images in a set)", subset_size,
                     size)
    rng = np.random.default_rng(seed)
    values = [mmd2_unbiased(real[rng.choice(real.shape[0], size, replace=False)],
                            fake[rng.choice(fake.shape[0], size, replace=False)],
                            degree, gamma, coef) for _ in range(subsets)]
    return float(np.mean(values)), float(np.std(values))


class FeatureExtractor(Protocol):
    """uint8 images (B x 3 x H x W) -> features (B x D); ``name``/``digest`` feed the cache."""

    name: str
    input_size: int | None

    def __call__(self, images: Any) -> Any: ...

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

    def __call__(self, images: Any) -> Any:
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


def load_images_uint8(images: Sequence[Any], size: int | None, resize: ResizeMode) -> Any:
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
            pil = pil.resize((size, size), Image.BICUBIC)
        t = torch.from_numpy(np.asarray(pil, dtype=np.uint8).copy()).permute(2, 0, 1)
        if size is not None and t.shape[1:] != (size, size):
            t = torch.nn.functional.interpolate(t[None].float(), size=(size, size), mode=resize,
                                                antialias=True, align_corners=False)[0]
            t = t.round().clamp(0, 255).to(torch.uint8)
        tensors.append(t)
    return torch.stack(tensors)


def extract_features(images: Sequence[Any], extractor: Callable[[Any], Any], *,
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
    """Real-image features for FID/KID plus the recipe that made them."""

    mu: np.ndarray
    sigma: np.ndarray
    features: np.ndarray
    n: int
    recipe: dict[str, str]

    @staticmethod
    def file_name(data_digest: str, n: int, resize: str, extractor_digest: str) -> str:
        return f"refstats_data-{data_digest[:12]}_n{n}_{resize}_feat-{extractor_digest[:12]}.npz"

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, mu=self.mu, sigma=self.sigma, features=self.features.astype(np.float32),
                 n=self.n, recipe=np.array([f"{k}={v}" for k, v in sorted(self.recipe.items())]))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "ReferenceStats":
        with np.load(Path(path), allow_pickle=False) as data:
            recipe = dict(str(item).split("=", 1) for item in data["recipe"])
            return cls(data["mu"], data["sigma"], data["features"].astype(np.float64),
                       int(data["n"]), recipe)


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
            stats = ReferenceStats.load(cache)
            if stats.recipe == recipe:
                _log.info("FID reference statistics reused from %s", cache)
                return stats
            _log.warning("FID cache %s has another recipe; recomputing", cache)
    feats = extract_features(paths, extractor, resize=resize, batch_size=batch_size)
    mu, sigma = feature_stats(feats)
    stats = ReferenceStats(mu, sigma, feats, len(paths), recipe)
    if cache is not None:
        stats.save(cache)
    return stats
