"""HTTP Range and If-Range decisions (RFC 9110 §14), pure: headers and a size in, a plan out.

Only single byte ranges are served; a multi-range or malformed header is ignored (the
whole file, 200), as the RFC allows. Positions of any length are read without
overflow: a first position past the size is unsatisfiable (416), a last one is clamped.
``If-Range`` with an ETag other than the current one also gets the whole file, so a
client resuming a download of a file that changed starts over instead of splicing two
files.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

# ASCII digits only: ``\d`` would accept other scripts' digits, which int() also reads.
_RANGE = re.compile(r"bytes=([0-9]*)-([0-9]*)")
# A position with more digits than this is past any size (and int() refuses to parse
# numbers of more than 4,300 digits): it counts as this bound instead.
_MAX_DIGITS = 20
_BEYOND_ANY_SIZE: int = 10**_MAX_DIGITS


@dataclass(frozen=True)
class RangePlan:
    """What to send: status, and the inclusive byte range ``first``..``last``."""

    status: Literal[200, 206, 416]
    first: int
    last: int  # inclusive; -1 for an empty body
    size: int

    @property
    def length(self) -> int:
        return self.last - self.first + 1

    @property
    def content_range(self) -> str | None:
        """The Content-Range header value, None for a 200."""
        if self.status == 206:
            return f"bytes {self.first}-{self.last}/{self.size}"
        if self.status == 416:
            return f"bytes */{self.size}"
        return None


def plan(range_header: str | None, if_range: str | None, etag: str, size: int) -> RangePlan:
    """Decide how to answer a GET of a ``size``-byte entity whose strong ETag is ``etag``."""
    whole = RangePlan(200, 0, size - 1, size)
    unsatisfiable = RangePlan(416, 0, -1, size)
    if not range_header or (if_range is not None and if_range.strip() != etag):
        return whole
    match = _RANGE.fullmatch(range_header.strip())
    if not match or match.group(1) == match.group(2) == "":
        return whole
    start_text, end_text = match.groups()
    if start_text == "":
        # A suffix range: the last N bytes.
        first, last = max(size - _position(end_text), 0), size - 1
        return RangePlan(206, first, last, size) if first <= last else unsatisfiable
    first = _position(start_text)
    last = min(_position(end_text), size - 1) if end_text else size - 1
    if end_text and _position(end_text) < first:
        return whole  # syntactically invalid: ignored, as the RFC says
    return RangePlan(206, first, last, size) if first < size else unsatisfiable


def _position(digits: str) -> int:
    """A byte position or suffix length, capped at `_BEYOND_ANY_SIZE`."""
    significant = digits.lstrip("0")
    if len(significant) > _MAX_DIGITS:
        return _BEYOND_ANY_SIZE
    return int(significant or "0")
