"""Raise alerts: store them, publish them on MQTT, POST them to webhooks.

Order matters: the alert row is committed first, so an alert exists (and the cool-down
sees it) even when the broker or every webhook is down. MQTT delivery is QoS 1 on
``edgefleet/v1/fleet/alerts``, not retained (an alert is an event, not a state).
Webhooks get a JSON POST (`WebhookPayload`), handed to a
`edgefleet.fleet.webhooks.dispatcher.WebhookDispatcher`: `raise_alerts` only writes a
pending delivery row per webhook and queues it, so a receiver that hangs or fails never
delays the drift monitor (nor, on its own lane, any other webhook). The dispatcher
retries with backoff, logs every attempt in ``drift_webhook_delivery``, checks each
destination after resolving it (`edgefleet.fleet.webhooks.policy`) and signs each
attempt with the webhook's secret (``X-Edgefleet-Signature``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, Literal, Protocol

from pydantic import BaseModel, Field
from sqlalchemy import Engine
from sqlmodel import Session, select

from edgefleet.fleet.drift.alerts import AlertDecision
from edgefleet.fleet.drift.store import new_id
from edgefleet.fleet.errors import PublishError
from edgefleet.fleet.mqtt_publisher import MqttPublisher
from edgefleet.fleet.settings import FleetSettings
from edgefleet.fleet.store.drift_tables import DriftAlert, Webhook, WebhookSecret
from edgefleet.fleet.webhooks.dispatcher import RetryPolicy, WebhookDispatcher
from edgefleet.fleet.webhooks.policy import DestinationPolicy
from edgefleet.fleet.webhooks.resolver import Resolver
from edgefleet.shared.messages import AlertMessage, ModelRef, encode
from edgefleet.shared.topics import ALERTS_TOPIC

logger = logging.getLogger(__name__)


class NotifyError(Exception):
    """An alert could not be handed to a transport (broker down, no acknowledgement)."""


class AlertPublisher(Protocol):
    """Where alerts go for MQTT subscribers."""

    def publish_alert(self, message: AlertMessage) -> None:
        """Publish at QoS 1 and wait for the acknowledgement; raises `NotifyError`."""


class RetrainingTrigger(BaseModel):
    """What a retraining pipeline needs: the model, the slice, and the evidence."""

    schema_: Literal["edgefleet/v1/retraining-trigger"] = Field(
        default="edgefleet/v1/retraining-trigger", alias="schema"
    )
    alert_id: str
    reason: str
    model: ModelRef
    slice: dict[str, str]
    window_start: str | None = None
    window_end: str | None = None
    evidence: dict[str, Any]


class WebhookPayload(BaseModel):
    """The JSON body POSTed to webhooks."""

    schema_: Literal["edgefleet/v1/webhook"] = Field(default="edgefleet/v1/webhook", alias="schema")
    alert: AlertMessage
    retraining: RetrainingTrigger


def alert_message(alert: DriftAlert) -> AlertMessage:
    """The wire form of a stored alert."""
    return AlertMessage(
        id=alert.id,
        kind=alert.kind,
        severity=alert.severity,  # type: ignore[arg-type]
        message=alert.message,
        ts=alert.created_at,
        device_id=alert.slice.get("device"),
        evidence={
            "model": {"name": alert.model_name, "version": alert.model_version},
            "slice_key": alert.slice_key,
            **alert.evidence,
        },
    )


def retraining_trigger(alert: DriftAlert) -> RetrainingTrigger:
    """The retraining trigger for a stored alert."""
    return RetrainingTrigger(
        alert_id=alert.id,
        reason=alert.kind,
        model=ModelRef(name=alert.model_name, version=alert.model_version),
        slice=dict(alert.slice),
        window_start=alert.evidence.get("window_start"),
        window_end=alert.evidence.get("window_end"),
        evidence=alert.evidence,
    )


def webhook_body(alert: DriftAlert) -> bytes:
    """The JSON body POSTed to webhooks for ``alert``."""
    payload = WebhookPayload(alert=alert_message(alert), retraining=retraining_trigger(alert))
    return payload.model_dump_json(by_alias=True).encode()


def stored_webhook_body(engine: Engine) -> Callable[[str], bytes | None]:
    """Rebuilds a stored alert's webhook body by id (None if the alert is gone), for
    `WebhookDispatcher.start` to send again what a previous run left pending."""

    def body_of(alert_id: str) -> bytes | None:
        with Session(engine) as session:
            alert = session.get(DriftAlert, alert_id)
            return webhook_body(alert) if alert is not None else None

    return body_of


class Notifier:
    """Stores decisions as alerts and delivers them (MQTT, then webhooks)."""

    def __init__(
        self,
        engine: Engine,
        *,
        publisher: AlertPublisher | None,
        dispatcher: WebhookDispatcher | None = None,
        policy: RetryPolicy | None = None,
        destinations: DestinationPolicy | None = None,
        resolver: Resolver | None = None,
    ) -> None:
        """Webhooks go through ``dispatcher`` (the caller starts and stops it); without
        one the notifier makes its own from ``policy``, ``destinations`` (default: every
        internal address refused) and ``resolver``, and `close` stops it."""
        self._engine = engine
        self._publisher = publisher
        self._owns_dispatcher = dispatcher is None
        self._dispatcher = dispatcher or WebhookDispatcher(
            engine, policy=policy, destinations=destinations, resolver=resolver
        )
        if self._owns_dispatcher:
            self._dispatcher.start()

    @property
    def dispatcher(self) -> WebhookDispatcher:
        return self._dispatcher

    def close(self) -> None:
        """Stop the notifier's own dispatcher (used when the monitor stops)."""
        if self._owns_dispatcher:
            self._dispatcher.stop()

    def raise_alerts(self, decisions: Sequence[AlertDecision], now: datetime) -> list[DriftAlert]:
        """Store each decision as an alert, then publish and POST it; returns the alerts."""
        with Session(self._engine, expire_on_commit=False) as session:
            alerts = [
                DriftAlert(
                    id=new_id(),
                    kind=d.kind.value,
                    severity=d.severity,
                    model_name=d.model_name,
                    model_version=d.model_version,
                    slice_key=d.slice_key,
                    slice=d.evidence.get("slice", {}),
                    message=d.message,
                    evidence=d.evidence,
                    created_at=now,
                )
                for d in decisions
            ]
            session.add_all(alerts)
            session.commit()
            webhooks = list(session.exec(select(Webhook)).all())
            secrets = {s.webhook_id: s.secret for s in session.exec(select(WebhookSecret))}
        for alert in alerts:
            logger.info("alert %s: %s", alert.kind, alert.message)
            self._publish(alert)
            self._post(alert, webhooks, secrets)
        return alerts

    def _publish(self, alert: DriftAlert) -> None:
        if self._publisher is None:
            return
        try:
            self._publisher.publish_alert(alert_message(alert))
        except NotifyError as e:
            logger.warning("alert %s is stored but was not published: %s", alert.id, e)
            return
        with Session(self._engine) as session:
            row = session.get(DriftAlert, alert.id)
            if row is not None:
                row.published = True
                session.add(row)
                session.commit()
        alert.published = True

    def _post(
        self, alert: DriftAlert, webhooks: Sequence[Webhook], secrets: dict[str, str]
    ) -> None:
        """Queue the alert for its webhooks; never waits on a receiver."""
        targets = [(w, secrets.get(w.id)) for w in webhooks if not w.kinds or alert.kind in w.kinds]
        if targets:
            self._dispatcher.submit(alert.id, webhook_body(alert), targets)


class MqttAlertPublisher:
    """Publishes alerts at QoS 1 on the alerts topic over a connection of its own."""

    def __init__(self, settings: FleetSettings, *, timeout_s: float | None = None) -> None:
        self._publisher = MqttPublisher(settings, role="alerts", timeout_s=timeout_s)

    def start(self) -> None:
        """Connect in the background (paho retries until the broker is there)."""
        self._publisher.start()

    def stop(self) -> None:
        self._publisher.stop()

    def wait_connected(self, timeout_s: float) -> bool:
        return self._publisher.wait_connected(timeout_s)

    def publish_alert(self, message: AlertMessage) -> None:
        """Publish on the alerts topic at QoS 1 and wait for the PUBACK; raises `NotifyError`."""
        try:
            self._publisher.publish(ALERTS_TOPIC, encode(message), retain=False)
        except PublishError as e:
            raise NotifyError(f"alert {message.id}: {e}") from e
