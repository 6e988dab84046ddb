"""Seeded bootstrap confidence intervals over LAYOUTS, and paired differences.

The unit of resampling is the layout (DESIGN: "bootstrap confidence interval over layouts"): all
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
    and counted.
    """
    x = np.asarray(a, dtype=np.float64).ravel()
    y = np.asarray(b, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise MetricError(f"expected paired arrays of one length, got {x.size} and {y.size}")
    keep = np.isfinite(x) & np.isfinite(y)
    d = x[keep] - y[keep]
    if d.size == 0:
        raise MetricError("expected at least one complete pair, got none")
    diff = float(d.mean())
    if d.size < 2 or n_boot <= 0:
        return PairedDiff(diff, None, None, None, int(d.size), int((~keep).sum()))
    rng = np.random.default_rng(seed)
    stats = np.empty(n_boot)
    for start in range(0, n_boot, _CHUNK):
        nb = min(_CHUNK, n_boot - start)
        stats[start:start + nb] = d[rng.integers(0, d.size, size=(nb, d.size))].mean(axis=1)
    low, high = _percentiles(stats, level)
    other_side = np.mean(stats <= 0) if diff > 0 else np.mean(stats >= 0)
    p_value = float(min(1.0, 2.0 * other_side)) if diff != 0 else 1.0
    return PairedDiff(diff, low, high, p_value, int(d.size), int((~keep).sum()))
