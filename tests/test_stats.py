"""ftlib.stats against SciPy's reference implementations and constructed cases with known answers."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sp

from ftlib.stats import mcnemar, mean_std, paired_bootstrap, t_cdf, t_interval, t_quantile


def _pairs(both: int, only_a: int, only_b: int, neither: int) -> tuple[np.ndarray, np.ndarray]:
    a = np.array([1] * both + [1] * only_a + [0] * only_b + [0] * neither, dtype=bool)
    b = np.array([1] * both + [0] * only_a + [1] * only_b + [0] * neither, dtype=bool)
    return a, b


@pytest.mark.parametrize("only_a, only_b", [(0, 0), (0, 1), (1, 0), (3, 3), (10, 2), (2, 10), (0, 9),
                                            (25, 40), (60, 31), (300, 240)])
def test_mcnemar_equals_the_exact_binomial_test(only_a, only_b):
    a, b = _pairs(50, only_a, only_b, 20)
    n = only_a + only_b
    expected = 1.0 if n == 0 else sp.binomtest(only_a, n, 0.5).pvalue
    assert mcnemar(a, b) == pytest.approx(expected, rel=1e-12, abs=1e-300)
    assert mcnemar(b, a) == mcnemar(a, b)  # symmetric


def test_mcnemar_ignores_concordant_pairs():
    assert mcnemar(*_pairs(0, 10, 2, 0)) == mcnemar(*_pairs(900, 10, 2, 80))


def test_mcnemar_refuses_unpaired_or_non_boolean_input():
    with pytest.raises(ValueError, match="same non-empty test set"):
        mcnemar([True, False], [True])
    with pytest.raises(ValueError, match="booleans"):
        mcnemar([0.3, 1], [1, 1])


def test_bootstrap_interval_excludes_zero_for_a_clear_difference_and_covers_it_for_none():
    rng = np.random.default_rng(1)
    a = rng.random(1000) < 0.9
    b = a.copy()
    b[np.flatnonzero(a)[:150]] = False  # b loses 150 of a's right answers: a difference of 0.15
    diff, low, high = paired_bootstrap(a, b, n=2000)
    assert diff == pytest.approx(0.15)
    assert 0 < low < diff < high
    same = paired_bootstrap(a, a.copy(), n=2000)
    assert same == (0.0, 0.0, 0.0)  # identical predictions: no resample can differ
    # 6 discordant examples each way: no difference, and the interval covers 0
    c, d = _pairs(400, 6, 6, 100)
    diff, low, high = paired_bootstrap(c, d, n=2000)
    assert diff == 0 and low < 0 < high


def test_bootstrap_interval_width_matches_the_paired_standard_error():
    """With b + c discordant pairs out of N, the difference has SE sqrt(b + c - (b - c)^2 / N) / N."""
    a, b = _pairs(600, 60, 30, 310)
    n = len(a)
    se = np.sqrt(60 + 30 - 30**2 / n) / n
    diff, low, high = paired_bootstrap(a, b, n=10_000)
    assert diff == pytest.approx(30 / n)
    assert (high - low) == pytest.approx(2 * 1.96 * se, rel=0.08)


def test_bootstrap_over_seeds_is_wider_than_one_seed():
    rng = np.random.default_rng(0)
    truth = rng.random(800) < 0.85
    seeds = np.stack([truth ^ (rng.random(800) < 0.08) for _ in range(4)])  # (S, N): seed noise
    base = np.stack([truth ^ (rng.random(800) < 0.08) for _ in range(4)])
    one = paired_bootstrap(seeds[0], base[0], n=2000)
    many = paired_bootstrap(seeds, base, n=2000)
    assert many[0] == pytest.approx(seeds.mean() - base.mean())
    assert many[2] - many[1] > 0.5 * (one[2] - one[1])


def test_bootstrap_is_reproducible_by_seed():
    a, b = _pairs(100, 10, 4, 20)
    assert paired_bootstrap(a, b, seed=3) == paired_bootstrap(a, b, seed=3)


@pytest.mark.parametrize("values", [[0.81, 0.83], [0.80, 0.82, 0.79, 0.85, 0.84], [1.0, 2.0, 4.0, 8.0, 16.0, 3.0]])
def test_t_interval_equals_scipy(values):
    low, high = t_interval(values)
    ref = sp.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=sp.sem(values))
    assert (low, high) == pytest.approx(ref, rel=1e-9)
    assert mean_std(values) == pytest.approx((np.mean(values), np.std(values, ddof=1)))


@pytest.mark.parametrize("df", [1, 2, 3, 4, 9, 30, 200])
def test_t_distribution_equals_scipy(df):
    for t in (-7.5, -2.0, -0.3, 0.0, 0.4, 1.96, 12.0):
        assert t_cdf(t, df) == pytest.approx(sp.t.cdf(t, df), abs=1e-12)
    for p in (0.025, 0.5, 0.9, 0.975, 0.995):
        assert t_quantile(p, df) == pytest.approx(sp.t.ppf(p, df), rel=1e-9, abs=1e-9)


def test_one_seed_has_no_spread():
    mean, std = mean_std([0.8])
    assert mean == 0.8 and np.isnan(std)
    assert all(np.isnan(t_interval([0.8])))
    with pytest.raises(ValueError, match="at least one seed"):
        mean_std([])
