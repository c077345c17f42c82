"""The drift monitor's thread and webhook delivery are independent.

Windows go device → Mosquitto → ingester → database as in `test_monitor`; the monitor
runs on its background thread with a short interval and no cool-down, so every
evaluation raises alerts. One webhook hangs far longer than the interval.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta

from sqlalchemy import func
from sqlmodel import Session, col, select

from edgefleet.fleet.drift.monitor import DriftMonitorService
from edgefleet.fleet.drift.notify import Notifier
from edgefleet.fleet.store.drift_tables import DriftAlert, Webhook, WebhookDelivery
from edgefleet.fleet.webhooks.dispatcher import RetryPolicy
from edgefleet.fleet.webhooks.policy import DestinationPolicy
from edgefleet.shared.messages import utcnow
from tests.fleet.drift.conftest import Fleet, Window, WineData
from tests.support.webhooks import WebhookReceiver

INTERVAL_S = 0.2


def count(fleet: Fleet, what: type[DriftAlert] | type[WebhookDelivery]) -> int:
    with Session(fleet.engine) as session:
        return int(session.scalar(select(func.count()).select_from(what)) or 0)


def test_a_webhook_hanging_past_the_drift_interval_delays_neither_alerts_nor_other_hooks(
    fleet: Fleet, wine: WineData, webhook_receivers: Callable[[], WebhookReceiver]
) -> None:
    fleet.register(wine.profile)
    hanging, healthy = webhook_receivers(), webhook_receivers()
    hanging.hang_s = 60.0
    with Session(fleet.engine) as session:
        session.add(Webhook(id="hanging", url=hanging.url, created_at=utcnow()))
        session.add(Webhook(id="healthy", url=healthy.url, created_at=utcnow()))
        session.commit()
    fleet.send([Window("hot", utcnow() - timedelta(minutes=1), wine.unlabelled(250, shift=1.0))])
    notifier = Notifier(
        fleet.engine,
        publisher=None,
        policy=RetryPolicy(max_attempts=2, backoff_s=0.01, timeout_s=30.0),
        destinations=DestinationPolicy.of([], ["127.0.0.0/8"]),
    )
    monitor = DriftMonitorService(
        fleet.engine, notifier, interval_s=INTERVAL_S, cooldown_s=0, slice_kinds=("fleet",)
    )
    monitor.start()
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not (
            hanging.arrived >= 1 and count(fleet, DriftAlert) >= 8 and len(healthy.received()) >= 8
        ):
            time.sleep(0.05)
    finally:
        monitor.stop(timeout_s=2)
    # While the first POST to the hanging hook was held (30 s timeout), the monitor kept
    # raising alerts every interval and the healthy hook got each of them.
    assert hanging.arrived == 1
    assert hanging.received() == []
    assert count(fleet, DriftAlert) >= 8
    assert len(healthy.received()) >= 8
    with Session(fleet.engine) as session:
        statuses = session.exec(
            select(WebhookDelivery.status).where(col(WebhookDelivery.webhook_id) == "hanging")
        ).all()
    assert statuses
    assert set(statuses) == {"pending"}  # queued behind the held one
