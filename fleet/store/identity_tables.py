"""Enrollment tokens and device identities (`edgefleet.fleet.identity`).

Invariants:
- a token's plaintext is never stored, only its sha256; ``prefix`` is the part shown;
  ``used_at`` is set once, by a conditional UPDATE, so a token enrolls one device even
  when two requests race;
- ``device_identities`` holds one row per device id ever named or enrolled; ``state`` is
  an `edgefleet.fleet.identity.enrollment.IdentityState`; a revoked row keeps its last
  ``cert_serial``, which is what the CRL lists.
"""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Field, SQLModel

from edgefleet.fleet.store.types import UTCDateTime
from edgefleet.shared.messages import utcnow


class EnrollmentTokenRow(SQLModel, table=True):
    """A one-time enrollment token; ``device_id`` and ``key_fingerprint`` narrow it."""

    __tablename__ = "enrollment_tokens"

    id: str = Field(primary_key=True, max_length=32)
    prefix: str = Field(max_length=32, unique=True)
    token_sha256: str = Field(max_length=64, unique=True)
    device_id: str | None = Field(default=None, max_length=128, index=True)
    key_fingerprint: str | None = Field(default=None, max_length=80)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    created_by: str = Field(max_length=200)
    expires_at: datetime = Field(sa_type=UTCDateTime)
    used_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    used_by_device: str | None = Field(default=None, max_length=128)


class DeviceIdentityRow(SQLModel, table=True):
    """A device id's identity: pending, active (with its certificate) or revoked."""

    __tablename__ = "device_identities"

    device_id: str = Field(primary_key=True, max_length=128)
    state: str = Field(max_length=16, index=True)
    cert_serial: str | None = Field(default=None, max_length=64)
    not_after: datetime | None = Field(default=None, sa_type=UTCDateTime)
    key_fingerprint: str | None = Field(default=None, max_length=80)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    enrolled_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    renewed_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    revoked_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    revoked_by: str | None = Field(default=None, max_length=200)
    revoke_reason: str | None = Field(default=None, max_length=500)


class BrokerPasswordRow(SQLModel, table=True):
    """A device's broker password (the fleet's ``broker_device_auth`` ``password`` mode):
    only its Mosquitto ``$7$`` hash, made at enrollment and deleted at revocation."""

    __tablename__ = "broker_passwords"

    device_id: str = Field(primary_key=True, max_length=128)
    password_hash: str = Field(max_length=200)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
