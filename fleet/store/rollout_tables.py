"""The rollout tables: one row per rollout, its history, and the orchestrator leases.

Invariants:
- ``Rollout.state`` is the JSON of a `edgefleet.fleet.rollouts.model.RolloutState` (it round-trips);
  ``status`` mirrors ``state.status`` so active rollouts can be found without parsing;
- ``Rollout.version`` grows by one on every write, and every write is a compare-and-set
  on it (``UPDATE ... WHERE version = :read``), so two writers never lose each other's
  change: the loser re-reads and decides again;
- ``RolloutEvent`` is append-only: every action, gate decision, operator command and
  timeline entry of a rollout, with ``device_id`` set when it concerns one device;
- a `Lease` row names its holder and when the lease lapses; it is taken or renewed only
  by a conditional UPDATE (see `edgefleet.fleet.rollout_service.lease`).

Importing this module registers the tables on ``SQLModel.metadata``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Index, Text
from sqlmodel import Field, SQLModel

from edgefleet.fleet.store.types import PortableJSON, UTCDateTime


class Rollout(SQLModel, table=True):
    """A rollout: the operator's spec and the orchestrator's state."""

    __tablename__ = "rollout"

    id: str = Field(primary_key=True, max_length=100)
    model_name: str = Field(max_length=200)
    model_version: str = Field(max_length=100)
    spec: dict[str, Any] = Field(default_factory=dict, sa_type=PortableJSON)
    state: dict[str, Any] = Field(default_factory=dict, sa_type=PortableJSON)
    status: str = Field(max_length=32, index=True)
    created_by: str = Field(max_length=100)
    created_at: datetime = Field(sa_type=UTCDateTime)
    updated_at: datetime = Field(sa_type=UTCDateTime)
    version: int = Field(default=1, sa_type=BigInteger)


class RolloutEvent(SQLModel, table=True):
    """One line of a rollout's history (``device_id`` set: also the device's history)."""

    __tablename__ = "rollout_event"
    __table_args__ = (
        Index("ix_rollout_event_rollout_id", "rollout_id", "id"),
        Index("ix_rollout_event_device", "device_id", "id"),
    )

    id: int | None = Field(default=None, primary_key=True)
    rollout_id: str = Field(max_length=100)
    device_id: str | None = Field(default=None, max_length=128)
    wave: int | None = None
    ts: datetime = Field(sa_type=UTCDateTime)
    kind: str = Field(max_length=48)
    message: str = Field(default="", sa_type=Text)
    detail: dict[str, Any] = Field(default_factory=dict, sa_type=PortableJSON)


class Lease(SQLModel, table=True):
    """A named lease: who holds it and until when (see `edgefleet.fleet.rollout_service.lease`)."""

    __tablename__ = "lease"

    name: str = Field(primary_key=True, max_length=100)
    holder: str | None = Field(default=None, max_length=200)
    expires_at: datetime = Field(sa_type=UTCDateTime)
    acquired_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
