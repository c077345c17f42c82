"""Bin edges and the value→bin rule shared by profiles, windows and statistics.

A numeric feature with edges ``e[0] < e[1] < ... < e[m]`` has ``m + 2`` bins:

- bin ``0``: underflow, ``x < e[0]`` (including ``-inf``);
- bin ``i`` for ``1 <= i <= m``: ``e[i-1] <= x < e[i]``;
- bin ``m + 1``: overflow, ``x >= e[m]`` (including ``+inf``).

`quantile_edges` puts ``e[0]`` at the reference minimum and ``e[m]`` one float above the
reference maximum, so every reference value lands in an interior bin and the reference's
under- and overflow counts are zero. ``np.searchsorted(edges, x, side="right")`` is then
exactly the bin index. NaN is never binned: callers count it as missing.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from edgefleet.shared.drift.base import ProfileError

Floats = NDArray[np.float64]


def quantile_edges(values: Floats, n_bins: int) -> list[float]:
    """Edges at the reference quantiles of finite ``values``, deduplicated.

    When the data has at most ``n_bins`` distinct values (discrete data), each distinct
    value gets its own bin instead, so a shift between two adjacent values still shows.
    Raises `ProfileError` if ``values`` has no finite element or ``n_bins < 1``.
    """
    if n_bins < 1:
        raise ProfileError(f"n_bins must be at least 1, got {n_bins}")
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        raise ProfileError("no finite values to place bin edges on")
    distinct = np.unique(finite)
    if distinct.size <= n_bins:
        inner = distinct
    else:
        inner = np.unique(np.quantile(finite, np.linspace(0.0, 1.0, n_bins + 1)))
    top = np.nextafter(inner[-1], np.inf)
    if distinct.size <= n_bins:
        edges = np.append(inner, top)
    else:
        # The last quantile is the maximum: nudge it up so the maximum is inside.
        edges = inner.copy()
        edges[-1] = top
    return [float(e) for e in edges]


def bin_index(edges: Floats, values: Floats) -> NDArray[np.intp]:
    """The bin of each non-NaN value under the module's rule (0 = underflow)."""
    return np.searchsorted(edges, values, side="right")
