"""``/v1/devices``: the device registry and each device's telemetry."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query

from edgefleet.fleet.api.bounds import Offset
from edgefleet.fleet.api.deps import SessionDep, SettingsDep, require
from edgefleet.fleet.devices import (
    DeviceFilter,
    DevicePage,
    TelemetryPage,
    device_telemetry,
    get_device,
    list_devices,
)
from edgefleet.fleet.governance.permissions import Permission
from edgefleet.fleet.store.tables import DevicePublic
from edgefleet.shared.messages import utcnow
from edgefleet.shared.topics import DEVICE_ID_PATTERN

router = APIRouter(
    prefix="/v1/devices",
    tags=["devices"],
    dependencies=[Depends(require(Permission.DEVICE_READ))],
)

DeviceId = Annotated[str, Path(pattern=DEVICE_ID_PATTERN, description="the device's id")]


@router.get("", response_model=DevicePage)
def list_devices_route(
    *,
    session: SessionDep,
    settings: SettingsDep,
    tag: Annotated[str | None, Query(max_length=200)] = None,
    online: bool | None = None,
    hardware: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Offset = 0,
) -> DevicePage:
    """Devices, filtered by tag, online state and hardware, ordered by id."""
    return list_devices(
        session,
        DeviceFilter(tag=tag, online=online, hardware=hardware),
        limit=limit,
        offset=offset,
        now=utcnow(),
        offline_after_s=settings.offline_after_s,
    )


@router.get("/{device_id}", response_model=DevicePublic)
def get_device_route(
    device_id: DeviceId, session: SessionDep, settings: SettingsDep
) -> DevicePublic:
    """One device; 404 if this fleet has never heard from it."""
    return get_device(session, device_id, now=utcnow(), offline_after_s=settings.offline_after_s)


@router.get("/{device_id}/telemetry", response_model=TelemetryPage)
def device_telemetry_route(
    device_id: DeviceId,
    session: SessionDep,
    since: Annotated[datetime | None, Query(description="ISO 8601, inclusive")] = None,
    until: Annotated[datetime | None, Query(description="ISO 8601, exclusive")] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 500,
) -> TelemetryPage:
    """The device's newest ``limit`` telemetry reports in [since, until), oldest first."""
    return device_telemetry(session, device_id, since=since, until=until, limit=limit)
