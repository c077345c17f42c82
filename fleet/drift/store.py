"""The drift package's tables and the queries over them (and over ``drift_window``).

Invariants:
- a reference profile is stored per (model name, version) and its ``profile_id`` is
  the profile's content hash (checked on the way in), so windows are only ever compared
  with the profile whose bins they were counted in;
- an alert row is written before it is published or posted anywhere, so a broker or
  webhook outage never loses an alert, and the cool-down reads the same rows;
- a webhook delivery row records every attempt (time, status code or error) as it
  happens.

Importing this module registers the tables on ``SQLModel.metadata``.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import ValidationError
from sqlalchemy import BigInteger, Index, Text
from sqlmodel import Field, Session, SQLModel, col, select

from edgefleet.fleet.drift.rollup import SliceFilter, WindowRecord
from edgefleet.fleet.errors import InvalidRequestError, NotFoundError
from edgefleet.fleet.store.tables import Device, DriftWindowRow
from edgefleet.fleet.store.types import PortableJSON, UTCDateTime
from edgefleet.shared.drift import DriftThresholds, ReferenceProfile, WindowSketch
from edgefleet.shared.messages import utcnow


class ReferenceProfileRow(SQLModel, table=True):
    """The reference profile of one model version (from its package's manifest)."""

    __tablename__ = "drift_reference_profile"

    model_name: str = Field(primary_key=True, max_length=100)
    model_version: str = Field(primary_key=True, max_length=100)
    profile_id: str = Field(max_length=64)
    profile: dict[str, Any] = Field(default_factory=dict, sa_type=PortableJSON)
    registered_at: datetime = Field(sa_type=UTCDateTime)


class DriftThresholdsRow(SQLModel, table=True):
    """A model's threshold overrides (all its versions); absent means library defaults."""

    __tablename__ = "drift_thresholds"

    model_name: str = Field(primary_key=True, max_length=100)
    thresholds: dict[str, Any] = Field(default_factory=dict, sa_type=PortableJSON)
    updated_at: datetime = Field(sa_type=UTCDateTime)
    updated_by: str = Field(default="", max_length=100)


class DriftAlertBase(SQLModel):
    """An alert as clients see it."""

    id: str = Field(primary_key=True, max_length=32)
    kind: str = Field(max_length=32)
    severity: str = Field(max_length=16)
    model_name: str = Field(max_length=100)
    model_version: str = Field(max_length=100)
    slice_key: str = Field(max_length=300, description="e.g. 'fleet', 'device:d1', 'tag:lab'")
    slice: dict[str, Any] = Field(default_factory=dict, sa_type=PortableJSON)
    message: str = Field(sa_type=Text)
    evidence: dict[str, Any] = Field(default_factory=dict, sa_type=PortableJSON)
    created_at: datetime = Field(sa_type=UTCDateTime)
    published: bool = Field(default=False, description="acknowledged by the MQTT broker")


class DriftAlert(DriftAlertBase, table=True):
    """One alert raised by the drift monitor."""

    __tablename__ = "drift_alert"
    __table_args__ = (
        Index("ix_drift_alert_created", "created_at"),
        Index(
            "ix_drift_alert_slice", "model_name", "model_version", "kind", "slice_key", "created_at"
        ),
    )


class DriftAlertPublic(DriftAlertBase):
    """An alert as the API returns it."""


class WebhookBase(SQLModel):
    """A webhook as clients see it."""

    id: str = Field(primary_key=True, max_length=32)
    url: str = Field(sa_type=Text)
    kinds: list[str] = Field(
        default_factory=list, sa_type=PortableJSON, description="alert kinds; empty = all"
    )
    created_at: datetime = Field(sa_type=UTCDateTime)
    created_by: str = Field(default="", max_length=100)


class Webhook(WebhookBase, table=True):
    """An HTTP endpoint that receives every alert (of its kinds) as a JSON POST."""

    __tablename__ = "drift_webhook"


class WebhookPublic(WebhookBase):
    """A webhook as the API returns it."""


class WebhookDeliveryBase(SQLModel):
    """One alert's delivery to one webhook, with every attempt."""

    id: int | None = Field(default=None, primary_key=True)
    webhook_id: str = Field(max_length=32, index=True)
    alert_id: str = Field(max_length=32, index=True)
    status: str = Field(default="pending", max_length=16, description="pending/delivered/failed")
    attempts: int = Field(default=0, sa_type=BigInteger)
    log: list[dict[str, Any]] = Field(default_factory=list, sa_type=PortableJSON)
    created_at: datetime = Field(sa_type=UTCDateTime)
    finished_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class WebhookDelivery(WebhookDeliveryBase, table=True):
    """The delivery log."""

    __tablename__ = "drift_webhook_delivery"


class WebhookDeliveryPublic(WebhookDeliveryBase):
    """A delivery as the API returns it."""


def new_id() -> str:
    """A random 128-bit hex id for alerts and webhooks."""
    return uuid.uuid4().hex


# --- reference profiles -------------------------------------------------------------


def put_reference(
    session: Session, model_name: str, model_version: str, profile: ReferenceProfile
) -> bool:
    """Store (or replace) the reference profile of a model version; True if it is new.

    Raises `InvalidRequestError` when ``profile_id`` is not the profile's content hash
    (a tampered or hand-edited profile would make windows incomparable).
    """
    expected = profile.content_id()
    if profile.profile_id != expected:
        raise InvalidRequestError(
            f"reference profile of {model_name} {model_version}: profile_id is "
            f"{profile.profile_id[:12] or 'empty'}, its content hashes to {expected[:12]}"
        )
    row = session.get(ReferenceProfileRow, (model_name, model_version))
    created = row is None
    if row is None:
        row = ReferenceProfileRow(
            model_name=model_name,
            model_version=model_version,
            profile_id=profile.profile_id,
            registered_at=utcnow(),
        )
    row.profile_id = profile.profile_id
    row.profile = profile.model_dump(mode="json")
    row.registered_at = utcnow()
    session.add(row)
    session.commit()
    return created


def get_reference(session: Session, model_name: str, model_version: str) -> ReferenceProfile:
    """The reference profile of a model version; raises `NotFoundError` if none is known."""
    row = session.get(ReferenceProfileRow, (model_name, model_version))
    if row is None:
        raise NotFoundError(
            f"no reference profile for model {model_name!r} version {model_version!r}: "
            "upload its package or PUT /v1/drift/reference/{model}/{version}"
        )
    return ReferenceProfile.model_validate(row.profile)


def known_model(session: Session, model_name: str) -> bool:
    """Whether the fleet has a reference profile or drift windows for ``model_name``."""
    if session.exec(
        select(ReferenceProfileRow.model_name).where(
            col(ReferenceProfileRow.model_name) == model_name
        )
    ).first():
        return True
    return (
        session.exec(
            select(DriftWindowRow.seq).where(col(DriftWindowRow.model_name) == model_name)
        ).first()
        is not None
    )


def profile_feature_names(session: Session, model_name: str) -> set[str]:
    """Every input and output feature name of every profile of ``model_name``."""
    names: set[str] = set()
    rows = session.exec(
        select(ReferenceProfileRow).where(col(ReferenceProfileRow.model_name) == model_name)
    ).all()
    for row in rows:
        profile = ReferenceProfile.model_validate(row.profile)
        names.update(f.name for f in [*profile.inputs, *profile.outputs])
    return names


# --- thresholds ------------------------------------------------------------------------


def get_thresholds(session: Session, model_name: str) -> DriftThresholds:
    """The model's thresholds: its stored overrides, or the library defaults."""
    row = session.get(DriftThresholdsRow, model_name)
    if row is None:
        return DriftThresholds()
    return DriftThresholds.model_validate(row.thresholds)


def put_thresholds(
    session: Session, model_name: str, thresholds: DriftThresholds, *, by: str
) -> None:
    """Store the model's thresholds (validate them first with `check_thresholds`)."""
    row = session.get(DriftThresholdsRow, model_name) or DriftThresholdsRow(
        model_name=model_name, updated_at=utcnow()
    )
    row.thresholds = thresholds.model_dump(mode="json", exclude_none=True)
    row.updated_at = utcnow()
    row.updated_by = by
    session.add(row)
    session.commit()


# --- windows ---------------------------------------------------------------------------


def load_windows(session: Session, where: SliceFilter) -> list[WindowRecord]:
    """The stored windows in ``where``'s slice, with their device's tags and hardware.

    Windows without a sketch (agents before sketches) and windows whose sketch no longer
    parses are left out. Tags and hardware are the device's current ones: windows do
    not carry them, and a device's tags describe where it is now.
    """
    query = select(DriftWindowRow)
    if where.model is not None:
        query = query.where(col(DriftWindowRow.model_name) == where.model)
    if where.version is not None:
        query = query.where(col(DriftWindowRow.model_version) == where.version)
    if where.device is not None:
        query = query.where(col(DriftWindowRow.device_id) == where.device)
    if where.since is not None:
        query = query.where(col(DriftWindowRow.window_end) > where.since)
    if where.until is not None:
        query = query.where(col(DriftWindowRow.window_start) < where.until)
    rows = session.exec(query.order_by(col(DriftWindowRow.window_start))).all()
    device_ids = {r.device_id for r in rows}
    devices: dict[str, Device] = {}
    if device_ids:
        found = session.exec(select(Device).where(col(Device.device_id).in_(device_ids))).all()
        devices = {d.device_id: d for d in found}
    records: list[WindowRecord] = []
    for row in rows:
        sketch = _sketch(row.sketch)
        if sketch is None or row.model_name is None or row.model_version is None:
            continue
        device = devices.get(row.device_id)
        record = WindowRecord(
            device_id=row.device_id,
            model_name=row.model_name,
            model_version=row.model_version,
            window_start=row.window_start,
            window_end=row.window_end,
            sketch=sketch,
            tags=tuple(device.tags) if device else (),
            hardware=device.hardware if device else "",
        )
        if where.matches(record):
            records.append(record)
    return records


def model_versions_with_windows(session: Session, since: datetime) -> list[tuple[str, str]]:
    """(model, version) pairs that have windows ending after ``since``."""
    rows = session.exec(
        select(DriftWindowRow.model_name, DriftWindowRow.model_version)
        .where(col(DriftWindowRow.window_end) > since)
        .where(col(DriftWindowRow.model_name).is_not(None))
        .where(col(DriftWindowRow.model_version).is_not(None))
        .distinct()
    ).all()
    return sorted((str(name), str(version)) for name, version in rows)


def _sketch(value: Any) -> WindowSketch | None:
    if not value:
        return None
    try:
        return WindowSketch.model_validate(value)
    except ValidationError:
        return None
