"""Bounds of the query parameters several routes share.

Every integer the API takes is stored or compared in the database as a signed 64-bit
integer (SQLite raises `OverflowError` past it), so none may exceed `MAX_INT64`.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Query

from edgefleet.shared.limits import MAX_INT64

Offset = Annotated[int, Query(ge=0, le=MAX_INT64, description="items to skip")]
AfterId = Annotated[int, Query(ge=0, le=MAX_INT64, description="the last id already seen")]
