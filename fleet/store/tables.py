"""The fleet's tables, with the Base / table / Public family where a row reaches clients.

Invariants:
- a device message is stored at most once: (device_id, seq) is the primary key of every
  per-message table, and writers insert with ON CONFLICT DO NOTHING;
- `Device` holds the latest *state* by sequence number (`last_state_seq`), never an older
  one that arrived late;
- API token plaintexts are never stored, only their sha256.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import BigInteger, Index, LargeBinary, Text
from sqlmodel import Field, SQLModel

from edgefleet.fleet.store.types import PortableJSON, UTCDateTime
from edgefleet.shared.messages import utcnow


class DeviceBase(SQLModel):
    """What the fleet knows about a device, as clients see it."""

    device_id: str = Field(primary_key=True, max_length=128)
    online: bool = Field(default=False, description="as the device last reported it")
    first_seen: datetime = Field(sa_type=UTCDateTime)
    last_seen: datetime | None = Field(default=None, sa_type=UTCDateTime)
    agent_version: str = ""
    hardware: str = Field(default="", index=True)
    tags: list[str] = Field(default_factory=list, sa_type=PortableJSON)
    platform: dict[str, Any] = Field(default_factory=dict, sa_type=PortableJSON)
    runtimes: list[str] = Field(default_factory=list, sa_type=PortableJSON)
    model_name: str | None = None
    model_version: str | None = None
    model_sha256: str | None = None
    offline_reason: str | None = None


class Device(DeviceBase, table=True):
    """The device registry: one row per device ever seen."""

    last_state_seq: int | None = Field(default=None, sa_type=BigInteger)
    state_ts: datetime | None = Field(default=None, sa_type=UTCDateTime)


class DevicePublic(DeviceBase):
    """A device as the API returns it."""


class TelemetryBase(SQLModel):
    """One telemetry report, flattened to columns so it can be queried and charted."""

    device_id: str = Field(primary_key=True, max_length=128)
    seq: int = Field(primary_key=True, sa_type=BigInteger)
    ts: datetime = Field(sa_type=UTCDateTime)
    received_at: datetime = Field(sa_type=UTCDateTime)
    interval_s: float
    inferences: int = Field(sa_type=BigInteger)
    errors: int = Field(sa_type=BigInteger)
    inferences_total: int = Field(sa_type=BigInteger)
    errors_total: int = Field(sa_type=BigInteger)
    latency_p50_ms: float | None = None
    latency_p95_ms: float | None = None
    latency_p99_ms: float | None = None
    cpu_percent: float
    rss_bytes: int = Field(sa_type=BigInteger)
    disk_free_bytes: int = Field(sa_type=BigInteger)
    outbox_depth: int = Field(sa_type=BigInteger)
    outbox_dropped_total: int = Field(default=0, sa_type=BigInteger)
    uptime_s: float = 0.0
    model_name: str | None = None
    model_version: str | None = None


class TelemetryRow(TelemetryBase, table=True):
    """Telemetry as stored; unique per (device_id, seq)."""

    __tablename__ = "telemetry"
    __table_args__ = (Index("ix_telemetry_device_ts", "device_id", "ts"),)


class TelemetryPublic(TelemetryBase):
    """Telemetry as the API returns it."""


class EventRow(SQLModel, table=True):
    """One deployment event reported by a device; unique per (device_id, seq)."""

    __tablename__ = "device_event"
    __table_args__ = (
        Index("ix_device_event_device_ts", "device_id", "ts"),
        Index("ix_device_event_rollout", "rollout_id"),
    )

    device_id: str = Field(primary_key=True, max_length=128)
    seq: int = Field(primary_key=True, sa_type=BigInteger)
    ts: datetime = Field(sa_type=UTCDateTime)
    received_at: datetime = Field(sa_type=UTCDateTime)
    kind: str = Field(max_length=32)
    model_name: str | None = None
    model_version: str | None = None
    model_sha256: str | None = None
    desired_seq: int | None = Field(default=None, sa_type=BigInteger)
    rollout_id: str | None = None
    reason: str | None = Field(default=None, sa_type=Text)
    detail: dict[str, Any] = Field(default_factory=dict, sa_type=PortableJSON)


class DriftWindowRow(SQLModel, table=True):
    """One closed drift window of one device; unique per (device_id, seq)."""

    __tablename__ = "drift_window"
    __table_args__ = (
        Index("ix_drift_window_device_end", "device_id", "window_end"),
        Index("ix_drift_window_model_end", "model_name", "model_version", "window_end"),
    )

    device_id: str = Field(primary_key=True, max_length=128)
    seq: int = Field(primary_key=True, sa_type=BigInteger)
    ts: datetime = Field(sa_type=UTCDateTime)
    received_at: datetime = Field(sa_type=UTCDateTime)
    model_name: str | None = None
    model_version: str | None = None
    window_start: datetime = Field(sa_type=UTCDateTime)
    window_end: datetime = Field(sa_type=UTCDateTime)
    count: int = Field(sa_type=BigInteger)
    sketch: dict[str, Any] = Field(default_factory=dict, sa_type=PortableJSON)


class DeadLetter(SQLModel, table=True):
    """A payload the ingester could not accept: its first bytes, size and sha256, and why.

    Bounded by `edgefleet.fleet.ingest.dead_letters` (rows, bytes, age; oldest dropped
    first). The table is ``dead_letters``, not the older ``dead_letter`` that kept whole
    payloads: the new shape came before the fleet had migrations, as a new table, and
    migration 0003 drops the old one.
    """

    __tablename__ = "dead_letters"

    id: int | None = Field(default=None, primary_key=True)
    received_at: datetime = Field(sa_type=UTCDateTime, index=True)
    topic: str = Field(sa_type=Text, description="at most 1024 characters of it")
    payload_prefix: bytes = Field(sa_type=LargeBinary, description="the payload's first bytes")
    payload_bytes: int = Field(sa_type=BigInteger, description="size of the whole payload")
    payload_sha256: str = Field(max_length=64, description="of the whole payload")
    error: str = Field(sa_type=Text, description="at most 2000 characters of it")
    stored_bytes: int = Field(
        sa_type=BigInteger, description="what this row counts against dead_letter_max_bytes"
    )


class TokenRole(StrEnum):
    """What an API token may do; each role includes the ones before it."""

    VIEWER = "viewer"
    OPERATOR = "operator"
    APPROVER = "approver"
    ADMIN = "admin"


class ApiToken(SQLModel, table=True):
    """An API token: only the sha256 of its secret is kept."""

    __tablename__ = "api_token"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=100, unique=True)
    role: TokenRole = Field(sa_type=Text)
    token_sha256: str = Field(max_length=64, unique=True)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class ModelVersionBase(SQLModel):
    """A model version in the registry, as clients see it."""

    name: str = Field(primary_key=True, max_length=100)
    version: str = Field(primary_key=True, max_length=100)
    runtime: str = Field(max_length=16)
    sha256: str = Field(max_length=64, description="of the package file (the TUF target)")
    length: int = Field(sa_type=BigInteger, description="of the package file, in bytes")
    target_name: str = Field(max_length=200, description="the TUF target's name")
    manifest: dict[str, Any] = Field(default_factory=dict, sa_type=PortableJSON)
    metrics: dict[str, float] = Field(default_factory=dict, sa_type=PortableJSON)
    training_data_sha256: str | None = Field(default=None, max_length=64)
    uploaded_by: str = Field(max_length=100)
    uploaded_at: datetime = Field(sa_type=UTCDateTime)
    approved_by: str | None = Field(default=None, max_length=100)
    approved_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    published: bool = False
    published_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class ModelVersion(ModelVersionBase, table=True):
    """The registry: one row per (name, version); the package bytes never change."""

    __tablename__ = "model_version"


class ModelVersionPublic(ModelVersionBase):
    """A model version as the API returns it."""


class DesiredStateRow(SQLModel, table=True):
    """The director's current desired state per device.

    ``seq`` only grows: it is allocated by an UPDATE ... RETURNING inside the transaction
    that stores the envelope, so two replicas serialise on the row and never reuse one.
    """

    __tablename__ = "desired_state"

    device_id: str = Field(primary_key=True, max_length=128)
    seq: int = Field(default=0, sa_type=BigInteger)
    body: dict[str, Any] = Field(default_factory=dict, sa_type=PortableJSON)
    envelope: dict[str, Any] = Field(default_factory=dict, sa_type=PortableJSON)
    rollout_id: str | None = Field(default=None, max_length=100, index=True)
    updated_at: datetime = Field(sa_type=UTCDateTime)
