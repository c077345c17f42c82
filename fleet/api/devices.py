"""``/v1/devices``: the device registry and each device's telemetry."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Response

from edgefleet.fleet.api.bounds import Offset
from edgefleet.fleet.api.deps import Caller, SessionDep, SettingsDep, require
from edgefleet.fleet.audit.log import append
from edgefleet.fleet.devices import (
    DeviceFilter,
    DevicePage,
    TelemetryPage,
    device_telemetry,
    get_device,
    list_devices,
)
from edgefleet.fleet.errors import NotFoundError
from edgefleet.fleet.governance.permissions import Permission
from edgefleet.fleet.store.tables import Device, DevicePublic
from edgefleet.shared.messages import utcnow
from edgefleet.shared.topics import DEVICE_ID_PATTERN

router = APIRouter(prefix="/v1/devices", tags=["devices"])

DeviceReader = Annotated[Caller, Depends(require(Permission.DEVICE_READ))]
DeviceDeleter = Annotated[Caller, Depends(require(Permission.DEVICE_DELETE))]

DeviceId = Annotated[str, Path(pattern=DEVICE_ID_PATTERN, description="the device's id")]


@router.get("", response_model=DevicePage)
def list_devices_route(
    *,
    session: SessionDep,
    settings: SettingsDep,
    _caller: DeviceReader,
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
    device_id: DeviceId, session: SessionDep, settings: SettingsDep, _caller: DeviceReader
) -> DevicePublic:
    """One device; 404 if this fleet has never heard from it."""
    return get_device(session, device_id, now=utcnow(), offline_after_s=settings.offline_after_s)


@router.get("/{device_id}/telemetry", response_model=TelemetryPage)
def device_telemetry_route(
    device_id: DeviceId,
    session: SessionDep,
    _caller: DeviceReader,
    since: Annotated[datetime | None, Query(description="ISO 8601, inclusive")] = None,
    until: Annotated[datetime | None, Query(description="ISO 8601, exclusive")] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 500,
) -> TelemetryPage:
    """The device's newest ``limit`` telemetry reports in [since, until), oldest first."""
    return device_telemetry(session, device_id, since=since, until=until, limit=limit)


@router.delete("/{device_id}", status_code=204)
def delete_device_route(
    device_id: DeviceId, session: SessionDep, caller: DeviceDeleter
) -> Response:
    """Remove a device from the registry (its telemetry and history stay); 404 if unknown,
    403 for a device outside the caller's scope. A device still running reports its state
    again and reappears: stop or revoke it first."""
    device = session.get(Device, device_id)
    if device is None:
        raise NotFoundError(f"device {device_id!r} is not in the registry")
    caller.principal.require(
        Permission.DEVICE_DELETE, device_tags=list(device.tags), what=f"device {device_id!r}"
    )
    before = {"tags": list(device.tags), "hardware": device.hardware, "model": device.model_name}
    session.delete(device)
    append(session, caller.record("device.delete", "device", device_id, before=before))
    session.commit()
    return Response(status_code=204)
