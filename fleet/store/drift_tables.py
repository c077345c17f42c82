"""The drift tables: reference profiles, thresholds, alerts, webhooks and deliveries.

Invariants:
- a reference profile is stored per (model name, version) and its ``profile_id`` is
  the profile's content hash (checked on the way in by `edgefleet.fleet.drift.store`),
  so windows are only ever compared with the profile whose bins they were counted in;
- an alert row is written before it is published or posted anywhere, so a broker or
  webhook outage never loses an alert, and the cool-down reads the same rows;
- a webhook delivery row records every attempt (time, status code or error) as it
  happens;
- a webhook's signing secret lives in ``drift_webhook_secret``, never in a ``...Public``
  model: the API shows it once, when it is made.

Each table has a ``...Base`` (the fields) and, where the API returns it, a ``...Public``
twin, so rows never leak to clients. Importing this module registers the tables on
``SQLModel.metadata``; the windows themselves are ``drift_window``
(`edgefleet.fleet.store.tables.DriftWindowRow`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Index, Text
from sqlmodel import Field, SQLModel

from edgefleet.fleet.store.types import PortableJSON, UTCDateTime


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


class AlertAck(SQLModel, table=True):
    """Who acknowledged an alert, when, and what they said (one per alert)."""

    __tablename__ = "alert_acks"

    alert_id: str = Field(primary_key=True, max_length=32)
    acked_by: str = Field(max_length=200)
    acked_at: datetime = Field(sa_type=UTCDateTime)
    remark: str | None = Field(default=None, sa_type=Text)


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


class WebhookSecret(SQLModel, table=True):
    """The signing secret of one webhook (`edgefleet.fleet.webhooks.signing`).

    A table of its own rather than a column of ``drift_webhook``: it came before the
    fleet had migrations, when a new column would have broken every existing database
    while a new table simply appeared. A webhook without a
    row here (made before signing existed) is delivered unsigned until its secret is
    rotated (``POST /v1/webhooks/{id}/secret``). Never returned by a list or get.
    """

    __tablename__ = "drift_webhook_secret"

    webhook_id: str = Field(primary_key=True, max_length=32)
    secret: str = Field(max_length=100)
    created_at: datetime = Field(sa_type=UTCDateTime)


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
