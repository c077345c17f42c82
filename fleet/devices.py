"""Device registry queries: list with filters, get one, its telemetry over a time range.

A device is shown online only if its last state said so *and* it was heard from within
``offline_after_s``: a will covers a dropped connection, the silence rule covers an agent
that hangs while its TCP connection stays up.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel
from sqlalchemy import ColumnElement, and_, exists, func, literal, not_, true
from sqlalchemy import select as sa_select
from sqlalchemy.dialects.postgresql import JSONB
from sqlmodel import Session, col, select

from edgefleet.fleet.errors import InvalidRequestError, NotFoundError
from edgefleet.fleet.store.tables import Device, DevicePublic, TelemetryPublic, TelemetryRow
from edgefleet.fleet.store.types import as_utc
from edgefleet.shared.replace import replace


class DeviceFilter(BaseModel):
    """Which devices to list."""

    tag: str | None = None
    online: bool | None = None
    hardware: str | None = None


class DevicePage(BaseModel):
    """One page of devices, with the total that match the filter."""

    items: list[DevicePublic]
    total: int
    limit: int
    offset: int


class TelemetryPage(BaseModel):
    """A device's telemetry in a time range, oldest first."""

    device_id: str
    items: list[TelemetryPublic]


def list_devices(
    session: Session,
    filters: DeviceFilter,
    *,
    limit: int,
    offset: int,
    now: datetime,
    offline_after_s: float,
) -> DevicePage:
    """Devices matching ``filters``, ordered by id."""
    cutoff = now - timedelta(seconds=offline_after_s)
    conditions: list[ColumnElement[bool]] = []
    if filters.hardware is not None:
        conditions.append(col(Device.hardware) == filters.hardware)
    if filters.tag is not None:
        conditions.append(_has_tag(session, filters.tag))
    if filters.online is not None:
        fresh = and_(col(Device.online).is_(True), col(Device.last_seen) >= cutoff)
        conditions.append(fresh if filters.online else not_(fresh))
    where = and_(true(), *conditions)
    total = session.scalar(sa_select(func.count()).select_from(Device).where(where)) or 0
    rows = session.exec(
        select(Device).where(where).order_by(col(Device.device_id)).limit(limit).offset(offset)
    ).all()
    items = [_public(row, cutoff) for row in rows]
    return DevicePage(items=items, total=total, limit=limit, offset=offset)


def get_device(
    session: Session, device_id: str, *, now: datetime, offline_after_s: float
) -> DevicePublic:
    """One device; raises `NotFoundError` if it was never seen."""
    device = session.get(Device, device_id)
    if device is None:
        raise NotFoundError(f"device {device_id!r} has never been seen by this fleet")
    return _public(device, now - timedelta(seconds=offline_after_s))


def device_telemetry(
    session: Session,
    device_id: str,
    *,
    since: datetime | None,
    until: datetime | None,
    limit: int,
) -> TelemetryPage:
    """The device's newest ``limit`` reports with ``since <= ts < until``, oldest first.

    Raises `NotFoundError` for an unknown device, `InvalidRequestError` if since >= until.
    """
    if since is not None and until is not None and as_utc(since) >= as_utc(until):
        raise InvalidRequestError(
            f"since ({since.isoformat()}) must be before until ({until.isoformat()})"
        )
    if session.get(Device, device_id) is None:
        raise NotFoundError(f"device {device_id!r} has never been seen by this fleet")
    query = select(TelemetryRow).where(col(TelemetryRow.device_id) == device_id)
    if since is not None:
        query = query.where(col(TelemetryRow.ts) >= since)
    if until is not None:
        query = query.where(col(TelemetryRow.ts) < until)
    rows = session.exec(query.order_by(col(TelemetryRow.ts).desc()).limit(limit)).all()
    items = [TelemetryPublic.model_validate(row, from_attributes=True) for row in reversed(rows)]
    return TelemetryPage(device_id=device_id, items=items)


def _public(device: Device, cutoff: datetime) -> DevicePublic:
    public = DevicePublic.model_validate(device, from_attributes=True)
    fresh = device.last_seen is not None and as_utc(device.last_seen) >= cutoff
    return replace(public, online=device.online and fresh)


def _has_tag(session: Session, tag: str) -> ColumnElement[bool]:
    tags: Any = col(Device.tags)
    if session.get_bind().dialect.name == "postgresql":
        return tags.cast(JSONB).contains([tag])  # type: ignore[no-any-return]
    each = func.json_each(tags).table_valued("value")
    return exists(sa_select(literal(1)).select_from(each).where(each.c.value == tag))
