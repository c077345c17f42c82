"""What an audit entry says: who did what to which object, from where, and the change.

These cross the wire (``GET /v1/audit``), so every field is bounded.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class AuditOutcome(StrEnum):
    OK = "ok"
    DENIED = "denied"
    FAILED = "failed"


class AuditActor(BaseModel):
    """Who acted: a user, service account, OIDC user, device, or ``system``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: str = Field(max_length=16)
    id: str = Field(max_length=200)
    name: str = Field(max_length=200)
    token_prefix: str | None = Field(default=None, max_length=32)


class AuditObject(BaseModel):
    """What was acted on: ``kind`` (model, rollout, token, ...) and its id."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: str = Field(max_length=32)
    id: str = Field(max_length=300)


class AuditRecord(BaseModel):
    """An entry to append: everything but its sequence number, time and hashes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    actor: AuditActor
    action: str = Field(max_length=64, description="e.g. rollout.approve")
    object: AuditObject
    outcome: AuditOutcome = AuditOutcome.OK
    request_id: str | None = Field(default=None, max_length=64)
    source: str | None = Field(default=None, max_length=64, description="client address")
    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None


class AuditEntry(AuditRecord):
    """An appended entry, as stored and served."""

    seq: int = Field(ge=1, le=2**63 - 1)
    ts: datetime
    prev_hash: str = Field(min_length=64, max_length=64)
    hash: str = Field(min_length=64, max_length=64)


SYSTEM_ACTOR = AuditActor(kind="system", id="system", name="system")
