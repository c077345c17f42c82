"""Range and If-Range decisions: every header a client may send, never an exception."""

from __future__ import annotations

import pytest

from edgefleet.fleet.http_range import RangePlan, plan

ETAG = '"abc"'
SIZE = 10
HUGE = "9" * 5000  # int() refuses to parse more than 4,300 digits


@pytest.mark.parametrize(
    ("range_header", "expected"),
    [
        (None, RangePlan(200, 0, 9, SIZE)),
        ("", RangePlan(200, 0, 9, SIZE)),
        ("bytes=0-4", RangePlan(206, 0, 4, SIZE)),
        ("bytes=3-", RangePlan(206, 3, 9, SIZE)),
        ("  bytes=3-3  ", RangePlan(206, 3, 3, SIZE)),
        # suffix ranges: the last N bytes, all of them if N is larger than the size
        ("bytes=-4", RangePlan(206, 6, 9, SIZE)),
        ("bytes=-10", RangePlan(206, 0, 9, SIZE)),
        ("bytes=-11", RangePlan(206, 0, 9, SIZE)),
        ("bytes=-0", RangePlan(416, 0, -1, SIZE)),
        # beyond the size: a last position is clamped, a first one is unsatisfiable
        ("bytes=5-100", RangePlan(206, 5, 9, SIZE)),
        ("bytes=10-", RangePlan(416, 0, -1, SIZE)),
        ("bytes=10-20", RangePlan(416, 0, -1, SIZE)),
        # positions of any length
        (f"bytes={HUGE}-", RangePlan(416, 0, -1, SIZE)),
        (f"bytes=0-{HUGE}", RangePlan(206, 0, 9, SIZE)),
        (f"bytes=-{HUGE}", RangePlan(206, 0, 9, SIZE)),
        (f"bytes={HUGE}-{HUGE}", RangePlan(416, 0, -1, SIZE)),
        (f"bytes=0000{'0' * 5000}2-3", RangePlan(206, 2, 3, SIZE)),
        # malformed or unsupported: ignored, the whole body (RFC 9110 §14.2)
        ("bytes=5-1", RangePlan(200, 0, 9, SIZE)),
        (f"bytes={HUGE}-1", RangePlan(200, 0, 9, SIZE)),
        ("bytes=--1", RangePlan(200, 0, 9, SIZE)),
        ("bytes=-", RangePlan(200, 0, 9, SIZE)),
        ("bytes=", RangePlan(200, 0, 9, SIZE)),
        ("items=0-1", RangePlan(200, 0, 9, SIZE)),
        ("bytes=0-1,3-4", RangePlan(200, 0, 9, SIZE)),
        ("bytes=0-1, -2", RangePlan(200, 0, 9, SIZE)),
        ("bytes=a-b", RangePlan(200, 0, 9, SIZE)),
        ("bytes=1.5-2", RangePlan(200, 0, 9, SIZE)),
        ("bytes=\u0663-", RangePlan(200, 0, 9, SIZE)),  # an Arabic-Indic 3, not ASCII
        ("bytes=0-1\n", RangePlan(206, 0, 1, SIZE)),  # stripped like other whitespace
        ("bytes=0-1\nbytes=2-3", RangePlan(200, 0, 9, SIZE)),
        ("BYTES=0-1", RangePlan(200, 0, 9, SIZE)),
    ],
)
def test_range_header_is_planned_never_raises(
    range_header: str | None, expected: RangePlan
) -> None:
    assert plan(range_header, None, ETAG, SIZE) == expected


@pytest.mark.parametrize(
    ("range_header", "status"),
    [("bytes=0-", 416), ("bytes=-1", 416), ("bytes=0-0", 416), (f"bytes=-{HUGE}", 416)],
)
def test_no_range_of_an_empty_body_is_satisfiable(range_header: str, status: int) -> None:
    assert plan(range_header, None, ETAG, 0).status == status


@pytest.mark.parametrize(
    ("if_range", "status"),
    [(ETAG, 206), (f"  {ETAG} ", 206), ('"other"', 200), ("", 200), (HUGE, 200)],
)
def test_if_range_with_another_etag_gets_the_whole_body(if_range: str, status: int) -> None:
    assert plan("bytes=0-1", if_range, ETAG, SIZE).status == status


def test_content_range_names_the_range_or_the_size() -> None:
    assert plan("bytes=2-3", None, ETAG, SIZE).content_range == "bytes 2-3/10"
    assert plan("bytes=20-", None, ETAG, SIZE).content_range == "bytes */10"
    assert plan(None, None, ETAG, SIZE).content_range is None
