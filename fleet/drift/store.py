"""The drift package's queries over its tables (`edgefleet.fleet.store.drift_tables`)
and over ``drift_window``.

Invariants:
- a reference profile is stored per (model name, version) and its ``profile_id`` is
  the profile's content hash (checked here on the way in), so windows are only ever
  compared with the profile whose bins they were counted in.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import ValidationError
from sqlmodel import Session, col, select

from edgefleet.fleet.audit.entry import AuditRecord
from edgefleet.fleet.audit.log import append
from edgefleet.fleet.drift.rollup import SliceFilter, WindowRecord
from edgefleet.fleet.errors import InvalidRequestError, NotFoundError
from edgefleet.fleet.store.drift_tables import DriftThresholdsRow, ReferenceProfileRow
from edgefleet.fleet.store.tables import Device, DriftWindowRow
from edgefleet.shared.drift import DriftThresholds, ReferenceProfile, WindowSketch
from edgefleet.shared.messages import utcnow


def new_id() -> str:
    """A random 128-bit hex id for alerts and webhooks."""
    return uuid.uuid4().hex


# --- reference profiles -------------------------------------------------------------


def put_reference(
    session: Session,
    model_name: str,
    model_version: str,
    profile: ReferenceProfile,
    *,
    audit: AuditRecord | None = None,
) -> bool:
    """Store (or replace) the reference profile of a model version; True if it is new.
    ``audit`` is appended in the same transaction, with the old and new profile ids.

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
    before = None if created else {"profile_id": row.profile_id}
    row.profile_id = profile.profile_id
    row.profile = profile.model_dump(mode="json")
    row.registered_at = utcnow()
    session.add(row)
    if audit is not None:
        append(
            session,
            audit.model_copy(update={"before": before, "after": {"profile_id": row.profile_id}}),
        )
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
    session: Session,
    model_name: str,
    thresholds: DriftThresholds,
    *,
    by: str,
    audit: AuditRecord | None = None,
) -> None:
    """Store the model's thresholds (validate them first with `check_thresholds`);
    ``audit`` is appended in the same transaction, with the old and new thresholds."""
    row = session.get(DriftThresholdsRow, model_name)
    before = dict(row.thresholds) if row is not None else None
    row = row or DriftThresholdsRow(model_name=model_name, updated_at=utcnow())
    row.thresholds = thresholds.model_dump(mode="json", exclude_none=True)
    row.updated_at = utcnow()
    row.updated_by = by
    session.add(row)
    if audit is not None:
        append(session, audit.model_copy(update={"before": before, "after": row.thresholds}))
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
