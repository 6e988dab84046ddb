"""Anytime-valid confidence sequences for bounded means and ratios of sums (numpy only).

Why: a gate that looks at its metric after every layout and stops as soon as it is sure must not
use a fixed-n interval (peeking inflates the error rate). A confidence sequence (CS) covers the
true value at EVERY n simultaneously with probability >= 1 - alpha, so stopping whenever we like
is safe. This is the predictable plug-in, hedged-capital CS of Waudby-Smith & Ramdas (2023),
"Estimating means of bounded random variables by betting", JRSS-B (their Theorem 3 and the
``PrPl-EB``-style plug-in bets), written out here because the ``confseq`` package is unmaintained.

For x_1..x_n in [0, 1] (independent with common mean; more generally a conditional mean m given
the past) and a candidate mean m:

* running estimates ``mu_t = (1/2 + sum_{i<=t} x_i) / (t + 1)`` and
  ``s2_t = (1/4 + sum_{i<=t} (x_i - mu_i)^2) / (t + 1)``, with ``mu_0 = 1/2``, ``s2_0 = 1/4``;
* the bet at step t is predictable (uses data up to t-1 only):
  ``lambda_t = sqrt(2 log(2/alpha) / (s2_{t-1} t log(1 + t)))``;
* hedged capital ``K+_t = prod (1 + min(lambda_i, C/m)(x_i - m))``,
  ``K-_t = prod (1 - min(lambda_i, C/(1-m))(x_i - m))``,
  ``K_t = max(THETA K+_t, (1 - THETA) K-_t)``: a nonnegative supermartingale-bounded process
  with ``K_0 <= 1`` when m is the true mean, so by Ville's inequality it ever reaches 1/alpha
  with probability <= alpha;
* the CS at t is ``{m : K_t(m) < 1/alpha}``; we report the running intersection over t (an
  intersection of sets that each hold for all t at once is still valid) as nested bounds.

Everything is computed in log space (sums of ``log1p``). Capping the bets at ``C/m`` and
``C/(1-m)`` keeps every factor >= 1 - C = 1/2, so no logarithm ever sees zero.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np

__all__ = ["C", "THETA", "DEFAULT_GRID", "Bounds", "capital_at", "ratio_unit_values",
           "mean_sequence", "ratio_sequence", "decide", "split_alpha"]

C: Final[float] = 0.5
"""Bet cap: ``min(lambda, C/m)`` and ``min(lambda, C/(1-m))``. The paper allows C in (0, 1) and
uses 1/2 or 3/4; 1/2 keeps each capital factor >= 1/2, i.e. one observation can at most halve
the capital, which bounds the damage of an early unlucky bet at a small cost in power."""

THETA: Final[float] = 0.5
"""Hedge weight: ``K = max(THETA K+, (1 - THETA) K-)``. 1/2 treats both sides alike (two-sided
CS); rejecting needs one side's capital to reach 2/alpha."""

DEFAULT_GRID: Final[int] = 2001
"""Grid points over the support (both ends included): step 1/2000 of the range."""

_CHUNK_ELEMENTS = 1 << 21   # grid rows x n per vectorised block (bounds memory to ~tens of MB)


@dataclass(frozen=True)
class Bounds:
    """Per-n running-intersected CS bounds in the caller's units.

    ``lower[k]``, ``upper[k]`` hold after the first k+1 observations; ``lower`` never decreases
    and ``upper`` never increases, so reading them at a data-dependent stopping time is valid.
    """

    lower: np.ndarray
    upper: np.ndarray
    alpha: float
    n: int

    def at_end(self) -> tuple[float, float]:
        """(lower, upper) after all n observations (n == 0 has no bounds: ValueError)."""
        if self.n == 0:
            raise ValueError("expected at least one observation, got none")
        return float(self.lower[-1]), float(self.upper[-1])


# --- validation ---------------------------------------------------------------------------------
def _check_alpha(alpha: float) -> float:
    try:
        a = float(alpha)
    except (TypeError, ValueError):
        raise ValueError(f"expected alpha as a number in (0, 1), got {alpha!r}") from None
    if not (0.0 < a < 1.0):
        raise ValueError(f"expected alpha in (0, 1), got {alpha!r}")
    return a


def _check_range(low: float, high: float, what: str) -> tuple[float, float]:
    lo, hi = float(low), float(high)
    if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
        raise ValueError(f"expected finite {what} with low < high, got [{low!r}, {high!r}]")
    return lo, hi


def _check_grid(grid: int) -> int:
    if isinstance(grid, bool) or not isinstance(grid, (int, np.integer)) or grid < 3:
        raise ValueError(f"expected grid as an integer >= 3, got {grid!r}")
    return int(grid)


def _as_1d(values: np.ndarray, what: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"expected {what} as a 1-D array, got shape {arr.shape}")
    bad = ~np.isfinite(arr)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"expected finite {what}, got {float(arr[i])!r} at index {i}")
    return arr


# --- the martingale -----------------------------------------------------------------------------
def _plug_in_bets(x: np.ndarray, alpha: float) -> np.ndarray:
    """lambda_t for t = 1..n per row, from data up to t-1 only (rows x n)."""
    n = x.shape[1]
    t = np.arange(1, n + 1, dtype=np.float64)
    mu = (0.5 + np.cumsum(x, axis=1)) / (t + 1.0)                  # mu_t, t = 1..n
    s2 = (0.25 + np.cumsum((x - mu) ** 2, axis=1)) / (t + 1.0)     # s2_t, t = 1..n
    s2_prev = np.concatenate([np.full((x.shape[0], 1), 0.25), s2[:, :-1]], axis=1)
    return np.sqrt(2.0 * np.log(2.0 / alpha) / (s2_prev * t * np.log1p(t)))


def capital_at(values_2d: np.ndarray, m: float | np.ndarray, alpha: float) -> np.ndarray:
    """log K_t(m) of the hedged capital process, shape (rows, n), for values already in [0, 1].

    Each row is one independent sequence (a simulation replicate, or one grid candidate's
    transformed data); ``m`` is one candidate mean for all rows or one per row (shape (rows,)).
    Entry [r, t-1] is the log-capital after t observations; the CS rejects m at t when it is
    >= log(1/alpha). ``mean_sequence`` and ``ratio_sequence`` both call this on their grids, so
    the simulations in the tests exercise the very code that makes the decisions.
    """
    a = _check_alpha(alpha)
    x = np.asarray(values_2d, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"expected values_2d as a 2-D array (rows x n), got shape {x.shape}")
    if x.size and not (np.isfinite(x).all() and x.min() >= 0.0 and x.max() <= 1.0):
        raise ValueError("expected values_2d finite and within [0, 1] (rescale first)")
    mm = np.asarray(m, dtype=np.float64)
    if mm.ndim > 1 or (mm.ndim == 1 and mm.shape[0] != x.shape[0]):
        raise ValueError(f"expected m as a scalar or one per row ({x.shape[0]}), got shape "
                         f"{mm.shape}")
    if not (np.isfinite(mm).all() and (mm >= 0.0).all() and (mm <= 1.0).all()):
        raise ValueError(f"expected m within [0, 1], got {m!r}")
    mm = mm + 0.0   # -0.0 -> 0.0: C / -0.0 would be -inf, a negative "cap" on the bet
    mm = np.broadcast_to(mm, (x.shape[0],))[:, None] if x.shape[0] else mm.reshape(-1, 1)
    if x.shape[1] == 0:
        return np.zeros(x.shape)
    lam = _plug_in_bets(x, a)
    with np.errstate(divide="ignore"):   # m = 0 or 1: that side's cap is infinite, bet = lambda
        cap_plus, cap_minus = C / mm, C / (1.0 - mm)
    diff = x - mm
    log_plus = np.cumsum(np.log1p(np.minimum(lam, cap_plus) * diff), axis=1)
    log_minus = np.cumsum(np.log1p(-np.minimum(lam, cap_minus) * diff), axis=1)
    return np.maximum(np.log(THETA) + log_plus, np.log1p(-THETA) + log_minus)


def _ever_rejected(y: np.ndarray, m: np.ndarray, alpha: float) -> np.ndarray:
    """rows x n booleans: candidate row rejected at some s <= t (the running intersection)."""
    log_capital = capital_at(y, m, alpha)
    return np.maximum.accumulate(log_capital, axis=1) >= np.log(1.0 / alpha)


def _bounds_from_grid(kept: np.ndarray, grid: np.ndarray, alpha: float) -> Bounds:
    """Conservative per-n bounds from grid rows not yet rejected (grid x n booleans).

    The true set lies strictly between the nearest REJECTED grid points on either side of the
    kept ones, so we widen by one step: lower = (smallest kept) - step, upper = (largest kept) +
    step, clipped to the support. That contains the continuous set whenever it is an interval
    (proved for the mean; assumed for the ratio; see the callers). If every grid point is
    rejected (the CS is empty: possible with probability <= alpha, or when the data break the
    assumptions), the last non-empty bounds are carried forward: they still contain the
    (shrinking) continuous set, and the bounds stay nested.
    """
    g, n = kept.shape
    lower, upper = np.empty(n), np.empty(n)
    any_kept = np.asarray(kept.any(axis=0))
    first = np.argmax(kept, axis=0)
    last = g - 1 - np.argmax(kept[::-1], axis=0)
    lo_prev, hi_prev = float(grid[0]), float(grid[-1])
    for t in range(n):
        if any_kept[t]:
            lo_prev = float(grid[max(first[t] - 1, 0)])
            hi_prev = float(grid[min(last[t] + 1, g - 1)])
        lower[t], upper[t] = lo_prev, hi_prev
    return Bounds(lower=lower, upper=upper, alpha=alpha, n=n)


def _rejections_over_grid(make_rows, grid_size: int, n: int, alpha: float) -> np.ndarray:
    """grid x n ever-rejected flags, built in row chunks (``make_rows(sl) -> (y, m)``)."""
    out = np.empty((grid_size, n), dtype=bool)
    step = max(1, _CHUNK_ELEMENTS // max(n, 1))
    for start in range(0, grid_size, step):
        sl = slice(start, min(start + step, grid_size))
        y, m = make_rows(sl)
        out[sl] = _ever_rejected(y, m, alpha)
    return out


# --- public API ---------------------------------------------------------------------------------
def mean_sequence(values: np.ndarray, alpha: float, low: float = 0.0, high: float = 1.0,
                  grid: int = DEFAULT_GRID) -> Bounds:
    """Anytime-valid CS for the mean of observations known to lie in [low, high].

    Values are rescaled to [0, 1] and every grid candidate m is tested with ``capital_at``.
    Here the bets do not depend on m, and then K+ is non-increasing and K- non-decreasing in m
    (each factor is), so ``{m : K_t(m) < 1/alpha}`` is an interval and the one-step widening
    in the bounds makes the grid answer a superset of the exact CS (never less conservative).
    """
    a = _check_alpha(alpha)
    lo, hi = _check_range(low, high, "low/high bounds")
    g = _check_grid(grid)
    x = _as_1d(values, "values")
    outside = (x < lo) | (x > hi)
    if outside.any():
        i = int(np.flatnonzero(outside)[0])
        raise ValueError(f"expected values within [{lo}, {hi}], got {float(x[i])!r} at "
                         f"index {i}")
    n = x.size
    unit = np.clip((x - lo) / (hi - lo), 0.0, 1.0)
    m_grid = np.linspace(0.0, 1.0, g)
    kept = ~_rejections_over_grid(
        lambda sl: (np.broadcast_to(unit, (sl.stop - sl.start, n)), m_grid[sl]), g, n, a)
    unit_bounds = _bounds_from_grid(kept, m_grid, a)
    return Bounds(lower=lo + (hi - lo) * unit_bounds.lower,
                  upper=lo + (hi - lo) * unit_bounds.upper, alpha=a, n=n)


def ratio_unit_values(numerators: np.ndarray, denominators: np.ndarray, r: float | np.ndarray,
                      value_low: float, value_high: float,
                      max_denominator: float) -> tuple[np.ndarray, np.ndarray]:
    """(Y, m0): the [0, 1] observations and null mean that test ``E[num] / E[den] == r``.

    ``R >= r`` iff ``E[num - r den] >= 0``. With ``a = (value_low - r) D``,
    ``b = (value_high - r) D`` (D = max_denominator), ``Y = (num - r den - a) / (b - a)`` lies in
    [0, 1] for every r in [value_low, value_high], and ``E[Y] = m0 = -a / (b - a)`` exactly when
    ``E[num - r den] = 0``. ``r`` is a scalar or a column (shape (k, 1)) broadcasting against
    the units; no validation here (``ratio_sequence`` validates), inputs must already be sane.
    """
    num = np.asarray(numerators, dtype=np.float64)
    den = np.asarray(denominators, dtype=np.float64)
    rr = np.asarray(r, dtype=np.float64)
    a = (value_low - rr) * max_denominator
    b = (value_high - rr) * max_denominator
    y = np.clip((num - rr * den - a) / (b - a), 0.0, 1.0)
    m0 = np.clip(-a / (b - a), 0.0, 1.0)
    return y, m0


def ratio_sequence(numerators: np.ndarray, denominators: np.ndarray, alpha: float,
                   value_low: float, value_high: float, max_denominator: float,
                   grid: int = DEFAULT_GRID) -> Bounds:
    """Anytime-valid CS for a ratio of sums ``R = E[num] / E[den]`` over independent units.

    Per unit i: ``0 <= den_i <= max_denominator`` and ``value_low den_i <= num_i <=
    value_high den_i`` (e.g. IoU>0.5 rate per layout: num = matched boxes, den = scorable boxes,
    max_denominator = the protocol's max boxes per layout; a plain mean is den_i = 1). Each grid
    r in [value_low, value_high] is tested via ``ratio_unit_values`` + ``capital_at`` and
    excluded once its capital reaches 1/alpha.

    A unit with den_i = 0 still counts as a unit: its Y equals m0, so it moves neither capital
    (every factor is 1) but it advances the time index, which keeps n the number of units seen
    (what a caller stops on) and keeps the bets predictable. Unlike the mean, the plug-in bets
    here depend on r (through Y(r)), so the non-rejected set is not proved to be an interval;
    it is in practice (each bet-by-bet factor is monotone in r), and the bounds assume it.
    """
    a = _check_alpha(alpha)
    lo, hi = _check_range(value_low, value_high, "value_low/value_high")
    g = _check_grid(grid)
    try:
        d_max = float(max_denominator)
    except (TypeError, ValueError):
        raise ValueError(f"expected max_denominator as a positive number, got "
                         f"{max_denominator!r}") from None
    if not (np.isfinite(d_max) and d_max > 0):
        raise ValueError(f"expected max_denominator finite and > 0, got {max_denominator!r}")
    num = _as_1d(numerators, "numerators")
    den = _as_1d(denominators, "denominators")
    if num.shape != den.shape:
        raise ValueError(f"expected numerators and denominators of one length, got {num.size} "
                         f"and {den.size}")
    bad_den = (den < 0) | (den > d_max)
    if bad_den.any():
        i = int(np.flatnonzero(bad_den)[0])
        raise ValueError(f"expected denominators within [0, {d_max}], got {float(den[i])!r} at "
                         f"index {i}")
    tol = 1e-9 * np.maximum(1.0, np.abs(den) * max(abs(lo), abs(hi)))
    bad_num = (num < lo * den - tol) | (num > hi * den + tol)
    if bad_num.any():
        i = int(np.flatnonzero(bad_num)[0])
        raise ValueError(f"expected value_low*den <= num <= value_high*den per unit, got "
                         f"num={float(num[i])!r} with den={float(den[i])!r} (range "
                         f"[{float(lo * den[i])!r}, "
                         f"{float(hi * den[i])!r}]) at index {i}")
    n = num.size
    r_grid = np.linspace(lo, hi, g)

    def rows(sl: slice) -> tuple[np.ndarray, np.ndarray]:
        y, m0 = ratio_unit_values(num[None, :], den[None, :], r_grid[sl, None], lo, hi, d_max)
        return y, m0[:, 0]

    kept = ~_rejections_over_grid(rows, g, n, a)
    return _bounds_from_grid(kept, r_grid, a)


_OPS: Final[tuple[str, ...]] = (">", ">=", "<", "<=")


def decide(bounds_lower: float, bounds_upper: float, op: str, threshold: float) -> str | None:
    """"pass" / "fail" once the whole interval sits on one side of ``value op threshold``.

    pass needs every value in [lower, upper] to satisfy the comparison, fail needs none to;
    otherwise None (keep collecting). At equality the strictness matters: for ">" pass needs
    lower > threshold and fail needs upper <= threshold; for ">=" pass needs lower >= threshold
    and fail needs upper < threshold; "<" and "<=" mirror these.
    """
    lo, hi, thr = float(bounds_lower), float(bounds_upper), float(threshold)
    if not (np.isfinite(lo) and np.isfinite(hi) and np.isfinite(thr)):
        raise ValueError(f"expected finite bounds and threshold, got [{bounds_lower!r}, "
                         f"{bounds_upper!r}] vs {threshold!r}")
    if lo > hi:
        raise ValueError(f"expected lower <= upper, got [{bounds_lower!r}, {bounds_upper!r}]")
    if op == ">":
        return "pass" if lo > thr else "fail" if hi <= thr else None
    if op == ">=":
        return "pass" if lo >= thr else "fail" if hi < thr else None
    if op == "<":
        return "pass" if hi < thr else "fail" if lo >= thr else None
    if op == "<=":
        return "pass" if hi <= thr else "fail" if lo > thr else None
    raise ValueError(f"expected op one of {_OPS}, got {op!r}")


def split_alpha(alpha: float, k: int) -> float:
    """Bonferroni: alpha / k for each of k simultaneous decisions.

    With k gates each run at alpha / k, the chance that ANY of them errs is <= alpha (union
    bound), whatever the dependence between them; conservative but assumption-free.
    """
    a = _check_alpha(alpha)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"expected k as an integer >= 1, got {k!r}")
    return a / int(k)
