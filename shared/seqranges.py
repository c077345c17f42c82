"""Sets of device seqs as sorted, disjoint, inclusive ranges. Pure.

The fleet acknowledges what it stored as ranges (`edgefleet.shared.messages.StoredMessage`):
an agent numbers its messages one by one, so the seqs of one batch are mostly runs of
consecutive numbers and a handful of ranges says what thousands of seqs would.

Invariants of what `to_ranges` returns: every range is ``(lo, hi)`` with ``lo <= hi``;
ranges are sorted and neither overlap nor touch (``hi + 1 < next lo``), so the same set
always has the same ranges.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Sequence

SeqRange = tuple[int, int]


def to_ranges(seqs: Iterable[int]) -> list[SeqRange]:
    """The smallest list of ranges that holds exactly ``seqs``."""
    out: list[SeqRange] = []
    for seq in sorted(set(seqs)):
        if out and out[-1][1] + 1 == seq:
            out[-1] = (out[-1][0], seq)
        else:
            out.append((seq, seq))
    return out


def merge(*parts: Iterable[SeqRange]) -> list[SeqRange]:
    """The union of several range lists (in any order, overlapping or not), normalised."""
    spans = sorted(span for part in parts for span in part)
    out: list[SeqRange] = []
    for lo, hi in spans:
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def covers(ranges: Sequence[SeqRange], seq: int) -> bool:
    """True if ``seq`` lies in one of ``ranges`` (normalised, as `to_ranges` makes them)."""
    i = bisect_right(ranges, seq, key=lambda span: span[0]) - 1  # the last range from <= seq
    return i >= 0 and seq <= ranges[i][1]


def count(ranges: Iterable[SeqRange]) -> int:
    """How many seqs ``ranges`` hold (normalised: no overlaps)."""
    return sum(hi - lo + 1 for lo, hi in ranges)
