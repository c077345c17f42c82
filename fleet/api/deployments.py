"""``/v1/devices/{id}/desired`` and ``/v1/devices/{id}/deployments``.

``PUT .../desired`` assigns a published model version to one device through the director
(signed, sequenced, published retained); ``GET .../deployments`` shows what the device
reported doing about each desired state.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path
from pydantic import BaseModel, ConfigDict, Field

from edgefleet.fleet import deployments
from edgefleet.fleet.api.deps import Caller, SessionDep, require
from edgefleet.fleet.api.update_deps import UpdatesDep
from edgefleet.fleet.governance.permissions import Permission
from edgefleet.fleet.store.tables import Device
from edgefleet.shared.manifest import NAME_PATTERN
from edgefleet.shared.signing.director import SignedDesiredState
from edgefleet.shared.topics import DEVICE_ID_PATTERN

router = APIRouter(prefix="/v1/devices", tags=["deployments"])

DeviceReader = Annotated[Caller, Depends(require(Permission.DEVICE_READ))]
DeviceWriter = Annotated[Caller, Depends(require(Permission.DEVICE_WRITE))]
DeviceId = Annotated[str, Path(pattern=DEVICE_ID_PATTERN, description="the device's id")]


class DesiredRequest(BaseModel):
    """Which published model version a device should run."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str = Field(pattern=NAME_PATTERN, description="model name")
    version: str = Field(min_length=1, max_length=100)
    rollback: bool = Field(
        default=False, description="allow a downgrade: the device refuses one otherwise"
    )
    rollout_id: str | None = Field(default=None, max_length=100)
    expires_in_s: int | None = Field(
        default=None, ge=60, le=366 * 24 * 3600, description="default: the fleet's setting"
    )


@router.put("/{device_id}/desired", response_model=SignedDesiredState)
def put_desired(
    device_id: DeviceId,
    request: DesiredRequest,
    updates: UpdatesDep,
    session: SessionDep,
    caller: DeviceWriter,
) -> SignedDesiredState:
    """Sign and publish a new desired state: 404 unknown version, 409 not published,
    retired or rejected, 403 for a device or model outside the caller's scope, 503 if
    signed updates are off or the broker does not acknowledge."""
    device = session.get(Device, device_id)
    caller.principal.require(
        Permission.DEVICE_WRITE,
        device_tags=list(device.tags) if device is not None else [],
        model=request.model,
        what=f"device {device_id!r} and model {request.model!r}",
    )
    director = updates.require_director()
    target = updates.registry.published_target(request.model, request.version)
    updates.registry.require_deployable(request.model, request.version)
    return director.assign(
        device_id,
        target,
        rollout_id=request.rollout_id,
        rollback=request.rollback,
        expires_in_s=request.expires_in_s,
        audit=caller.record("device.desired.put", "device", device_id),
    )


@router.get("/{device_id}/desired", response_model=SignedDesiredState)
def get_desired(
    device_id: DeviceId, updates: UpdatesDep, _caller: DeviceReader
) -> SignedDesiredState:
    """The device's current signed desired state; 404 if it has none."""
    return updates.require_director().current(device_id)


@router.get("/{device_id}/deployments", response_model=deployments.DeviceDeployments)
def get_deployments(
    device_id: DeviceId, session: SessionDep, _caller: DeviceReader
) -> deployments.DeviceDeployments:
    """The device's deployments, newest first, from the events it reported."""
    return deployments.load(session, device_id)
