"""How sure is a difference? Paired tests on the same test set, and intervals over seeds.

Two models scored on the *same* test examples are not independent: most examples are right (or wrong)
for both, and only the examples where they disagree carry information about which is better.
- McNemar's exact test: under "no difference" each discordant example is a fair coin, so the count
  of examples only A gets right is Binomial(b + c, 1/2) (McNemar 1947; Dietterich 1998).
- Paired bootstrap: resample test examples (the same ones for both models) and read the 95% interval of
  the accuracy difference off the resampled differences (Efron & Tibshirani 1993; Koehn 2004).
- Over seeds: mean, sample standard deviation and the Student-t 95% interval of the mean.
Nothing here needs SciPy; the tests check every value against it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction

import numpy as np


def _as_bool(x, name: str) -> np.ndarray:
    a = np.asarray(x)
    if a.dtype != bool and not np.isin(a, (0, 1)).all():
        raise ValueError(f"{name} must hold booleans (or 0/1): whether each test example was classified right")
    return a.astype(bool)


def _paired(a, b) -> tuple[np.ndarray, np.ndarray]:
    a, b = _as_bool(a, "correct_a"), _as_bool(b, "correct_b")
    if a.shape != b.shape or a.size == 0:
        raise ValueError(f"correct_a and correct_b must score the same non-empty test set, got shapes "
                         f"{a.shape} and {b.shape}")
    return a, b


def mcnemar(correct_a, correct_b) -> float:
    """Two-sided exact McNemar p-value: Binomial(b + c, 1/2) on the discordant pairs; 1.0 when there are none."""
    a, b = _paired(correct_a, correct_b)
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    n = only_a + only_b
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(only_a, only_b) + 1))  # exact integers: no overflow
    return float(min(Fraction(1), Fraction(2 * tail, 2**n)))


def paired_bootstrap(correct_a, correct_b, n: int = 10_000, seed: int = 0,
                     confidence: float = 0.95) -> tuple[float, float, float]:
    """(accuracy_a - accuracy_b, low, high): percentile interval over `n` resamples of the test examples.

    2-D inputs (seeds, examples) are runs over several seeds: each resample draws seeds (separately for
    a and b) and examples (the same for a and b), so the interval holds seed noise as well as test noise."""
    a, b = _paired(correct_a, correct_b)
    if a.ndim not in (1, 2):
        raise ValueError(f"expected (examples,) or (seeds, examples), got shape {a.shape}")
    if not isinstance(n, int) or n < 100:
        raise ValueError(f"n must be an int >= 100 resamples (10,000 is usual), got {n!r}")
    rng = np.random.default_rng(seed)
    a2, b2 = (a, b) if a.ndim == 2 else (a[None], b[None])  # (S, N)
    s, m = a2.shape
    diffs = np.empty(n)
    for i in range(0, n, 500):  # chunks keep the (chunk, N) index array small
        k = min(500, n - i)
        idx = rng.integers(0, m, (k, m))  # (k, N): the same examples for both models
        sa, sb = rng.integers(0, s, (k, 1)), rng.integers(0, s, (k, 1))  # (k, 1): a seed each
        diffs[i:i + k] = a2[sa, idx].mean(1) - b2[sb, idx].mean(1)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(diffs, [alpha, 1 - alpha])
    return float(a.mean() - b.mean()), float(low), float(high)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; nan for a single value)."""
    v = np.asarray(values, dtype=float)
    if v.size == 0:
        raise ValueError("no values: run at least one seed")
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else float("nan")


def _betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta I_x(a, b) by Lentz's continued fraction (Numerical Recipes 6.4)."""
    if x <= 0 or x >= 1:
        return float(x >= 1)
    if x > (a + 1) / (a + b + 2):  # the fraction converges fast only on this side
        return 1 - _betainc(b, a, 1 - x)
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log(1 - x)) / a
    tiny, d = 1e-300, 0.0
    f = c = tiny  # Lentz: f = 1 / (1 + d1 / (1 + d2 / ...)), evaluated front to back
    for i in range(400):
        m = i // 2
        if i == 0:
            num = 1.0
        elif i % 2 == 0:
            num = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
        else:
            num = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))
        d = 1 + num * d
        d = 1 / (d if abs(d) > tiny else tiny)
        c = 1 + num / c if abs(1 + num / c) > tiny else tiny
        f *= c * d
        if abs(c * d - 1) < 1e-15:
            break
    return front * f


def t_cdf(t: float, df: float) -> float:
    """Student-t cumulative distribution function."""
    if t * t < df:  # near 0: the complementary form keeps its precision
        tail = 0.5 * (1 - _betainc(0.5, df / 2, t * t / (df + t * t)))
    else:
        tail = 0.5 * _betainc(df / 2, 0.5, df / (df + t * t))  # P(T > |t|)
    return 1 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """Inverse of t_cdf by bisection (to 1e-12)."""
    if not 0 < p < 1 or df <= 0:
        raise ValueError(f"need 0 < p < 1 and df > 0, got p={p}, df={df}")
    lo, hi = -1e6, 1e6
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if t_cdf(mid, df) < p else (lo, mid)
        if hi - lo < 1e-12:
            break
    return (lo + hi) / 2


def t_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """Student-t interval of the mean over seeds: mean +- t_{(1+c)/2, n-1} * s / sqrt(n); (nan, nan) for n < 2."""
    mean, std = mean_std(values)
    n = len(values)
    if n < 2:
        return float("nan"), float("nan")
    half = t_quantile((1 + confidence) / 2, n - 1) * std / math.sqrt(n)
    return mean - half, mean + half
