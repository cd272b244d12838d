"""The statistics randomized smoothing needs, in float64 with the standard library only (adv-train depends on
torch alone): the regularized incomplete beta function, its inverse (the Beta quantile, hence the one-sided
Clopper-Pearson bound), the exact two-sided binomial test at p = 1/2 and the standard normal quantile.

Example:
    >>> round(clopper_pearson_lower(990, 1000, 0.001), 4)
    0.976
"""
from __future__ import annotations

import math
from statistics import NormalDist

_TINY = 1e-300
_EPS = 1e-15


def _beta_continued_fraction(x: float, a: float, b: float) -> float:
    """The continued fraction of I_x(a, b) (modified Lentz), convergent for x < (a + 1) / (a + b + 2)."""
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > _TINY else _TINY)
    h = d
    # the number of terms needed grows like sqrt(max(a, b)); 10^5 trials need a few hundred
    for m in range(1, 100_000):
        m2 = 2 * m
        even = m * (b - m) * x / ((qam + m2) * (a + m2))
        odd = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        for numerator in (even, odd):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > _TINY else _TINY)
            c = 1.0 + numerator / c
            c = c if abs(c) > _TINY else _TINY
            h *= d * c
        if abs(d * c - 1.0) < _EPS:
            return h
    raise ArithmeticError(f"the incomplete beta continued fraction did not converge for x={x}, a={a}, b={b}")


def betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b) = P(Beta(a, b) <= x), for a, b > 0 and x in [0, 1].

    Example:
        >>> round(betainc(2.0, 3.0, 0.5), 6)   # P(Beta(2, 3) <= 1/2) = 11/16
        0.6875
    """
    if not (a > 0 and b > 0):
        raise ValueError(f"betainc needs a > 0 and b > 0, got a={a}, b={b}")
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"betainc needs x in [0, 1], got {x}")
    if x == 0.0 or x == 1.0:
        return x
    log_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    # the fraction converges fast on the side of the mode; use the symmetry I_x(a, b) = 1 - I_{1-x}(b, a) on the other
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_continued_fraction(x, a, b) / a
    return 1.0 - math.exp(log_front) * _beta_continued_fraction(1.0 - x, b, a) / b


def beta_ppf(q: float, a: float, b: float) -> float:
    """The q-quantile of Beta(a, b): the x with I_x(a, b) = q, by bisection to 1e-15 (I_x increases in x).

    Example:
        >>> round(beta_ppf(0.5, 1.0, 1.0), 12)
        0.5
    """
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"beta_ppf needs q in [0, 1], got {q}")
    low, high = 0.0, 1.0
    while high - low > 1e-15:
        mid = 0.5 * (low + high)
        if mid in (low, high):
            break
        if betainc(a, b, mid) < q:
            low = mid
        else:
            high = mid
    return low  # the lower end: a lower confidence bound stays on the safe side of the rounding


def clopper_pearson_lower(successes: int, trials: int, alpha: float) -> float:
    """One-sided (1 - alpha) Clopper-Pearson lower bound on a binomial proportion: Beta(alpha; k, n - k + 1),
    0 when k = 0 (Cohen et al. 2019's ``lowerConfBound``, their two-sided interval at level 2 alpha).

    Example:
        >>> clopper_pearson_lower(0, 100, 0.001)
        0.0
    """
    _check_counts(successes, trials)
    if successes == 0:
        return 0.0
    return beta_ppf(alpha, successes, trials - successes + 1)


def binomial_test_half(successes: int, trials: int) -> float:
    """The exact two-sided p-value of ``successes`` in ``trials`` under Binomial(trials, 1/2).

    The distribution is symmetric, so the outcomes at most as likely as the observed one are those at least as far
    from trials / 2: p = min(1, 2 P(X >= max(k, n - k))) = min(1, 2 I_{1/2}(k', n - k' + 1)) with k' = max(k, n - k).

    Example:
        >>> round(binomial_test_half(9, 10), 6)   # 2 * (10 + 1) / 1024
        0.021484
    """
    _check_counts(successes, trials)
    if trials == 0:
        return 1.0
    far = max(successes, trials - successes)
    if 2 * far == trials:
        return 1.0
    return min(1.0, 2.0 * betainc(far, trials - far + 1, 0.5))


def normal_ppf(p: float) -> float:
    """The standard normal quantile Phi^-1(p) for p in (0, 1)."""
    return NormalDist().inv_cdf(p)


def _check_counts(successes: int, trials: int) -> None:
    if not (0 <= successes <= trials):
        raise ValueError(f"need 0 <= successes <= trials, got {successes} of {trials}")
