"""FID and KID maths in float64, without ``scipy.linalg.sqrtm``; numpy, or torch on a device.

sqrtm's 2048 x 2048 Schur form took 20-45 s a set on 2 cores (and KID rebuilt three kernels per
subset). Tr sqrt(S1 S2) is the sum of sqrt of the eigenvalues of S1 S2, which shares its non-zero
eigenvalues with symmetric matrices, so two exact routes (``fid_route`` picks):

- ``nuclear-norm`` (both sets' features at hand, N1 N2 < D^2, i.e. N < D for equal sets): with
  centred features, Tr sqrt(S1 S2) = ||X1c X2c^T||_* / sqrt((N1-1)(N2-1)), an N1 x N2 SVD.
- ``eigen`` (otherwise): sum sqrt(eig(R^T S2 R)) for R R^T = S1 (sqrt(S1), from eigh of S1 with
  eigenvalues clamped at 0): one symmetric eigendecomposition a set once the reference's R is
  cached (``ReferenceStats.sigma_sqrt``).

pytorch-fid / clean-fid add ``eps * I`` (1e-6) to both covariances only when sqrtm fails. Neither
route needs it. Where it is applied, pytorch-fid's number is exactly FID(S1 + eps I, S2 + eps I)
- 2 D eps: a few times 2 D eps LOWER than the exact FID (0.014, 1e-4 relative, on synthetic
500 x 2048 Inception-like features; tests/test_fid.py). Where sqrtm succeeds on a rank-deficient
product (scipy 1.17 did on every case tried) it lands 4-9e-8 relative below the exact value.
"""
from __future__ import annotations

import logging
import warnings
from typing import Any, Literal

import numpy as np

from gatebench.errors import MetricError

_log = logging.getLogger(__name__)
FidRoute = Literal["nuclear-norm", "eigen"]
# Full KID kernels up to this many float64 entries (256 MiB); beyond, per-subset kernels as before.
KID_KERNEL_CAP = 1 << 25
_EPS64 = float(np.finfo(np.float64).eps)


def _on(array: Any, device: str | None) -> Any:
    """float64 numpy (``device`` None, the default) or a float64 torch tensor on ``device``."""
    if device is None:
        return np.asarray(array, dtype=np.float64)
    import torch  # noqa: PLC0415

    if isinstance(array, torch.Tensor):
        return array.to(device=device, dtype=torch.float64)
    return torch.as_tensor(np.asarray(array, dtype=np.float64), device=device)


def _linalg(x: Any) -> Any:
    if isinstance(x, np.ndarray):
        return np.linalg
    import torch  # noqa: PLC0415

    return torch.linalg


def _sqrt_eigenvalues(w: Any) -> Any:
    """sqrt of a symmetric PSD matrix's computed eigenvalues: negatives and those below the
    eigensolver's rounding level (D * eps * largest) are zeros of the exact matrix, not data."""
    if w.shape[0] == 0:
        return w
    w = w.clip(min=0.0)
    return (w * (w > float(w.max()) * w.shape[0] * _EPS64)) ** 0.5


def sqrt_factor(sigma: Any, device: str | None = None) -> np.ndarray:
    """R = V_r sqrt(w_r) (D x rank) with R R^T = S, from eigh of S, eigenvalues clamped at 0.

    The symmetric sqrt(S) is R V_r^T; R^T S2 R has the same non-zero eigenvalues as
    sqrt(S) S2 sqrt(S), and is only rank x rank when S is rank deficient (N < D).
    """
    s = _on(sigma, device)
    w, v = _linalg(s).eigh((s + s.T) / 2)
    root = _sqrt_eigenvalues(w)
    keep = root > 0
    factor = v[:, keep] * root[keep]
    return factor if isinstance(factor, np.ndarray) else factor.cpu().numpy()


def _checked_stats(mu1: Any, sigma1: Any, mu2: Any, sigma2: Any,
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    mu1 = np.atleast_1d(np.asarray(mu1, np.float64))
    mu2 = np.atleast_1d(np.asarray(mu2, np.float64))
    s1 = np.atleast_2d(np.asarray(sigma1, np.float64))
    s2 = np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise MetricError(f"expected means (D,) and covariances (D, D) of one D, got {mu1.shape}, "
                          f"{s1.shape}, {mu2.shape}, {s2.shape}")
    for name, array in (("means", (mu1, mu2)), ("covariances", (s1, s2))):
        bad = sum(int((~np.isfinite(a)).sum()) for a in array)
        if bad:
            raise MetricError(f"expected finite {name} for FID, got {bad} non-finite values")
    return mu1, s1, mu2, s2


def frechet_distance(mu1: Any, sigma1: Any, mu2: Any, sigma2: Any, *,
                     sqrt_sigma1: np.ndarray | None = None, device: str | None = None) -> float:
    """||mu1-mu2||^2 + Tr(S1 + S2 - 2 sqrt(S1 S2)) in float64, by the ``eigen`` route.

    Tr sqrt(S1 S2) = sum sqrt(eig(R^T S2 R)) for any R with R R^T = S1: exact for PSD
    covariances of any rank, so no eps offset (module docstring). ``sqrt_sigma1`` is such an R
    (the symmetric sqrt(S1), or ``ReferenceStats.sigma_sqrt()``): it saves the first of the two
    eigendecompositions.
    """
    mu1, s1, mu2, s2 = _checked_stats(mu1, sigma1, mu2, sigma2)
    root = sqrt_factor(s1, device) if sqrt_sigma1 is None else np.asarray(sqrt_sigma1)
    if root.ndim != 2 or root.shape[0] != s1.shape[0]:
        raise MetricError(f"expected sqrt_sigma1 of shape ({s1.shape[0]}, r), got {root.shape}")
    r = _on(root, device)
    m = r.T @ _on(s2, device) @ r
    trace_sqrt = float(_sqrt_eigenvalues(_linalg(m).eigvalsh((m + m.T) / 2)).sum())
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * trace_sqrt)


def _features(features: Any, what: str) -> np.ndarray:
    """float64 N x D features, N >= 2 and finite; warns when N < D (why: FID's bias)."""
    feats = np.asarray(features, dtype=np.float64)
    if feats.ndim != 2 or feats.shape[0] < 2:
        raise MetricError(f"expected at least 2 images' features for {what}, got shape "
                          f"{feats.shape}")
    bad = int((~np.isfinite(feats)).sum())
    if bad:
        raise MetricError(f"expected finite features for {what}, got {bad} non-finite values")
    n, d = feats.shape
    if n < d and what == "FID":
        message = (f"FID from N={n} images with feature dimension {d}: the covariance is rank "
                   f"deficient and FID is strongly biased upwards; compare only at equal N")
        warnings.warn(message, stacklevel=3)
    return feats


def feature_stats(features: Any) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance (float64); needs >= 2 rows; warns when N < D."""
    feats = _features(features, "FID")
    return feats.mean(axis=0), np.cov(feats, rowvar=False)


def fid_route(n1: int, n2: int, d: int) -> FidRoute:
    """Which route FID takes when both sets' features are at hand: ``nuclear-norm`` while the
    N1 x N2 cross-Gram is smaller than a D x D covariance (cheaper and, at rank deficiency, free
    of sqrt-of-rounding-noise terms), ``eigen`` otherwise."""
    return "nuclear-norm" if n1 * n2 < d * d else "eigen"


def _nuclear_trace_sqrt(x1: np.ndarray, x2: np.ndarray,
                        device: str | None) -> tuple[float, float, float]:
    """(Tr S1, Tr S2, Tr sqrt(S1 S2)) from features: with A = X1c / sqrt(N1-1), B likewise,
    S1 S2 = A^T A B^T B shares its non-zero eigenvalues with (A B^T)(A B^T)^T, whose are the
    squared singular values of the N1 x N2 matrix A B^T; so Tr sqrt(S1 S2) = ||A B^T||_*."""
    a, b = _on(x1, device), _on(x2, device)
    a = (a - a.mean(0)) / float(np.sqrt(x1.shape[0] - 1))
    b = (b - b.mean(0)) / float(np.sqrt(x2.shape[0] - 1))
    gram = a @ b.T
    sv = np.linalg.svd(gram, compute_uv=False) if isinstance(gram, np.ndarray) \
        else _linalg(gram).svdvals(gram)
    return float((a * a).sum()), float((b * b).sum()), float(sv.sum())


def fid_from_features(real: Any, fake: Any, *, device: str | None = None,
                      route: FidRoute | None = None) -> float:
    """FID of two feature sets (float64), by ``route`` (default: ``fid_route``'s choice)."""
    x1, x2 = _features(real, "FID"), _features(fake, "FID")
    if x1.shape[1] != x2.shape[1]:
        raise MetricError(f"expected real and generated features of one dimension, got "
                          f"{x1.shape[1]} and {x2.shape[1]}")
    route = route or fid_route(x1.shape[0], x2.shape[0], x1.shape[1])
    if route == "eigen":
        return frechet_distance(x1.mean(axis=0), np.cov(x1, rowvar=False), x2.mean(axis=0),
                                np.cov(x2, rowvar=False), device=device)
    if route != "nuclear-norm":
        raise MetricError(f"expected an FID route 'nuclear-norm' or 'eigen', got {route!r}")
    tr1, tr2, trace_sqrt = _nuclear_trace_sqrt(x1, x2, device)
    diff = x1.mean(axis=0) - x2.mean(axis=0)
    return float(diff @ diff + tr1 + tr2 - 2.0 * trace_sqrt)


def _poly_kernel(x: Any, y: Any, degree: int, gamma: float | None, coef: float) -> Any:
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


def kid_route(n_real: int, n_fake: int, subset_size: int = 1000) -> str:
    """How ``kid`` computes: ``whole-set`` (every subset is the whole set: one MMD^2, std 0),
    ``kernels-once`` (three kernel matrices, subsets by indexing) or ``per-subset`` (the full
    kernels would exceed ``KID_KERNEL_CAP`` entries)."""
    size = min(subset_size, n_real, n_fake)
    if size == n_real == n_fake:
        return "whole-set"
    return "kernels-once" if n_real * (n_real + n_fake) + n_fake * n_fake <= KID_KERNEL_CAP \
        else "per-subset"


def kid(real: Any, fake: Any, subsets: int = 100, subset_size: int = 1000, degree: int = 3,
        gamma: float | None = None, coef: float = 1.0, seed: int = 0, *,
        device: str | None = None) -> tuple[float, float]:
    """KID mean and std over random subsets (as torchmetrics), float64, seeded.

    Subsets are drawn as always (real then fake ``rng.choice`` per subset), but their kernel sums
    come from the full kernels by 0/1 indicator products (``kid_route``), so the numbers equal
    the per-subset computation up to rounding at a fraction of its cost.
    """
    x, y = _features(real, "KID"), _features(fake, "KID")
    if x.shape[1] != y.shape[1] or subsets < 1 or subset_size < 2:
        raise MetricError(f"expected features of one dimension, subsets >= 1 and subset_size "
                          f">= 2, got dimensions {x.shape[1]}/{y.shape[1]}, subsets {subsets}, "
                          f"subset_size {subset_size}")
    nr, nf = x.shape[0], y.shape[0]
    size = min(subset_size, nr, nf)
    if size < subset_size:
        _log.info("KID: subset_size %d reduced to %d (fewest images in a set)", subset_size, size)
    route = kid_route(nr, nf, subset_size)
    rng = np.random.default_rng(seed)
    if route == "per-subset":
        values = np.array([mmd2_unbiased(x[rng.choice(nr, size, replace=False)],
                                         y[rng.choice(nf, size, replace=False)],
                                         degree, gamma, coef) for _ in range(subsets)])
        return float(np.mean(values)), float(np.std(values))
    xd, yd = _on(x, device), _on(y, device)
    kxx, kyy = _poly_kernel(xd, xd, degree, gamma, coef), _poly_kernel(yd, yd, degree, gamma, coef)
    kxy = _poly_kernel(xd, yd, degree, gamma, coef)
    if route == "whole-set":
        value = ((kxx.sum() - kxx.diagonal().sum()) / (nr * (nr - 1))
                 + (kyy.sum() - kyy.diagonal().sum()) / (nf * (nf - 1)) - 2.0 * kxy.mean())
        return float(value), 0.0
    wx, wy = np.zeros((subsets, nr)), np.zeros((subsets, nf))
    for i in range(subsets):                        # the draw order of the per-subset loop
        wx[i, rng.choice(nr, size, replace=False)] = 1.0
        wy[i, rng.choice(nf, size, replace=False)] = 1.0
    wx, wy = _on(wx, device), _on(wy, device)
    sxx = ((wx @ kxx) * wx).sum(1) - wx @ kxx.diagonal()
    syy = ((wy @ kyy) * wy).sum(1) - wy @ kyy.diagonal()
    sxy = ((wx @ kxy) * wy).sum(1)
    values = (sxx + syy) / (size * (size - 1)) - 2.0 * sxy / (size * size)
    values = values if isinstance(values, np.ndarray) else values.cpu().numpy()
    return float(np.mean(values)), float(np.std(values))
