"""FID and KID without sqrtm: gatebench's exact routes against references written here.

References (independent of gatebench.metrics.fid): pytorch-fid's ``calculate_frechet_distance``
(scipy ``sqrtm``, ``eps * I`` only when sqrtm fails), the non-symmetric eigenvalues of S1 S2, and
a copy of the per-subset KID gatebench used before kernels were built once.
"""
from __future__ import annotations

import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
from PIL import Image

from gatebench.errors import MetricError
from gatebench.layouts import Layout, LayoutObject
from gatebench.metrics import fid_maths
from gatebench.metrics.fid import ModuleExtractor, ReferenceStats, extract_features, reference_stats
from gatebench.metrics.fid_maths import (
    feature_stats,
    fid_from_features,
    fid_route,
    frechet_distance,
    kid,
    kid_route,
    mmd2_unbiased,
    sqrt_factor,
)
from gatebench.protocol import DataSpec, Protocol, ScoringSpec
from gatebench.score import score_images
from tests.builders import TinyFeatures

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
pytestmark = pytest.mark.filterwarnings("ignore:FID from N=")   # N < D on purpose


def _sets(seed: int, n1: int, n2: int, d: int, shift: float = 0.1) -> tuple[np.ndarray, ...]:
    """Two Inception-like sets: non-negative, a decaying spectrum, one random basis."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.normal(size=(d, d)))[0]
    scale = 1.0 / np.sqrt(1.0 + np.arange(d) / 8.0)
    one = np.maximum(rng.normal(size=(n1, d)) * scale @ basis + 0.3, 0.0)
    two = np.maximum(rng.normal(size=(n2, d)) * scale @ basis + 0.3 + shift, 0.0)
    return one, two


def _pytorch_fid(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray,
                 eps: float = 1e-6, force_offset: bool = False) -> tuple[float, bool]:
    """pytorch-fid's calculate_frechet_distance; (value, whether the eps offset was used)."""
    diff = mu1 - mu2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        covmean = scipy.linalg.sqrtm(s1.dot(s2))
        offset_used = force_offset or not np.isfinite(covmean).all()
        if offset_used:
            offset = np.eye(s1.shape[0]) * eps
            covmean = scipy.linalg.sqrtm((s1 + offset).dot(s2 + offset))
    if np.iscomplexobj(covmean):
        covmean = covmean.real
    value = diff.dot(diff) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)
    return float(value), offset_used


def _eigvals_fid(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray) -> float:
    """Tr sqrt(S1 S2) from the non-symmetric eigenvalues of the product (real parts >= 0)."""
    eig = np.linalg.eigvals(s1 @ s2).real.clip(min=0)
    return float((mu1 - mu2) @ (mu1 - mu2) + np.trace(s1) + np.trace(s2)
                 - 2 * np.sqrt(eig).sum())


# --- FID ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_well_conditioned_matches_sqrtm_reference(seed: int) -> None:
    real, fake = _sets(seed, 400, 300, 48)                 # N > D: full-rank covariances
    (mu1, s1), (mu2, s2) = feature_stats(real), feature_stats(fake)
    reference, offset_used = _pytorch_fid(mu1, s1, mu2, s2)
    assert not offset_used
    values = {"eigen": frechet_distance(mu1, s1, mu2, s2),
              "eigen, symmetric sqrt given": frechet_distance(
                  mu1, s1, mu2, s2, sqrt_sigma1=np.real(scipy.linalg.sqrtm(s1))),
              "eigen, factor given": frechet_distance(mu1, s1, mu2, s2,
                                                      sqrt_sigma1=sqrt_factor(s1)),
              "fid_from_features": fid_from_features(real, fake),
              "nuclear-norm forced": fid_from_features(real, fake, route="nuclear-norm")}
    assert fid_route(400, 300, 48) == "eigen"
    for name, value in values.items():
        assert abs(value - reference) <= 1e-6 * reference, name
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-9)


def test_nuclear_norm_identity() -> None:
    """sigma_i(A B^T)^2 are the non-zero eigenvalues of S1 S2 (A, B the scaled centred
    features), so Tr sqrt(S1 S2) = ||A B^T||_*; checked eigenvalue by eigenvalue."""
    real, fake = _sets(3, 7, 9, 12)
    a = (real - real.mean(0)) / np.sqrt(6)
    b = (fake - fake.mean(0)) / np.sqrt(8)
    (_, s1), (_, s2) = feature_stats(real), feature_stats(fake)
    sv2 = np.sort(np.linalg.svd(a @ b.T, compute_uv=False) ** 2)[::-1]
    eig = np.sort(np.linalg.eigvals(s1 @ s2).real)[::-1]
    rank = 6                                                  # min(N1, N2) - 1 after centring
    np.testing.assert_allclose(eig[:rank], sv2[:rank], rtol=1e-9)
    assert np.abs(eig[rank:]).max() < 1e-12 * eig[0] and sv2[rank:].max() < 1e-12 * sv2[0]
    assert fid_route(7, 9, 12) == "nuclear-norm"


@pytest.mark.parametrize(("n", "dead"), [(30, 0), (100, 0), (30, 10)])
def test_rank_deficient_routes_and_the_eps_offset(n: int, dead: int) -> None:
    """N < D (and ``dead`` feature dimensions that are 0 in every image): both exact routes agree
    with each other and with the eigenvalues of S1 S2. pytorch-fid's sqrtm does not fail here
    (scipy 1.17) and lands 4-9e-8 relative below; its eps offset, where sqrtm fails and it is
    applied, is exactly FID(S1 + eps I, S2 + eps I) - 2 D eps: a few times 2 D eps lower."""
    d, eps = 160, 1e-6
    real, fake = _sets(4, n, n, d)
    real[:, :dead] = fake[:, :dead] = 0.0
    (mu1, s1), (mu2, s2) = feature_stats(real), feature_stats(fake)
    exact = fid_from_features(real, fake)                     # nuclear-norm (N^2 < D^2)
    assert fid_route(n, n, d) == "nuclear-norm"
    for other in (fid_from_features(real, fake, route="eigen"), _eigvals_fid(mu1, s1, mu2, s2)):
        assert abs(other - exact) <= 1e-6 * exact
    sqrtm_plain, offset_used = _pytorch_fid(mu1, s1, mu2, s2)
    assert not offset_used and abs(sqrtm_plain - exact) <= 1e-6 * exact
    with_offset, _ = _pytorch_fid(mu1, s1, mu2, s2, eps, force_offset=True)
    offset_exact = frechet_distance(mu1, s1 + eps * np.eye(d), mu2, s2 + eps * np.eye(d))
    assert with_offset == pytest.approx(offset_exact - 2 * d * eps, rel=1e-9)
    assert 1.0 < (exact - with_offset) / (2 * d * eps) < 10.0   # measured 3.4, 4.1, 5.4


def test_fid_input_errors() -> None:
    rng = np.random.default_rng(5)
    x = rng.normal(size=(10, 4))
    with pytest.raises(MetricError, match="expected real and generated features of one"):
        fid_from_features(x, rng.normal(size=(10, 5)))
    with pytest.raises(MetricError, match="route"):
        fid_from_features(x, x, route="sqrtm")                 # type: ignore[arg-type]
    bad = x.copy()
    bad[0, 0] = np.nan
    with pytest.raises(MetricError, match="expected finite features.*got 1 non-finite"):
        fid_from_features(bad, x)
    with pytest.raises(MetricError, match="expected finite covariances"):
        frechet_distance(np.zeros(4), np.cov(bad, rowvar=False), np.zeros(4), np.eye(4))
    with pytest.raises(MetricError, match="sqrt_sigma1 of shape"):
        frechet_distance(np.zeros(4), np.eye(4), np.zeros(4), np.eye(4), sqrt_sigma1=np.eye(3))
    assert frechet_distance(np.zeros(4), np.zeros((4, 4)), np.ones(4), np.eye(4)) == \
        pytest.approx(4.0 + 4.0)                               # a zero covariance: rank 0


def _write_images(folder: Path, prefix: str, count: int, seed: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        pixels = np.random.default_rng(seed + i).integers(0, 255, (20, 24, 3), np.uint8)
        paths.append(folder / f"{prefix}_{i}.png")
        Image.fromarray(pixels).save(paths[-1])
    return paths


class _Float64Features(torch.nn.Module):
    """An extractor whose features are not float32-representable (so the cache keeps float64)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.adaptive_avg_pool2d(x.double(), 1).flatten(1) / 3.0


@pytest.mark.parametrize("module", [TinyFeatures(), _Float64Features()])
def test_cached_reference_scores_identically(tmp_path: Path, module: torch.nn.Module) -> None:
    real = _write_images(tmp_path / "real", "real", 9, 0)
    extractor = ModuleExtractor(module, name="tiny", input_size=16)
    fake = extract_features(_write_images(tmp_path / "fake", "fake", 6, 50), extractor)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        first = reference_stats(real, extractor, cache_dir=tmp_path / "cache")
        second = reference_stats(real, extractor, cache_dir=tmp_path / "cache")
    assert second is not first and second.features.dtype == np.float64
    for route in ("nuclear-norm", "eigen"):
        assert (fid_from_features(first.features, fake, route=route)
                == fid_from_features(second.features, fake, route=route))
    assert frechet_distance(first.mu, first.sigma, *feature_stats(fake),
                            sqrt_sigma1=first.sigma_sqrt()) == \
        frechet_distance(second.mu, second.sigma, *feature_stats(fake),
                         sqrt_sigma1=second.sigma_sqrt())
    assert first.sigma_sqrt() is first.sigma_sqrt()          # once per object


def test_reference_stats_sqrt_saved_and_old_files_load(tmp_path: Path) -> None:
    real, _ = _sets(6, 40, 2, 8)
    mu, sigma = feature_stats(real)
    stats = ReferenceStats(mu, sigma, real, 40, {"n": "40"})
    np.savez(tmp_path / "old.npz", mu=mu, sigma=sigma, features=real.astype(np.float32), n=40,
             recipe=np.array(["n=40"]))                       # a cache file from before
    old = ReferenceStats.load(tmp_path / "old.npz")
    assert old._sigma_sqrt is None
    np.testing.assert_allclose(old.sigma_sqrt() @ old.sigma_sqrt().T, sigma, atol=1e-12)
    stats.save(tmp_path / "without.npz")
    assert "sigma_sqrt" not in np.load(tmp_path / "without.npz").files
    root = stats.sigma_sqrt()
    stats.save(tmp_path / "with.npz")
    loaded = ReferenceStats.load(tmp_path / "with.npz")
    assert np.array_equal(loaded.sigma_sqrt(), root)
    assert np.array_equal(loaded.features, real)              # float64 kept: not representable


def test_score_records_the_route(tmp_path: Path) -> None:
    """score_images: FID by the route fid_route picks, recorded in info["fid_route"]."""
    protocol = Protocol(name="t", data=DataSpec(min_area=0.0, max_area=1.0, min_side=0.0),
                        scoring=ScoringSpec(bootstrap=50))
    real = _write_images(tmp_path / "real", "real", 3, 0)
    fakes = _write_images(tmp_path / "fake", "fake", 6, 20)
    layout = Layout("L", "a", (LayoutObject("a", (0.1, 0.1, 0.5, 0.5), "a"),))
    items = [(p, layout, 0.0 if i < 3 else 1.0) for i, p in enumerate(fakes)]
    extractor = ModuleExtractor(TinyFeatures(), name="tiny", input_size=16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = score_images(items, protocol, fid_extractor=extractor, real_images=real,
                              cache_dir=tmp_path / "cache")
        feats = extract_features(fakes, extractor)
        ref = extract_features(real, extractor)
    routes = result.info["fid_route"]                          # D = 4: 3 x 6 >= 16 > 3 x 3
    assert routes["all"]["fid"] == "eigen" and routes["0"]["fid"] == "nuclear-norm"
    assert routes["1"]["kid"] == "whole-set" and routes["all"]["kid"] == "kernels-once"
    assert routes["all"]["device"] == "cpu" and routes["all"]["n_fake"] == 6
    for value, fake in ((result.metrics["fid"].value, feats),
                        (result.metrics_by_gate_scale[0.0]["fid"].value, feats[:3])):
        other = "nuclear-norm" if len(fake) == 6 else "eigen"
        assert value == pytest.approx(fid_from_features(ref, fake, route=other), rel=1e-6)


# --- KID ------------------------------------------------------------------------------------------
def _old_kid(real: np.ndarray, fake: np.ndarray, subsets: int = 100, subset_size: int = 1000,
             seed: int = 0) -> tuple[float, float]:
    """gatebench's KID before kernels were built once: three kernels per random subset."""
    def poly(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return (x @ y.T / x.shape[1] + 1.0) ** 3

    size = min(subset_size, real.shape[0], fake.shape[0])
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(subsets):
        x = real[rng.choice(real.shape[0], size, replace=False)]
        y = fake[rng.choice(fake.shape[0], size, replace=False)]
        kxx, kyy, kxy = poly(x, x), poly(y, y), poly(x, y)
        values.append((kxx.sum() - np.trace(kxx)) / (size * (size - 1))
                      + (kyy.sum() - np.trace(kyy)) / (size * (size - 1)) - 2.0 * kxy.mean())
    return float(np.mean(values)), float(np.std(values))


@pytest.mark.parametrize(("n_real", "n_fake", "size"), [(60, 50, 30), (40, 25, 1000), (30, 30, 12)])
def test_kid_equals_per_subset_kid(n_real: int, n_fake: int, size: int,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    real, fake = _sets(7, n_real, n_fake, 16)
    old = _old_kid(real, fake, subsets=20, subset_size=size, seed=3)
    assert kid_route(n_real, n_fake, size) == "kernels-once"
    new = kid(real, fake, subsets=20, subset_size=size, seed=3)
    assert new[0] == pytest.approx(old[0], rel=1e-12) and new[1] == pytest.approx(old[1], rel=1e-9)
    monkeypatch.setattr(fid_maths, "KID_KERNEL_CAP", 10)         # too big: kernels per subset
    assert kid_route(n_real, n_fake, size) == "per-subset"
    assert kid(real, fake, subsets=20, subset_size=size, seed=3) == pytest.approx(old, rel=1e-12)


def test_kid_whole_set_is_the_full_data_mmd() -> None:
    real, fake = _sets(8, 40, 40, 16)
    assert kid_route(40, 40, 40) == kid_route(40, 40) == "whole-set"
    for size in (40, 1000):                                    # N <= subset_size
        mean, std = kid(real, fake, subset_size=size)
        assert mean == pytest.approx(mmd2_unbiased(real, fake), rel=1e-12) and std == 0.0
        assert mean == pytest.approx(_old_kid(real, fake, subsets=3, subset_size=size)[0],
                                     rel=1e-12)
    with pytest.raises(MetricError, match="subsets >= 1"):
        kid(real, fake, subsets=0)


# --- cost at real size ----------------------------------------------------------------------------
def test_fid_and_kid_at_500_by_2048_are_fast() -> None:
    """Target <= 1.5 s each on 2 shared cores (sqrtm took 20-45 s, KID ~24 s); 5 s cannot flake."""
    rng = np.random.default_rng(9)
    scale = 1.0 / np.sqrt(1.0 + np.arange(2048) / 8.0)          # no basis: cheap to make
    real, fake = (np.maximum(rng.normal(size=(500, 2048)) * scale + 0.3 + shift, 0.0)
                  for shift in (0.0, 0.1))
    start = time.perf_counter()
    value = fid_from_features(real, fake)
    fid_s = time.perf_counter() - start
    start = time.perf_counter()
    mean, std = kid(real, fake)
    kid_s = time.perf_counter() - start
    assert np.isfinite(value) and value > 0 and np.isfinite(mean) and std == 0.0
    assert fid_s < 5.0 and kid_s < 5.0, (fid_s, kid_s)


# --- the scoring device ---------------------------------------------------------------------------
def _torch_matches_numpy(device: str, d: int) -> None:
    real, fake = _sets(10, 500, 300, d)
    small_real, small_fake = _sets(11, 400, 300, 48)
    for args in ((real, fake), (small_real, small_fake)):
        for route in ("nuclear-norm", "eigen"):
            assert fid_from_features(*args, device=device, route=route) == pytest.approx(
                fid_from_features(*args, route=route), rel=1e-9)
    for args in ((real, fake), (real, fake[:200])):          # kernels-once, then subsets
        assert kid(*args, subset_size=100, device=device) == pytest.approx(
            kid(*args, subset_size=100), rel=1e-9)
    assert kid(real[:300], fake, device=device) == pytest.approx(kid(real[:300], fake), rel=1e-9)
    (mu1, s1), (mu2, s2) = feature_stats(small_real), feature_stats(small_fake)
    assert frechet_distance(mu1, s1, mu2, s2, sqrt_sigma1=sqrt_factor(s1, device),
                            device=device) == pytest.approx(frechet_distance(mu1, s1, mu2, s2),
                                                            rel=1e-9)


def test_torch_route_on_cpu_matches_numpy() -> None:
    """``device`` given: the same maths in torch float64 (here on the CPU, cheaply)."""
    _torch_matches_numpy("cpu", 256)


@pytest.mark.gpu
@cuda
def test_gpu_routes_match_cpu() -> None:
    _torch_matches_numpy("cuda", 2048)
