"""Raise alerts: store them, publish them on MQTT, POST them to webhooks.

Order matters: the alert row is committed first, so an alert exists (and the cool-down
sees it) even when the broker or every webhook is down. MQTT delivery is QoS 1 on
``edgefleet/v1/fleet/alerts``, not retained (an alert is an event, not a state).
Webhooks get a JSON POST (`WebhookPayload`) with up to ``max_attempts`` tries and
exponential backoff; every attempt is logged in ``drift_webhook_delivery``. A 4xx other
than 408/429 is the receiver refusing the payload, so it is not retried. Every attempt
goes through `edgefleet.fleet.webhooks.transport.post_checked`: a destination the
policy refuses (internal address, host not allowed) fails without a packet sent. A
webhook with a secret gets each attempt signed (``X-Edgefleet-Signature``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol

import httpx
from pydantic import BaseModel, Field
from sqlalchemy import Engine
from sqlmodel import Session, select

from edgefleet.fleet.drift.alerts import AlertDecision
from edgefleet.fleet.drift.store import new_id
from edgefleet.fleet.errors import PublishError
from edgefleet.fleet.mqtt_publisher import MqttPublisher
from edgefleet.fleet.settings import FleetSettings
from edgefleet.fleet.store.drift_tables import (
    DriftAlert,
    Webhook,
    WebhookDelivery,
    WebhookSecret,
)
from edgefleet.fleet.webhooks.policy import DestinationPolicy, DestinationRefusedError
from edgefleet.fleet.webhooks.resolver import ResolveError, Resolver, SystemResolver
from edgefleet.fleet.webhooks.signing import DELIVERY_HEADER, SIGNATURE_HEADER, signature_header
from edgefleet.fleet.webhooks.transport import post_checked, webhook_client
from edgefleet.shared.messages import AlertMessage, ModelRef, encode, utcnow
from edgefleet.shared.topics import ALERTS_TOPIC

logger = logging.getLogger(__name__)

RETRYABLE_4XX = frozenset({408, 429})


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


@dataclass(frozen=True)
class RetryPolicy:
    """Webhook retries: ``backoff_s * 2**k`` between tries, capped at ``max_backoff_s``."""

    max_attempts: int = 5
    backoff_s: float = 1.0
    max_backoff_s: float = 60.0
    timeout_s: float = 5.0

    def delay_s(self, attempt: int) -> float:
        """The wait after failed attempt number ``attempt`` (1-based)."""
        return float(min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1)))


def deliver(
    engine: Engine,
    webhook: Webhook,
    payload: bytes,
    alert_id: str,
    *,
    policy: RetryPolicy,
    client: httpx.Client,
    sleep: Callable[[float], None],
    destinations: DestinationPolicy,
    resolver: Resolver,
    secret: str | None,
    clock: Callable[[], float] = time.time,
) -> WebhookDelivery:
    """POST ``payload`` to ``webhook`` until it answers 2xx or the attempts run out.

    Every attempt is written to the delivery row as it happens. Never raises for a
    transport failure: the outcome is the row's ``status`` (delivered or failed). A
    destination the policy refuses (checked at each attempt, after resolving the name)
    fails the delivery at once, without sending anything. With a ``secret`` each attempt
    is signed afresh (`edgefleet.fleet.webhooks.signing`); every attempt carries the
    delivery's id, so a receiver can drop a retry it already took.
    """
    with Session(engine, expire_on_commit=False) as session:
        delivery = WebhookDelivery(webhook_id=webhook.id, alert_id=alert_id, created_at=utcnow())
        session.add(delivery)
        session.commit()
        for attempt in range(1, policy.max_attempts + 1):
            entry: dict[str, Any] = {"attempt": attempt, "at": utcnow().isoformat()}
            retry = True
            headers = {
                "Content-Type": "application/json",
                "X-Edgefleet-Alert": alert_id,
                DELIVERY_HEADER: str(delivery.id),
            }
            if secret is not None:
                headers[SIGNATURE_HEADER] = signature_header(secret, payload, int(clock()))
            try:
                response = post_checked(
                    client,
                    webhook.url,
                    payload,
                    headers,
                    destinations=destinations,
                    resolver=resolver,
                    timeout_s=policy.timeout_s,
                )
                entry["status_code"] = response.status_code
                ok = response.is_success
                retry = not ok and (
                    response.status_code >= 500 or response.status_code in RETRYABLE_4XX
                )
            except DestinationRefusedError as e:
                # The operator's policy, not a transient failure: retrying cannot help.
                entry["error"] = f"refused: {e.reason}"
                ok = retry = False
            except (httpx.HTTPError, ResolveError) as e:
                entry["error"] = f"{type(e).__name__}: {e}"
                ok = False
            delivery.attempts = attempt
            delivery.log = [*delivery.log, entry]
            if ok or not retry or attempt == policy.max_attempts:
                delivery.status = "delivered" if ok else "failed"
                delivery.finished_at = utcnow()
            session.add(delivery)
            session.commit()
            if delivery.finished_at is not None:
                break
            sleep(policy.delay_s(attempt))
        if delivery.status == "failed":
            logger.warning(
                "webhook %s gave up on alert %s after %s attempts: %s",
                webhook.url,
                alert_id,
                delivery.attempts,
                delivery.log[-1],
            )
        return delivery


class Notifier:
    """Stores decisions as alerts and delivers them (MQTT, then webhooks)."""

    def __init__(
        self,
        engine: Engine,
        *,
        publisher: AlertPublisher | None,
        policy: RetryPolicy | None = None,
        sleep: Callable[[float], None] | None = None,
        destinations: DestinationPolicy | None = None,
        resolver: Resolver | None = None,
    ) -> None:
        """``destinations`` defaults to refusing every internal address."""
        self._engine = engine
        self._publisher = publisher
        self._policy = policy or RetryPolicy()
        self._destinations = destinations or DestinationPolicy()
        self._resolver = resolver or SystemResolver()
        self._stop = threading.Event()
        self._sleep = sleep or self._wait

    def _wait(self, seconds: float) -> None:
        self._stop.wait(seconds)

    def close(self) -> None:
        """Cut short any backoff wait (used when the monitor stops)."""
        self._stop.set()

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
        targets = [w for w in webhooks if not w.kinds or alert.kind in w.kinds]
        if not targets:
            return
        payload = WebhookPayload(alert=alert_message(alert), retraining=retraining_trigger(alert))
        body = payload.model_dump_json(by_alias=True).encode()
        for webhook in targets:
            with webhook_client() as client:
                deliver(
                    self._engine,
                    webhook,
                    body,
                    alert.id,
                    policy=self._policy,
                    client=client,
                    sleep=self._sleep,
                    destinations=self._destinations,
                    resolver=self._resolver,
                    secret=secrets.get(webhook.id),
                )


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
