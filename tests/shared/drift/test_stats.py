"""The binned statistics agree with scipy on raw samples, within bounds the binning allows."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import special
from scipy import stats as sps
from scipy.spatial.distance import jensenshannon

from edgefleet.shared.drift import stats
from edgefleet.shared.drift.binning import bin_index, quantile_edges
from edgefleet.shared.drift.special import chi2_sf, kolmogorov_sf

counts = st.lists(st.integers(0, 500), min_size=2, max_size=15)


def _binned(edges: list[float], x: np.ndarray) -> np.ndarray:
    return np.bincount(bin_index(np.asarray(edges), x), minlength=len(edges) + 1)


@given(ref=counts, win=counts)
def test_psi_matches_the_textbook_formula_with_the_documented_epsilon(ref, win) -> None:
    n = min(len(ref), len(win))
    ref, win = ref[:n], win[:n]
    if sum(ref) == 0 or sum(win) == 0:
        return
    p = np.clip(np.array(ref) / sum(ref), 1e-4, None)
    q = np.clip(np.array(win) / sum(win), 1e-4, None)
    assert stats.psi(ref, win) == pytest.approx(float(np.sum((q - p) * np.log(q / p))), abs=1e-12)


@given(ref=counts, win=counts)
def test_js_distance_matches_scipy_base_2(ref, win) -> None:
    n = min(len(ref), len(win))
    ref, win = ref[:n], win[:n]
    if sum(ref) == 0 or sum(win) == 0:
        return
    expected = jensenshannon(np.array(ref, float), np.array(win, float), base=2)
    assert stats.js_distance(ref, win) == pytest.approx(expected, abs=1e-7)
    assert 0.0 <= stats.js_distance(ref, win) <= 1.0


def test_identical_distributions_score_zero_and_disjoint_ones_score_the_maximum() -> None:
    assert stats.psi([10, 20, 30], [1, 2, 3]) == pytest.approx(0.0)
    assert stats.js_distance([10, 0], [0, 10]) == pytest.approx(1.0)
    assert stats.ks_statistic([10, 0], [0, 10]) == pytest.approx(1.0)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31),
    shift=st.floats(-1.5, 1.5),
    scale=st.floats(0.5, 2.0),
    n_win=st.integers(20, 2000),
    n_bins=st.sampled_from([5, 10, 20]),
)
def test_binned_ks_is_within_one_bin_mass_of_scipy_ks_2samp(
    seed, shift, scale, n_win, n_bins
) -> None:
    # D is a sup over x; binning evaluates both CDFs only at the edges, so
    # D_binned <= D_raw <= D_binned + max_i max(p_i, q_i).
    rng = np.random.default_rng(seed)
    ref = rng.normal(0.0, 1.0, 1000)
    win = rng.normal(shift, scale, n_win)
    edges = quantile_edges(ref, n_bins)
    r, w = _binned(edges, ref), _binned(edges, win)
    binned = stats.ks_statistic(r, w)
    raw = sps.ks_2samp(ref, win).statistic
    slack = max((r / r.sum()).max(), (w / w.sum()).max())
    assert binned <= raw + 1e-12
    assert raw <= binned + slack + 1e-12


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31), shift=st.floats(-2, 2), n_win=st.integers(10, 1000))
def test_binned_wasserstein_is_within_half_a_bin_width_of_scipy(seed, shift, n_win) -> None:
    rng = np.random.default_rng(seed)
    ref = rng.gamma(2.0, 1.0, 800)
    win = rng.gamma(2.0, 1.0, n_win) + shift
    edges = quantile_edges(ref, 10)
    r, w = _binned(edges, ref), _binned(edges, win)
    low, high = min(ref.min(), win.min()), max(ref.max(), win.max())
    points = stats.support_points(edges, low, high)
    bounds = np.concatenate([[low], edges, [high]])
    widths = np.diff(bounds)
    bound = float(np.sum((r / r.sum() + w / w.sum()) * widths) / 2)
    raw = sps.wasserstein_distance(ref, win)
    assert abs(stats.wasserstein(points, r, w) - raw) <= bound + 1e-9


@given(ref=counts, win=counts)
def test_chi_square_matches_scipy_contingency_test(ref, win) -> None:
    n = min(len(ref), len(win))
    table = np.array([ref[:n], win[:n]])
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2 or (table.sum(axis=1) == 0).any():
        assert stats.chi_square(ref[:n], win[:n]) == (0.0, 0, 1.0)
        return
    expected = sps.chi2_contingency(table, correction=False)
    statistic, dof, pvalue = stats.chi_square(ref[:n], win[:n])
    assert statistic == pytest.approx(expected.statistic, rel=1e-9, abs=1e-9)
    assert dof == expected.dof
    assert pvalue == pytest.approx(expected.pvalue, rel=1e-8, abs=1e-300)


@pytest.mark.parametrize("dof", [1, 2, 3, 9, 30, 200, 5000])
@pytest.mark.parametrize("x", [0.001, 0.5, 3.0, 10.0, 50.0, 400.0, 6000.0])
def test_chi2_survival_function_matches_scipy_without_needing_it(dof, x) -> None:
    assert chi2_sf(x, dof) == pytest.approx(sps.chi2.sf(x, dof), rel=1e-10, abs=1e-300)


def test_chi2_survival_function_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="degree of freedom"):
        chi2_sf(1.0, 0)
    with pytest.raises(ValueError, match="NaN"):
        chi2_sf(math.nan, 3)


@pytest.mark.parametrize("lam", [0.05, 0.3, 0.8, 0.99, 1.0, 1.36, 2.0, 4.0])
def test_kolmogorov_survival_function_matches_scipy(lam) -> None:
    assert kolmogorov_sf(lam) == pytest.approx(special.kolmogorov(lam), abs=1e-12)
