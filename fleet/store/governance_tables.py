"""People, tokens, custom roles, model reviews and aliases, and the audit log.

Invariants:
- a token's plaintext is never stored, only its sha256; ``prefix`` is the part shown;
- a user's ``grants`` are `edgefleet.fleet.governance.grants.Grant` objects as JSON;
- ``audit_log`` is append-only and hash-chained (`edgefleet.fleet.audit`); ``audit_head``
  holds one row, the chain's head, locked by every append so two replicas append in one
  order.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Index, Text
from sqlmodel import Field, SQLModel

from edgefleet.fleet.store.types import PortableJSON, UTCDateTime
from edgefleet.shared.messages import utcnow


class UserRow(SQLModel, table=True):
    """A person or a service account (``kind`` user or service)."""

    __tablename__ = "users"

    id: str = Field(primary_key=True, max_length=64)
    name: str = Field(max_length=100, unique=True)
    kind: str = Field(max_length=16)
    grants: list[dict[str, Any]] = Field(default_factory=list, sa_type=PortableJSON)
    disabled: bool = False
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    created_by: str | None = Field(default=None, max_length=200)


class RoleRow(SQLModel, table=True):
    """A custom role: a named bundle of permissions (built-in roles are not stored)."""

    __tablename__ = "roles"

    name: str = Field(primary_key=True, max_length=64)
    permissions: list[str] = Field(default_factory=list, sa_type=PortableJSON)
    description: str = Field(default="", max_length=500)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class TokenRow(SQLModel, table=True):
    """An API token of a user; ``permissions`` (None: all the owner's) narrow it."""

    __tablename__ = "api_tokens"

    id: str = Field(primary_key=True, max_length=32)
    prefix: str = Field(max_length=32, unique=True)
    token_sha256: str = Field(max_length=64, unique=True)
    user_id: str = Field(max_length=64, index=True)
    label: str = Field(max_length=100)
    permissions: list[str] | None = Field(default=None, sa_type=PortableJSON)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    created_by: str | None = Field(default=None, max_length=200)
    expires_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    last_used_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    revoked_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class ModelLifecycleRow(SQLModel, table=True):
    """A model version's lifecycle (uploaded → approved | rejected → retired) and lineage.

    Kept beside ``model_version`` (not in it): it came before the fleet had migrations,
    when `create_all` could add no columns to an existing table.
    """

    __tablename__ = "model_lifecycle"

    name: str = Field(primary_key=True, max_length=100)
    version: str = Field(primary_key=True, max_length=100)
    state: str = Field(max_length=16)
    uploader: str = Field(max_length=200, description="the uploader's person id")
    reviewed_by: str | None = Field(default=None, max_length=200)
    reviewed_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    remark: str | None = Field(default=None, sa_type=Text)
    retired_by: str | None = Field(default=None, max_length=200)
    retired_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    lineage: dict[str, Any] = Field(default_factory=dict, sa_type=PortableJSON)


class ModelAliasRow(SQLModel, table=True):
    """A named pointer (``production``, ``canary``, ...) at one version of a model."""

    __tablename__ = "model_aliases"

    name: str = Field(primary_key=True, max_length=100)
    alias: str = Field(primary_key=True, max_length=64)
    version: str = Field(max_length=100)
    updated_by: str = Field(max_length=200)
    updated_at: datetime = Field(sa_type=UTCDateTime)


class AuditHead(SQLModel, table=True):
    """The audit chain's head: one row (id 1), updated by every append."""

    __tablename__ = "audit_head"

    id: int = Field(primary_key=True)
    seq: int = Field(default=0, sa_type=BigInteger)
    hash: str = Field(max_length=64)


class AuditRow(SQLModel, table=True):
    """One audit entry; ``hash`` covers its canonical JSON and ``prev_hash``."""

    __tablename__ = "audit_log"
    __table_args__ = (
        Index("ix_audit_log_ts", "ts"),
        Index("ix_audit_log_action", "action"),
        Index("ix_audit_log_object", "object_kind", "object_id"),
        Index("ix_audit_log_actor", "actor_id"),
    )

    seq: int = Field(
        primary_key=True, sa_type=BigInteger, sa_column_kwargs={"autoincrement": False}
    )
    ts: datetime = Field(sa_type=UTCDateTime)
    actor_kind: str = Field(max_length=16)
    actor_id: str = Field(max_length=200)
    actor_name: str = Field(max_length=200)
    actor_token_prefix: str | None = Field(default=None, max_length=32)
    action: str = Field(max_length=64)
    object_kind: str = Field(max_length=32)
    object_id: str = Field(max_length=300)
    request_id: str | None = Field(default=None, max_length=64)
    source: str | None = Field(default=None, max_length=64)
    outcome: str = Field(max_length=16)
    before: dict[str, Any] | None = Field(default=None, sa_type=PortableJSON)
    after: dict[str, Any] | None = Field(default=None, sa_type=PortableJSON)
    prev_hash: str = Field(max_length=64)
    hash: str = Field(max_length=64)
