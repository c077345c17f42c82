"""Two survival functions in pure Python, so neither agent nor fleet needs scipy.

- `chi2_sf`: the regularised upper incomplete gamma ``Q(k/2, x/2)``, by its power
  series below ``a + 1`` and by Lentz's continued fraction above (Numerical Recipes,
  §6.2); relative accuracy about 1e-12 against ``scipy.stats.chi2.sf``.
- `kolmogorov_sf`: the limiting distribution of ``sqrt(n) * D`` for the KS statistic,
  by the two classical series (each used where it converges in a few terms).
"""

from __future__ import annotations

import math

_EPS = 1e-15
_TINY = 1e-300
_MAX_TERMS = 10_000


def _log_prefactor(a: float, x: float) -> float:
    return -x + a * math.log(x) - math.lgamma(a)


def _lower_series(a: float, x: float) -> float:
    term = total = 1.0 / a
    denominator = a
    for _ in range(_MAX_TERMS):
        denominator += 1.0
        term *= x / denominator
        total += term
        if abs(term) < abs(total) * _EPS:
            break
    return total * math.exp(_log_prefactor(a, x))


def _upper_fraction(a: float, x: float) -> float:
    b = x + 1.0 - a
    c = 1.0 / _TINY
    d = 1.0 / b
    h = d
    for i in range(1, _MAX_TERMS):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        d = _TINY if abs(d) < _TINY else d
        c = b + an / c
        c = _TINY if abs(c) < _TINY else c
        d = 1.0 / d
        step = d * c
        h *= step
        if abs(step - 1.0) < _EPS:
            break
    return math.exp(_log_prefactor(a, x)) * h


def chi2_sf(statistic: float, dof: int) -> float:
    """P(X >= statistic) for X chi-square with ``dof`` degrees of freedom.

    Raises `ValueError` if ``dof < 1`` or the statistic is NaN.
    """
    if dof < 1:
        raise ValueError(f"chi-square needs at least 1 degree of freedom, got {dof}")
    if math.isnan(statistic):
        raise ValueError("chi-square statistic is NaN")
    if statistic <= 0.0:
        return 1.0
    if math.isinf(statistic):
        return 0.0
    a, x = dof / 2.0, statistic / 2.0
    if x < a + 1.0:
        return max(0.0, 1.0 - _lower_series(a, x))
    return min(1.0, _upper_fraction(a, x))


def kolmogorov_sf(lam: float) -> float:
    """P(K > lam) for the Kolmogorov distribution (``scipy.special.kolmogorov``)."""
    if lam <= 0.0:
        return 1.0
    if lam < 1.0:
        # Jacobi's dual series converges fast for small lam.
        factor = math.sqrt(2.0 * math.pi) / lam
        total = 0.0
        for k in range(1, 50):
            term = math.exp(-((2 * k - 1) ** 2) * math.pi**2 / (8.0 * lam * lam))
            total += term
            if term < _EPS * total:
                break
        return min(1.0, max(0.0, 1.0 - factor * total))
    total = 0.0
    for k in range(1, 100):
        term = math.exp(-2.0 * k * k * lam * lam)
        total += term if k % 2 else -term
        if term < _EPS:
            break
    return min(1.0, max(0.0, 2.0 * total))
