"""Seq range sets: exact, normalised, and merged without losing or inventing a seq."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgefleet.shared.seqranges import count, covers, merge, to_ranges

seq_sets = st.sets(st.integers(min_value=0, max_value=2**63 - 1) | st.integers(0, 200))


def expand(ranges: list[tuple[int, int]]) -> set[int]:
    return {seq for lo, hi in ranges for seq in range(lo, hi + 1)}


@pytest.mark.parametrize(
    ("seqs", "ranges"),
    [
        ([], []),
        ([5], [(5, 5)]),
        ([3, 1, 2], [(1, 3)]),
        ([1, 2, 4, 5, 9], [(1, 2), (4, 5), (9, 9)]),
        ([7, 7, 7], [(7, 7)]),
    ],
)
def test_seqs_become_the_fewest_ranges(seqs: list[int], ranges: list[tuple[int, int]]) -> None:
    assert to_ranges(seqs) == ranges


@given(seq_sets.filter(lambda s: max(s, default=0) < 10_000))
def test_ranges_hold_exactly_the_seqs(seqs: set[int]) -> None:
    ranges = to_ranges(seqs)
    assert expand(ranges) == seqs
    assert count(ranges) == len(seqs)
    assert all(lo <= hi for lo, hi in ranges)
    assert all(a[1] + 1 < b[0] for a, b in itertools.pairwise(ranges))  # sorted, apart


@given(seq_sets, st.integers(min_value=0, max_value=2**63 - 1) | st.integers(0, 200))
def test_covers_is_membership(seqs: set[int], probe: int) -> None:
    ranges = to_ranges(seqs)
    assert covers(ranges, probe) == (probe in seqs)
    for seq in seqs:
        assert covers(ranges, seq)


@given(st.lists(st.sets(st.integers(0, 300)), max_size=4))
def test_merging_acknowledgements_is_their_union(parts: list[set[int]]) -> None:
    # What several replicas acknowledged, in any order and overlapping: nothing is lost,
    # nothing is added, and the result is normalised.
    merged = merge(*(to_ranges(p) for p in reversed(parts)))
    union = set().union(*parts)
    assert merged == to_ranges(union)
    assert merge([(1, 5), (3, 9)], [(10, 10)], [(20, 30), (0, 0)]) == [(0, 10), (20, 30)]
