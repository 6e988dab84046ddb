"""Seeded bootstrap confidence intervals over LAYOUTS, and paired differences.

The unit of resampling is the layout (a run's CIs and compare's paired CIs are over layouts): all
samples of one layout (several seeds, several boxes) go in or out together, because they are not
independent. Rates that pool boxes (IoU>0.5 rate, mIoU) are ratios of sums, so they are resampled
as (numerator, denominator) per layout. Intervals are percentile intervals.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from gatebench.errors import MetricError

_CHUNK = 64   # bootstrap replicates per vectorised block (bounds memory at ~64 x n_groups)


@dataclass(frozen=True)
class MetricValue:
    """A number with its interval and how many items it averages (``ci_*`` None: no interval)."""

    value: float
    ci_low: float | None = None
    ci_high: float | None = None
    n: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "ci_low": self.ci_low, "ci_high": self.ci_high, "n": self.n}


@dataclass(frozen=True)
class PairedDiff:
    """mean(a) - mean(b) over pairs, its interval and a two-sided bootstrap p-value."""

    diff: float
    ci_low: float | None
    ci_high: float | None
    p_value: float | None
    n: int
    dropped: int = 0   # pairs with a NaN on either side
    a_value: float | None = None   # the two sides' own values (ratio of sums; mean by default)
    b_value: float | None = None


def _group_sums(numer: np.ndarray, denom: np.ndarray,
                groups: Sequence[Any] | None) -> tuple[np.ndarray, np.ndarray]:
    if groups is None:
        return numer, denom
    if len(groups) != len(numer):
        raise MetricError(f"expected one group per value, got {len(groups)} for {len(numer)}")
    _, inverse = np.unique(np.asarray([str(g) for g in groups]), return_inverse=True)
    return (np.bincount(inverse, weights=numer), np.bincount(inverse, weights=denom))


def _percentiles(stats: np.ndarray, level: float) -> tuple[float | None, float | None]:
    stats = stats[np.isfinite(stats)]
    if stats.size == 0:
        return None, None
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(stats, [alpha, 1.0 - alpha])
    return float(low), float(high)


def bootstrap_ci(values: Sequence[float], denom: Sequence[float] | None = None, *,
                 groups: Sequence[Any] | None = None, n_boot: int = 1000, level: float = 0.95,
                 seed: int = 0) -> MetricValue:
    """``sum(values) / sum(denom)`` (denom default 1 each: the mean) with a percentile CI.

    ``groups`` (e.g. layout ids) makes the layout the resampling unit. ``n`` = number of items
    in the denominator (e.g. scorable boxes, images). Fewer than 2 groups: no interval.
    """
    numer = np.asarray(values, dtype=np.float64).ravel()
    den = np.ones_like(numer) if denom is None else np.asarray(denom, dtype=np.float64).ravel()
    if numer.shape != den.shape:
        raise MetricError(f"expected values and denominators of one length, got {numer.size} "
                          f"and {den.size}")
    if numer.size == 0 or den.sum() <= 0:
        raise MetricError("expected at least one item to average, got none")
    if not np.isfinite(numer).all():
        raise MetricError("expected finite values to average, got NaN or inf")
    value = float(numer.sum() / den.sum())
    count = int(round(den.sum())) if denom is not None else numer.size
    gnum, gden = _group_sums(numer, den, groups)
    if gnum.size < 2 or n_boot <= 0:
        return MetricValue(value, None, None, count)
    rng = np.random.default_rng(seed)
    stats = np.empty(n_boot)
    for start in range(0, n_boot, _CHUNK):
        b = min(_CHUNK, n_boot - start)
        idx = rng.integers(0, gnum.size, size=(b, gnum.size))
        with np.errstate(divide="ignore", invalid="ignore"):
            stats[start:start + b] = gnum[idx].sum(axis=1) / gden[idx].sum(axis=1)
    low, high = _percentiles(stats, level)
    return MetricValue(value, low, high, count)


def mean_ci(values: Sequence[float], *, groups: Sequence[Any] | None = None, n_boot: int = 1000,
            level: float = 0.95, seed: int = 0) -> MetricValue:
    """Mean with a bootstrap CI (over ``groups`` when given)."""
    return bootstrap_ci(values, None, groups=groups, n_boot=n_boot, level=level, seed=seed)


def paired_bootstrap_diff(a: Sequence[float], b: Sequence[float], *, n_boot: int = 1000,
                          level: float = 0.95, seed: int = 0) -> PairedDiff:
    """mean(a) - mean(b) for per-layout values paired by position (same layouts, same seeds).

    Pairs are resampled together, so layout difficulty cancels. p-value: twice the share of
    replicates on the other side of 0 (capped at 1); pairs with NaN on either side are dropped
    and counted. The unit-denominator case of ``paired_ratio_bootstrap``.
    """
    return paired_ratio_bootstrap(a, b, n_boot=n_boot, level=level, seed=seed)


def paired_ratio_bootstrap(num_a: Sequence[float], num_b: Sequence[float],
                           den_a: Sequence[float] | None = None,
                           den_b: Sequence[float] | None = None, *, n_boot: int = 1000,
                           level: float = 0.95, seed: int = 0) -> PairedDiff:
    """sum(num_a)/sum(den_a) - sum(num_b)/sum(den_b), units (layouts) resampled as pairs.

    Why one function: pooled rates (IoU>0.5 rate, region CLIP) are ratios of per-layout sums, and
    `compare` must resample them exactly like the plain means. Denominators None (both): the
    mean of the per-pair differences, so ``paired_bootstrap_diff`` keeps its numbers; either
    side's replicates then use the same resampled indices. Units with a non-finite value are
    dropped and counted; replicates with a zero resampled denominator are left out of the CI.
    """
    x = np.asarray(num_a, dtype=np.float64).ravel()
    y = np.asarray(num_b, dtype=np.float64).ravel()
    means = den_a is None and den_b is None
    dx = np.ones_like(x) if den_a is None else np.asarray(den_a, dtype=np.float64).ravel()
    dy = np.ones_like(y) if den_b is None else np.asarray(den_b, dtype=np.float64).ravel()
    if not x.shape == y.shape == dx.shape == dy.shape:
        raise MetricError(f"expected paired arrays of one length, got {x.size} and {y.size}"
                          + ("" if means else f" (denominators {dx.size} and {dy.size})"))
    keep = np.isfinite(x) & np.isfinite(y) & np.isfinite(dx) & np.isfinite(dy)
    dropped = int((~keep).sum())
    x, y, dx, dy = x[keep], y[keep], dx[keep], dy[keep]
    if x.size == 0:
        raise MetricError("expected at least one complete pair, got none")
    if not means and (dx.sum() <= 0 or dy.sum() <= 0):
        raise MetricError("expected a positive denominator on both sides, got a sum of 0")
    d = x - y
    if means:
        a_value, b_value, diff = float(x.mean()), float(y.mean()), float(d.mean())
    else:
        a_value, b_value = float(x.sum() / dx.sum()), float(y.sum() / dy.sum())
        diff = a_value - b_value
    if x.size < 2 or n_boot <= 0:
        return PairedDiff(diff, None, None, None, int(x.size), dropped, a_value, b_value)
    rng = np.random.default_rng(seed)
    stats = np.empty(n_boot)
    for start in range(0, n_boot, _CHUNK):
        nb = min(_CHUNK, n_boot - start)
        idx = rng.integers(0, x.size, size=(nb, x.size))
        if means:
            stats[start:start + nb] = d[idx].mean(axis=1)
        else:
            with np.errstate(divide="ignore", invalid="ignore"):
                stats[start:start + nb] = (x[idx].sum(axis=1) / dx[idx].sum(axis=1)
                                           - y[idx].sum(axis=1) / dy[idx].sum(axis=1))
    low, high = _percentiles(stats, level)
    other_side = np.mean(stats <= 0) if diff > 0 else np.mean(stats >= 0)
    p_value = float(min(1.0, 2.0 * other_side)) if diff != 0 else 1.0
    return PairedDiff(diff, low, high, p_value, int(x.size), dropped, a_value, b_value)
