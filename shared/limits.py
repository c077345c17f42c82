"""Limits every side shares: the one definition of the largest integer the fleet stores.

Every integer that reaches the fleet's database lands in a signed 64-bit (BIGINT)
column; SQLite raises `OverflowError` and PostgreSQL an error past it, so wire messages,
drift documents, desired states and REST parameters all bound their integers by it.
"""

from __future__ import annotations

from typing import Final

MAX_INT64: Final = 2**63 - 1
