"""Drift statistics on binned counts: a window's counts against the reference's.

Both sides are counts in the same bins (`edgefleet.shared.drift.binning`), so every statistic
here is a function of two count vectors (plus the edges for Wasserstein). Approximations
and their bounds, for a window and a reference binned from raw samples:

- binned KS evaluates the two empirical CDFs at the bin edges only, so it never
  exceeds the raw two-sample KS statistic ``D`` and falls short of it by at most the
  largest single-bin mass, ``max_i max(p_i, q_i)`` (about ``1 / n_bins`` for quantile
  bins while the window looks like the reference);
- binned Wasserstein-1 moves each bin's mass to the bin's midpoint (under/overflow:
  midway between the edge and the observed min/max), so it is within
  ``sum_i (p_i + q_i) * width_i / 2`` of the raw W1;
- PSI replaces an empty bin's proportion by ``PSI_EPSILON`` (1e-4, as Evidently does):
  without it one empty bin makes PSI infinite.
- Jensen-Shannon distance uses base 2, so it lies in [0, 1], and needs no epsilon.
- chi-square is the two-sample (homogeneity) test on the 2xB table of reference and
  window counts, bins empty on both sides dropped; its p-value comes from
  `edgefleet.shared.drift.special.chi2_sf`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
from numpy.typing import NDArray
from pydantic import Field

from edgefleet.shared.drift.base import DriftModel, SketchMismatchError
from edgefleet.shared.drift.profile import CategoricalFeature, NumericFeature
from edgefleet.shared.drift.special import chi2_sf, kolmogorov_sf
from edgefleet.shared.drift.window import CategoricalCounts, NumericCounts
from edgefleet.shared.replace import replace

PSI_EPSILON = 1e-4

Counts = Sequence[int] | NDArray[np.int64]


def _proportions(counts: Counts) -> NDArray[np.float64]:
    array = np.asarray(counts, dtype=np.float64)
    total = array.sum()
    return array / total if total > 0 else array


def psi(reference: Counts, window: Counts, *, epsilon: float = PSI_EPSILON) -> float:
    """Population stability index, ``sum (q - p) ln(q / p)``, empty bins at ``epsilon``."""
    p = np.maximum(_proportions(reference), epsilon)
    q = np.maximum(_proportions(window), epsilon)
    return float(np.sum((q - p) * np.log(q / p)))


def js_distance(reference: Counts, window: Counts) -> float:
    """Jensen-Shannon distance (square root of the divergence), base 2, in [0, 1]."""
    p, q = _proportions(reference), _proportions(window)
    m = (p + q) / 2.0

    def kl(a: NDArray[np.float64]) -> float:
        nz = a > 0
        return float(np.sum(a[nz] * np.log2(a[nz] / m[nz])))

    return math.sqrt(max(0.0, (kl(p) + kl(q)) / 2.0))


def ks_statistic(reference: Counts, window: Counts) -> float:
    """Largest gap between the two binned CDFs (ordered bins only)."""
    p, q = _proportions(reference), _proportions(window)
    return float(np.max(np.abs(np.cumsum(p) - np.cumsum(q)), initial=0.0))


def ks_pvalue(statistic: float, n_reference: int, n_window: int) -> float:
    """Asymptotic two-sample KS p-value, ``kolmogorov_sf(sqrt(n m / (n + m)) D)``.

    With a binned statistic (never above the raw one) this is conservative.
    """
    if n_reference == 0 or n_window == 0:
        return 1.0
    effective = n_reference * n_window / (n_reference + n_window)
    return kolmogorov_sf(math.sqrt(effective) * statistic)


def chi_square(reference: Counts, window: Counts) -> tuple[float, int, float]:
    """Two-sample chi-square homogeneity test: (statistic, degrees of freedom, p-value)."""
    table = np.vstack(
        [np.asarray(reference, dtype=np.float64), np.asarray(window, dtype=np.float64)]
    )
    table = table[:, table.sum(axis=0) > 0]
    rows = table.sum(axis=1)
    if table.shape[1] < 2 or (rows == 0).any():
        return 0.0, 0, 1.0
    expected = np.outer(rows, table.sum(axis=0)) / table.sum()
    statistic = float(np.sum((table - expected) ** 2 / expected))
    dof = table.shape[1] - 1
    return statistic, dof, chi2_sf(statistic, dof)


def support_points(
    edges: Sequence[float], low: float | None, high: float | None
) -> NDArray[np.float64]:
    """Where `wasserstein` places each bin's mass: midpoints; under/overflow see module doc."""
    e = np.asarray(edges, dtype=np.float64)
    lo = e[0] if low is None else min(low, e[0])
    hi = e[-1] if high is None else max(high, e[-1])
    middle = (e[:-1] + e[1:]) / 2.0
    return np.concatenate([[(lo + e[0]) / 2.0], middle, [(e[-1] + hi) / 2.0]])


def wasserstein(points: NDArray[np.float64], reference: Counts, window: Counts) -> float:
    """W1 between the two binned distributions with mass at ``points`` (increasing)."""
    p, q = _proportions(reference), _proportions(window)
    gaps = np.diff(points)
    return float(np.sum(np.abs(np.cumsum(p) - np.cumsum(q))[:-1] * gaps))


class FeatureScores(DriftModel):
    """Every statistic of one feature's window against its reference (None = n/a)."""

    name: str
    role: Literal["input", "output"]
    kind: Literal["numeric", "categorical"]
    count: int = Field(description="window values present (not missing)")
    reference_count: int
    missing_rate: float
    reference_missing_rate: float
    psi: float | None = None
    js: float | None = None
    chi2: float | None = None
    chi2_dof: int | None = None
    chi2_pvalue: float | None = None
    ks: float | None = None
    ks_pvalue: float | None = None
    wasserstein: float | None = None
    wasserstein_norm: float | None = Field(
        default=None, description="W1 in units of the reference standard deviation"
    )
    mean: float | None = None
    reference_mean: float | None = None


def _rate(missing: int, present: int) -> float:
    return missing / (missing + present) if missing + present else 0.0


def feature_scores(
    reference: NumericFeature | CategoricalFeature,
    window: NumericCounts | CategoricalCounts,
    role: Literal["input", "output"],
) -> FeatureScores:
    """All statistics of ``window`` against ``reference``.

    Raises `SketchMismatchError` if the window's bins do not match the reference's.
    """
    if reference.kind != window.kind or len(window.counts) != reference.n_bins:
        raise SketchMismatchError(
            f"{role} {reference.name!r}: expected {reference.kind} counts in "
            f"{reference.n_bins} bins, got {window.kind} in {len(window.counts)}"
        )
    ref_present = int(sum(reference.counts))
    present = int(sum(window.counts))
    base = FeatureScores(
        name=reference.name,
        role=role,
        kind=reference.kind,
        count=present,
        reference_count=ref_present,
        missing_rate=_rate(window.missing, present),
        reference_missing_rate=_rate(reference.missing, ref_present),
    )
    if present == 0 or ref_present == 0:
        return base
    statistic, dof, pvalue = chi_square(reference.counts, window.counts)
    update: dict[str, float | int | None] = {
        "psi": psi(reference.counts, window.counts),
        "js": js_distance(reference.counts, window.counts),
        "chi2": statistic,
        "chi2_dof": dof,
        "chi2_pvalue": pvalue,
    }
    if isinstance(reference, NumericFeature) and isinstance(window, NumericCounts):
        ks = ks_statistic(reference.counts, window.counts)
        points = support_points(
            reference.edges,
            min(reference.min, window.min) if window.min is not None else reference.min,
            max(reference.max, window.max) if window.max is not None else reference.max,
        )
        w1 = wasserstein(points, reference.counts, window.counts)
        update |= {
            "ks": ks,
            "ks_pvalue": ks_pvalue(ks, ref_present, present),
            "wasserstein": w1,
            "wasserstein_norm": w1 / reference.std if reference.std > 0 else None,
            "mean": window.mean if window.count else None,
            "reference_mean": reference.mean,
        }
    return replace(base, **update)
