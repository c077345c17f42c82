"""Webhook delivery on its own lanes: slow or failing receivers delay only themselves.

Real HTTP on loopback (`tests.support.webhooks`), a real database; a receiver that
"hangs" accepts the request and holds it unanswered.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable

from sqlalchemy import Engine
from sqlmodel import Session, col, select

from edgefleet.fleet.drift.notify import Notifier, stored_webhook_body, webhook_body
from edgefleet.fleet.store.drift_tables import DriftAlert, Webhook, WebhookDelivery, WebhookSecret
from edgefleet.fleet.webhooks.dispatcher import RetryPolicy, WebhookDispatcher
from edgefleet.fleet.webhooks.policy import DestinationPolicy, IPAddress
from edgefleet.fleet.webhooks.signing import DELIVERY_HEADER, SIGNATURE_HEADER, verify_signature
from edgefleet.shared.messages import utcnow
from tests.fleet.publisher import wait_until
from tests.fleet.webhooks.conftest import LOOPBACK, decision
from tests.support.fleet_fixtures import MakeFleet
from tests.support.webhooks import WebhookReceiver

ALLOW_LOOPBACK = DestinationPolicy.of([], LOOPBACK)
FAST = RetryPolicy(max_attempts=3, backoff_s=0.01, timeout_s=1.0)


def add_webhook(engine: Engine, hook_id: str, url: str, secret: str | None = None) -> Webhook:
    webhook = Webhook(id=hook_id, url=url, created_at=utcnow())
    with Session(engine, expire_on_commit=False) as session:
        session.add(webhook)
        if secret is not None:
            session.add(WebhookSecret(webhook_id=hook_id, secret=secret, created_at=utcnow()))
        session.commit()
    return webhook


def deliveries(engine: Engine, hook_id: str) -> list[WebhookDelivery]:
    with Session(engine) as session:
        return list(
            session.exec(
                select(WebhookDelivery)
                .where(col(WebhookDelivery.webhook_id) == hook_id)
                .order_by(col(WebhookDelivery.id))
            ).all()
        )


def test_a_hanging_webhook_delays_neither_alert_raising_nor_another_webhook(
    engine: Engine, webhook_receivers: Callable[[], WebhookReceiver]
) -> None:
    hanging, healthy = webhook_receivers(), webhook_receivers()
    hanging.hang_s = 30.0  # far beyond the attempt timeout and the whole test
    add_webhook(engine, "hanging", hanging.url)
    add_webhook(engine, "healthy", healthy.url)
    notifier = Notifier(
        engine,
        publisher=None,
        policy=RetryPolicy(max_attempts=3, backoff_s=0.01, timeout_s=10.0),
        destinations=ALLOW_LOOPBACK,
    )
    try:
        started = time.monotonic()
        first = notifier.raise_alerts([decision("device:a")], utcnow())
        wait_until(lambda: hanging.arrived == 1, what="the hanging receiver got the POST")
        second = notifier.raise_alerts([decision("device:b")], utcnow())
        raising_s = time.monotonic() - started
        wait_until(lambda: len(healthy.received()) == 2, timeout_s=5, what="both alerts")
        healthy_s = time.monotonic() - started
    finally:
        notifier.close()
    # The hanging attempt holds its lane for 10 s; alerts and the other lane did not wait.
    assert raising_s < 2.0, f"raising two alerts took {raising_s:.1f}s"
    assert healthy_s < 3.0, f"the healthy webhook waited {healthy_s:.1f}s"
    assert [b["alert"]["id"] for b in healthy.received()] == [first[0].id, second[0].id]
    assert [d.status for d in deliveries(engine, "healthy")] == ["delivered", "delivered"]
    assert hanging.received() == []


def test_a_full_lane_fails_the_extra_delivery_and_says_so(
    engine: Engine, webhook_receiver: WebhookReceiver
) -> None:
    webhook_receiver.hang_s = 30.0
    webhook = add_webhook(engine, "slow", webhook_receiver.url)
    dispatcher = WebhookDispatcher(
        engine,
        policy=RetryPolicy(max_attempts=1, timeout_s=10.0),
        destinations=ALLOW_LOOPBACK,
        queue_size=2,
    )
    dispatcher.start()
    try:
        for n in range(4):
            dispatcher.submit(f"alert{n}", b"{}", [(webhook, None)])
        rows = deliveries(engine, "slow")
        assert [r.status for r in rows] == ["pending", "pending", "failed", "failed"]
        assert "queue was full (2 waiting)" in rows[2].log[-1]["error"]
    finally:
        dispatcher.stop(timeout_s=0.5)


def test_stop_cuts_a_backoff_short_and_leaves_the_delivery_pending(
    engine: Engine, webhook_receiver: WebhookReceiver
) -> None:
    webhook_receiver.fail_first = 100
    webhook = add_webhook(engine, "flaky", webhook_receiver.url)
    dispatcher = WebhookDispatcher(
        engine,
        policy=RetryPolicy(max_attempts=5, backoff_s=60.0),
        destinations=ALLOW_LOOPBACK,
    )
    dispatcher.start()
    dispatcher.submit("alert1", b"{}", [(webhook, None)])
    wait_until(lambda: deliveries(engine, "flaky")[0].attempts == 1, what="the first attempt")
    started = time.monotonic()
    dispatcher.stop(timeout_s=5)
    assert time.monotonic() - started < 2.0
    (row,) = deliveries(engine, "flaky")
    assert (row.status, row.attempts, row.log[0]["status_code"]) == ("pending", 1, 503)


def test_deliveries_left_pending_by_a_crash_are_sent_at_the_next_start(
    engine: Engine, webhook_receiver: WebhookReceiver
) -> None:
    add_webhook(engine, "hook", webhook_receiver.url, secret="whsec_recovered")
    # What a fleet that died mid-delivery leaves: alerts and pending delivery rows.
    notifier = Notifier(engine, publisher=None, destinations=ALLOW_LOOPBACK)
    notifier.dispatcher.stop()  # dead before its lanes sent anything
    alerts = notifier.raise_alerts([decision("device:a"), decision("device:b")], utcnow())
    assert [d.status for d in deliveries(engine, "hook")] == ["pending", "pending"]
    assert webhook_receiver.arrived == 0
    with Session(engine) as session:
        session.add(
            WebhookDelivery(webhook_id="deleted-hook", alert_id=alerts[0].id, created_at=utcnow())
        )
        session.commit()

    restarted = WebhookDispatcher(engine, policy=FAST, destinations=ALLOW_LOOPBACK)
    restarted.start(body_of=stored_webhook_body(engine))
    try:
        assert restarted.wait_idle(10)
    finally:
        restarted.stop()
    rows = deliveries(engine, "hook")
    assert [r.status for r in rows] == ["delivered", "delivered"]
    got = webhook_receiver.received_requests()
    assert [h[DELIVERY_HEADER] for h, _ in got] == [str(r.id) for r in rows]
    for (headers, body), alert in zip(got, alerts, strict=True):
        with Session(engine) as session:
            stored = session.get(DriftAlert, alert.id)
            assert stored is not None
            assert body == webhook_body(stored)
        verify_signature("whsec_recovered", body, headers[SIGNATURE_HEADER], now=time.time())
    (orphan,) = deliveries(engine, "deleted-hook")
    assert orphan.status == "failed"
    assert "webhook or alert gone" in orphan.log[-1]["error"]


class MetadataResolver:
    """Every name resolves to the cloud metadata address."""

    def resolve(self, host: str, port: int) -> list[IPAddress]:
        return [ipaddress.ip_address("169.254.169.254")]


def test_a_name_resolving_to_metadata_fails_at_once_without_retries(engine: Engine) -> None:
    webhook = add_webhook(engine, "sneaky", "http://hooks.example.org/x")
    dispatcher = WebhookDispatcher(engine, policy=FAST, resolver=MetadataResolver())
    dispatcher.start()
    try:
        dispatcher.submit("alert1", b"{}", [(webhook, None)])
        assert dispatcher.wait_idle(10)
    finally:
        dispatcher.stop()
    (row,) = deliveries(engine, "sneaky")
    assert (row.status, row.attempts) == ("failed", 1)
    assert "refused" in row.log[0]["error"]
    assert "cloud metadata" in row.log[0]["error"]
    assert "status_code" not in row.log[0]


def test_a_fleet_stopped_mid_delivery_sends_it_after_restart(
    engine: Engine, make_service: MakeFleet, webhook_receiver: WebhookReceiver
) -> None:
    webhook_receiver.fail_first = 1  # the first attempt fails; the retry waits 60 s
    add_webhook(engine, "hook", webhook_receiver.url)
    settings = {"webhook_allowed_networks": LOOPBACK, "webhook_backoff_s": 60.0}
    fleet = make_service(**settings)
    assert fleet.webhooks is not None
    notifier = Notifier(engine, publisher=None, dispatcher=fleet.webhooks)
    (alert,) = notifier.raise_alerts([decision()], utcnow())
    wait_until(lambda: webhook_receiver.failed == 1, what="the failed first attempt")
    started = time.monotonic()
    fleet.stop()  # in the backoff wait: cut short, the delivery stays pending
    assert time.monotonic() - started < 5
    assert [d.status for d in deliveries(engine, "hook")] == ["pending"]

    make_service(**settings)
    wait_until(lambda: len(webhook_receiver.received()) == 1, what="the delivery after restart")
    assert webhook_receiver.received()[0]["alert"]["id"] == alert.id
    wait_until(lambda: deliveries(engine, "hook")[0].status == "delivered", what="the row")
    (row,) = deliveries(engine, "hook")
    assert row.attempts == 2
    assert [e.get("status_code") for e in row.log] == [503, 204]


def test_a_recovered_delivery_with_no_attempts_left_is_failed_not_resent(
    engine: Engine, webhook_receiver: WebhookReceiver
) -> None:
    add_webhook(engine, "hook", webhook_receiver.url)
    notifier = Notifier(engine, publisher=None)
    notifier.dispatcher.stop()  # the process that died: rows written, nothing sent
    (alert,) = notifier.raise_alerts([decision()], utcnow())
    with Session(engine) as session:
        (row,) = session.exec(select(WebhookDelivery)).all()
        row.attempts = FAST.max_attempts  # died between the last attempt and its verdict
        session.add(row)
        session.commit()
    dispatcher = WebhookDispatcher(engine, policy=FAST, destinations=ALLOW_LOOPBACK)
    dispatcher.start(body_of=stored_webhook_body(engine))
    try:
        assert dispatcher.wait_idle(10)
    finally:
        dispatcher.stop()
    (row,) = deliveries(engine, "hook")
    assert row.status == "failed"
    assert "no attempts left" in row.log[-1]["error"]
    assert webhook_receiver.arrived == 0
    assert alert.id == row.alert_id
