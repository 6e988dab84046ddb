"""Anytime-valid confidence sequences (gatebench.metrics.confseq).

Coverage is checked the way the guarantee is stated: the CS must hold at EVERY n at once, so a
replicate counts as a miss if the log-capital at the true mean ever reaches log(1/alpha) (that is
what optional stopping can exploit). The martingale is restated independently as a plain loop.
"""
from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gatebench.metrics.confseq import (
    Bounds,
    capital_at,
    decide,
    mean_sequence,
    ratio_sequence,
    ratio_unit_values,
    split_alpha,
)

REPS, N = 2000, 300


def _max_miss(alpha: float, reps: int = REPS) -> float:
    """Miscoverage allowed: alpha plus 3 binomial standard errors of the estimate."""
    return alpha + 3.0 * math.sqrt(alpha * (1.0 - alpha) / reps)


def _ever_excluded(log_capital: np.ndarray, alpha: float) -> float:
    return float((log_capital.max(axis=1) >= math.log(1.0 / alpha)).mean())


# --- an independent restatement (plain Python, straight from the formulas) ---------------------
def loop_capital(xs: list[float], m: float, alpha: float) -> list[float]:
    """K_t(m), t = 1..n, of the hedged predictable plug-in process (c = theta = 1/2)."""
    c, theta = 0.5, 0.5
    s2_prev = 0.25            # sigma2_hat_0
    total, sq_total = 0.0, 0.0
    k_plus, k_minus = 1.0, 1.0
    out = []
    for t, x in enumerate(xs, start=1):
        lam = math.sqrt(2.0 * math.log(2.0 / alpha) / (s2_prev * t * math.log(1.0 + t)))
        bet_plus = lam if m == 0 else min(lam, c / m)
        bet_minus = lam if m == 1 else min(lam, c / (1.0 - m))
        k_plus *= 1.0 + bet_plus * (x - m)
        k_minus *= 1.0 - bet_minus * (x - m)
        out.append(max(theta * k_plus, (1.0 - theta) * k_minus))
        total += x
        mu_t = (0.5 + total) / (t + 1)
        sq_total += (x - mu_t) ** 2
        s2_prev = (0.25 + sq_total) / (t + 1)
    return out


def loop_bounds(xs: list[float], alpha: float, grid: list[float]) -> tuple[list[float],
                                                                           list[float]]:
    """Per-n bounds from the loop: nearest rejected grid point outside the kept ones."""
    kept = [[k < 1.0 / alpha for k in loop_capital(xs, m, alpha)] for m in grid]
    lower, upper = [], []
    ever_kept = [True] * len(grid)
    for t in range(len(xs)):
        ever_kept = [e and kept[j][t] for j, e in enumerate(ever_kept)]
        idx = [j for j, e in enumerate(ever_kept) if e]
        assert idx, "an empty CS on this fixed sequence would make the comparison moot"
        assert idx == list(range(idx[0], idx[-1] + 1)), f"kept set not an interval at n={t + 1}"
        lower.append(grid[max(idx[0] - 1, 0)])
        upper.append(grid[min(idx[-1] + 1, len(grid) - 1)])
    return lower, upper


FIXED = [0.9, 0.1, 0.35, 1.0, 0.0, 0.62, 0.48, 0.77, 0.2, 0.55, 0.3, 0.05, 0.91, 0.4, 0.66,
         0.12, 0.5, 0.83, 0.27, 0.44, 0.71, 0.6, 0.38, 0.15, 0.58]


@pytest.mark.parametrize("m", [0.0, 0.03, 0.2, 0.5, 0.5003, 0.8, 0.99, 1.0])
@pytest.mark.parametrize("alpha", [0.05, 0.0125])
def test_capital_matches_plain_loop(m: float, alpha: float) -> None:
    expected = np.asarray(loop_capital(FIXED, m, alpha))
    got = np.exp(capital_at(np.asarray([FIXED]), m, alpha)[0])
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=0)


def test_capital_per_row_m_matches_scalar_m() -> None:
    rows = np.asarray([FIXED, FIXED[::-1], [0.5] * len(FIXED)])
    ms = np.asarray([0.1, 0.5, 0.9])
    together = capital_at(rows, ms, 0.05)
    for i, m in enumerate(ms):
        np.testing.assert_array_equal(together[i], capital_at(rows[i:i + 1], float(m), 0.05)[0])


@pytest.mark.parametrize("alpha", [0.05, 0.2])
def test_mean_sequence_brackets_what_the_loop_keeps(alpha: float) -> None:
    grid = np.linspace(0.0, 1.0, 101)
    lower, upper = loop_bounds(FIXED, alpha, [float(g) for g in grid])
    b = mean_sequence(np.asarray(FIXED), alpha, grid=101)
    np.testing.assert_array_equal(b.lower, lower)
    np.testing.assert_array_equal(b.upper, upper)
    # the same in other units: an affine map of the [0, 1] answer
    lo, hi = -2.0, 6.0
    scaled = mean_sequence(lo + (hi - lo) * np.asarray(FIXED), alpha, low=lo, high=hi, grid=101)
    np.testing.assert_allclose(scaled.lower, lo + (hi - lo) * np.asarray(lower), atol=1e-12)
    np.testing.assert_allclose(scaled.upper, lo + (hi - lo) * np.asarray(upper), atol=1e-12)


def test_ratio_sequence_brackets_what_the_loop_keeps() -> None:
    """Y(r) and m0(r) restated here from the method, fed to the loop, grid point by grid point."""
    rng = np.random.default_rng(7)
    d_max, v_lo, v_hi, alpha = 6, 0.0, 1.0, 0.05
    den = rng.integers(0, d_max + 1, 40)
    num = rng.binomial(den, 0.35)
    grid = [float(r) for r in np.linspace(v_lo, v_hi, 81)]
    kept_ever = [True] * len(grid)
    lower, upper = [], []
    caps = []
    for r in grid:
        a, b = (v_lo - r) * d_max, (v_hi - r) * d_max
        ys = [(float(nu) - r * float(de) - a) / (b - a) for nu, de in zip(num, den, strict=True)]
        caps.append(loop_capital(ys, -a / (b - a) + 0.0, alpha))
    for t in range(len(den)):
        kept_ever = [e and caps[j][t] < 1.0 / alpha for j, e in enumerate(kept_ever)]
        idx = [j for j, e in enumerate(kept_ever) if e]
        lower.append(grid[max(idx[0] - 1, 0)])
        upper.append(grid[min(idx[-1] + 1, len(grid) - 1)])
    got = ratio_sequence(num, den, alpha, v_lo, v_hi, d_max, grid=81)
    np.testing.assert_allclose(got.lower, lower, atol=1e-12)
    np.testing.assert_allclose(got.upper, upper, atol=1e-12)


def test_ratio_with_unit_denominators_is_the_mean() -> None:
    rng = np.random.default_rng(3)
    x = rng.beta(2.0, 3.0, 150)
    a = mean_sequence(x, 0.05, grid=401)
    b = ratio_sequence(x, np.ones_like(x), 0.05, 0.0, 1.0, 1.0, grid=401)
    np.testing.assert_array_equal(a.lower, b.lower)
    np.testing.assert_array_equal(a.upper, b.upper)


# --- coverage under optional stopping -----------------------------------------------------------
MEAN_CASES = [
    ("bernoulli(0.1)", lambda rng: (rng.random((REPS, N)) < 0.1).astype(float), 0.1, 0.05),
    ("bernoulli(0.5)", lambda rng: (rng.random((REPS, N)) < 0.5).astype(float), 0.5, 0.05),
    ("bernoulli(0.9)", lambda rng: (rng.random((REPS, N)) < 0.9).astype(float), 0.9, 0.05),
    ("beta(2,5)", lambda rng: rng.beta(2.0, 5.0, (REPS, N)), 2.0 / 7.0, 0.05),
    ("beta(0.5,0.5)", lambda rng: rng.beta(0.5, 0.5, (REPS, N)), 0.5, 0.05),
    ("bernoulli(0.5)@0.1", lambda rng: (rng.random((REPS, N)) < 0.5).astype(float), 0.5, 0.1),
    ("beta(5,1)@0.1", lambda rng: rng.beta(5.0, 1.0, (REPS, N)), 5.0 / 6.0, 0.1),
]


@pytest.mark.parametrize("name,draw,mean,alpha", MEAN_CASES, ids=[c[0] for c in MEAN_CASES])
def test_mean_miscoverage_under_optional_stopping(name, draw, mean, alpha) -> None:
    rng = np.random.default_rng(sum(map(ord, name)))   # fixed per case, not hash()-salted
    miss = _ever_excluded(capital_at(draw(rng), mean, alpha), alpha)
    assert miss <= _max_miss(alpha), f"{name}: excluded the true mean at some n in {miss:.4f}"


def _layouts(rng: np.random.Generator, d_max: int, rate_of_den) -> tuple[np.ndarray, np.ndarray,
                                                                         float]:
    den = rng.integers(0, d_max + 1, (REPS, N))
    num = rng.binomial(den, rate_of_den(den))
    d = np.arange(d_max + 1)
    true = float((d * rate_of_den(d)).sum() / d.sum())   # E[num] / E[den], den uniform
    return num, den, true


@pytest.mark.parametrize("alpha", [0.05, 0.1])
@pytest.mark.parametrize("kind", ["constant", "depends-on-den"])
def test_ratio_miscoverage_under_optional_stopping(kind: str, alpha: float) -> None:
    """Layouts with 0..8 scorable boxes; a box matches with rate p (or a rate falling with den,
    so the ratio of sums differs from the mean of per-layout rates)."""
    rng = np.random.default_rng(99 if kind == "constant" else 100)
    rate = ((lambda d: np.full(np.shape(d), 0.6)) if kind == "constant"
            else (lambda d: 0.9 - 0.08 * np.asarray(d)))
    num, den, true = _layouts(rng, 8, rate)
    y, m0 = ratio_unit_values(num, den, true, 0.0, 1.0, 8)
    miss = _ever_excluded(capital_at(y, float(m0), alpha), alpha)
    assert miss <= _max_miss(alpha), f"{kind}: excluded the true ratio at some n in {miss:.4f}"
    mean_of_rates = float(np.mean(rate(np.arange(1, 9))))
    assert kind == "constant" or abs(mean_of_rates - true) > 0.05   # the cases differ


@pytest.mark.parametrize("grid", [21, 201])
def test_grid_bounds_contain_every_mean_the_capital_keeps(grid: int) -> None:
    """Where the capital at the true mean never rejects, the grid bounds contain it at every n
    (that is the one-step widening; a coarse grid would catch bounds that drop it)."""
    rng = np.random.default_rng(grid)
    mean = 0.4137
    x = rng.beta(2.0, 2.0 * (1 - mean) / mean, (30, 200))
    kept_all = capital_at(x, mean, 0.05).max(axis=1) < math.log(20.0)
    assert kept_all.sum() >= 25
    for row in np.flatnonzero(kept_all):
        b = mean_sequence(x[row], 0.05, grid=grid)
        assert (b.lower <= mean).all() and (b.upper >= mean).all(), row
    num, den, true = _layouts(rng, 5, lambda d: np.full(np.shape(d), 0.4137))
    y, m0 = ratio_unit_values(num[:30, :200], den[:30, :200], true, 0.0, 1.0, 5)
    kept_all = capital_at(y, float(m0), 0.05).max(axis=1) < math.log(20.0)
    for row in np.flatnonzero(kept_all):
        b = ratio_sequence(num[row, :200], den[row, :200], 0.05, 0.0, 1.0, 5, grid=grid)
        assert (b.lower <= true).all() and (b.upper >= true).all(), row


# --- power: the gate decides early when the truth is far from the threshold --------------------
def _first_decision(x: np.ndarray, alpha: float, op: str, thr: float) -> tuple[int, str | None]:
    b = mean_sequence(x, alpha)
    for i in range(b.n):
        verdict = decide(float(b.lower[i]), float(b.upper[i]), op, thr)
        if verdict is not None:
            return i + 1, verdict
    return b.n + 1, None


def test_power_low_rate_fails_early() -> None:
    """Bernoulli(0.1) vs ">= 0.6" at alpha 0.05/4: fail at a median n of about 12, nearly always
    well before n = 24; an all-miss run needs exactly 10 (the capital at 0.6 grows x1.75 a step
    under the C/(1-m) = 1.25 cap and must reach 2/alpha = 160)."""
    alpha = split_alpha(0.05, 4)
    first = []
    for seed in range(100):
        x = (np.random.default_rng(seed).random(40) < 0.1).astype(float)
        n, verdict = _first_decision(x, alpha, ">=", 0.6)
        assert verdict == "fail", f"seed {seed}: decided {verdict} at n={n}"
        first.append(n)
    ns = np.asarray(first)
    summary = f"decision n: median {np.median(ns)}, 90% {np.percentile(ns, 90)}, max {ns.max()}"
    assert np.median(ns) <= 14 and np.percentile(ns, 90) <= 18, summary
    assert (ns < 24).mean() >= 0.95, summary
    assert _first_decision(np.zeros(40), alpha, ">=", 0.6) == (10, "fail")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_power_high_rate_passes(seed: int) -> None:
    x = (np.random.default_rng(seed).random(200) < 0.95).astype(float)
    n, verdict = _first_decision(x, split_alpha(0.05, 4), ">=", 0.6)
    assert verdict == "pass", f"decided {verdict} at n={n}"
    n_lt, verdict_lt = _first_decision(x, split_alpha(0.05, 4), "<", 0.6)
    assert (n_lt, verdict_lt) == (n, "fail")


# --- shape of the bounds ------------------------------------------------------------------------
@pytest.mark.parametrize("case", ["bernoulli", "beta-scaled"])
def test_bounds_nested_in_range_and_around_sample_mean(case: str) -> None:
    rng = np.random.default_rng(11)
    lo, hi = (0.0, 1.0) if case == "bernoulli" else (-1.0, 3.0)
    x = ((rng.random(300) < 0.3).astype(float) if case == "bernoulli"
         else lo + (hi - lo) * rng.beta(2.0, 5.0, 300))
    b = mean_sequence(x, 0.05, low=lo, high=hi)
    assert isinstance(b, Bounds) and b.n == 300 and b.lower.shape == b.upper.shape == (300,)
    assert (np.diff(b.lower) >= 0).all() and (np.diff(b.upper) <= 0).all()
    assert (b.lower >= lo).all() and (b.upper <= hi).all() and (b.lower <= b.upper).all()
    running = np.cumsum(x) / np.arange(1, 301)
    assert ((b.lower <= running) & (running <= b.upper)).all()
    assert b.upper[-1] - b.lower[-1] < 0.25 * (hi - lo)          # it does shrink
    assert b.at_end() == (float(b.lower[-1]), float(b.upper[-1]))
    again = mean_sequence(x.copy(), 0.05, low=lo, high=hi)
    np.testing.assert_array_equal(again.lower, b.lower)
    np.testing.assert_array_equal(again.upper, b.upper)


def test_denominator_zero_units_carry_no_information() -> None:
    num, den = np.asarray([2.0, 0.0, 3.0, 0.0, 0.0, 1.0]), np.asarray([3.0, 0.0, 4.0, 0, 0, 2])
    for r in (0.1, 0.5, 0.8):
        y, m0 = ratio_unit_values(num, den, r, 0.0, 1.0, 4)
        cap = capital_at(y[None, :], float(m0), 0.05)[0]
        for i in np.flatnonzero(den == 0):
            assert y[i] == m0 and cap[i] == pytest.approx(cap[i - 1], abs=1e-15)
    b = ratio_sequence(np.zeros(50), np.zeros(50), 0.05, 0.0, 1.0, 4, grid=101)
    assert b.n == 50 and (b.lower == 0.0).all() and (b.upper == 1.0).all()


def test_endpoint_means_are_finite() -> None:
    zeros, ones = np.zeros((1, 30)), np.ones((1, 30))
    np.testing.assert_allclose(capital_at(zeros, 0.0, 0.05), math.log(0.5))
    np.testing.assert_allclose(capital_at(ones, 1.0, 0.05), math.log(0.5))
    assert np.isfinite(capital_at(ones, 0.0, 0.05)).all()
    assert mean_sequence(np.zeros(40), 0.05).lower[-1] == 0.0


# --- decide / split_alpha -----------------------------------------------------------------------
@pytest.mark.parametrize("lo,hi,op,thr,want", [
    (0.61, 0.9, ">", 0.6, "pass"), (0.6, 0.9, ">", 0.6, None), (0.2, 0.6, ">", 0.6, "fail"),
    (0.2, 0.61, ">", 0.6, None),
    (0.6, 0.9, ">=", 0.6, "pass"), (0.59, 0.9, ">=", 0.6, None), (0.2, 0.6, ">=", 0.6, None),
    (0.2, 0.59, ">=", 0.6, "fail"),
    (0.2, 0.59, "<", 0.6, "pass"), (0.2, 0.6, "<", 0.6, None), (0.6, 0.9, "<", 0.6, "fail"),
    (0.59, 0.9, "<", 0.6, None),
    (0.2, 0.6, "<=", 0.6, "pass"), (0.2, 0.61, "<=", 0.6, None), (0.6, 0.9, "<=", 0.6, None),
    (0.61, 0.9, "<=", 0.6, "fail"),
    (0.6, 0.6, ">", 0.6, "fail"), (0.6, 0.6, ">=", 0.6, "pass"),
])
def test_decide_strictness(lo: float, hi: float, op: str, thr: float, want: str | None) -> None:
    assert decide(lo, hi, op, thr) == want


def test_decide_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="op one of"):
        decide(0.1, 0.2, "==", 0.5)
    with pytest.raises(ValueError, match="lower <= upper"):
        decide(0.3, 0.2, ">", 0.5)
    with pytest.raises(ValueError, match="finite"):
        decide(float("nan"), 0.2, ">", 0.5)


def test_split_alpha() -> None:
    assert split_alpha(0.05, 1) == 0.05 and split_alpha(0.05, 4) == 0.0125
    for bad_k in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="k as an integer"):
            split_alpha(0.05, bad_k)
    with pytest.raises(ValueError, match="alpha"):
        split_alpha(1.0, 2)


# --- validation ---------------------------------------------------------------------------------
@pytest.mark.parametrize("values,kwargs,match", [
    ([0.2, 1.2], {}, r"within \[0.0, 1.0\], got 1.2 at index 1"),
    ([0.2, -0.1], {}, "at index 1"),
    ([0.2, float("nan")], {}, "finite values"),
    ([0.2, float("inf")], {}, "finite values"),
    ([0.2], {"alpha": 0.0}, r"alpha in \(0, 1\)"),
    ([0.2], {"alpha": 1.0}, r"alpha in \(0, 1\)"),
    ([0.2], {"alpha": float("nan")}, r"alpha in \(0, 1\)"),
    ([0.2], {"low": 1.0, "high": 0.0}, "low < high"),
    ([[0.2, 0.3]], {}, "1-D"),
    ([0.2], {"grid": 2}, "grid"),
])
def test_mean_sequence_validation(values, kwargs, match) -> None:
    kwargs = {"alpha": 0.05, **kwargs}
    with pytest.raises(ValueError, match=match):
        mean_sequence(np.asarray(values), **kwargs)


@pytest.mark.parametrize("num,den,kwargs,match", [
    ([1, 2], [2], {}, "one length, got 2 and 1"),
    ([3, 1], [2, 2], {}, r"value_high\*den per unit, got num=3.0 with den=2.0"),
    ([1, -1], [2, 2], {}, "value_low"),
    ([1, 1], [2, 5], {}, r"denominators within \[0, 4.0\], got 5.0 at index 1"),
    ([1, 1], [2, -1], {}, "denominators within"),
    ([1, float("nan")], [2, 2], {}, "finite numerators"),
    ([1, 1], [2, 2], {"max_denominator": 0}, "max_denominator"),
    ([1, 1], [2, 2], {"value_low": 1.0, "value_high": 1.0}, "value_low/value_high"),
    ([1, 1], [2, 2], {"alpha": -0.1}, "alpha"),
])
def test_ratio_sequence_validation(num, den, kwargs, match) -> None:
    kwargs = {"alpha": 0.05, "value_low": 0.0, "value_high": 1.0, "max_denominator": 4,
              **kwargs}
    with pytest.raises(ValueError, match=match):
        ratio_sequence(np.asarray(num, dtype=float), np.asarray(den, dtype=float), **kwargs)


def test_capital_at_validation() -> None:
    with pytest.raises(ValueError, match="2-D"):
        capital_at(np.zeros(3), 0.5, 0.05)
    with pytest.raises(ValueError, match=r"within \[0, 1\]"):
        capital_at(np.full((1, 3), 2.0), 0.5, 0.05)
    with pytest.raises(ValueError, match="one per row"):
        capital_at(np.zeros((2, 3)), np.asarray([0.1, 0.2, 0.3]), 0.05)
    with pytest.raises(ValueError, match="m within"):
        capital_at(np.zeros((1, 3)), 1.5, 0.05)


def test_no_torch_at_import() -> None:
    code = ("import sys, gatebench.metrics.confseq; "
            "sys.exit(1 if 'torch' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


# --- properties ---------------------------------------------------------------------------------
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(xs=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=40),
       alpha=st.floats(0.005, 0.5), lo=st.floats(-5.0, 5.0), width=st.floats(0.5, 10.0))
def test_property_interval_nested_and_affine(xs, alpha, lo, width) -> None:
    x = np.asarray(xs)
    grid = np.linspace(0.0, 1.0, 101)
    log_k = capital_at(np.broadcast_to(x, (101, x.size)), grid, alpha)
    kept = np.maximum.accumulate(log_k, axis=1) < math.log(1.0 / alpha)
    for t in range(x.size):   # the kept grid points form one run (the CS is an interval)
        idx = np.flatnonzero(kept[:, t])
        assert idx.size == 0 or idx[-1] - idx[0] + 1 == idx.size
    unit = mean_sequence(x, alpha, grid=101)
    hi = lo + width
    scaled = mean_sequence(np.clip(lo + width * x, lo, hi), alpha, low=lo, high=hi, grid=101)
    assert (np.diff(scaled.lower) >= 0).all() and (np.diff(scaled.upper) <= 0).all()
    assert (scaled.lower >= lo).all() and (scaled.upper <= hi).all()
    assert (scaled.lower <= scaled.upper).all()
    tol = 1e-9 * (1.0 + abs(lo) + width) + width / 100   # rounding can move one grid step
    np.testing.assert_allclose(scaled.lower, lo + width * unit.lower, atol=tol)
    np.testing.assert_allclose(scaled.upper, lo + width * unit.upper, atol=tol)
