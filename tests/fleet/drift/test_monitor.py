"""The drift monitor on windows that went device → Mosquitto → ingester → database.

The agent does not publish drift windows yet (agent/daemon.py has no drift monitor
wired), so a plain paho client publishes the `DriftMessage`s an agent would.
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from sqlmodel import Session, select

from edgefleet.fleet.drift.alerts import AlertKind
from edgefleet.fleet.drift.monitor import DriftMonitorService
from edgefleet.fleet.drift.notify import MqttAlertPublisher, Notifier, WebhookPayload
from edgefleet.fleet.drift.rollup import SliceFilter
from edgefleet.fleet.drift.store import load_windows
from edgefleet.fleet.store.drift_tables import DriftAlert, Webhook, WebhookDelivery
from edgefleet.fleet.webhooks.dispatcher import RetryPolicy
from edgefleet.fleet.webhooks.policy import DestinationPolicy
from edgefleet.shared.drift.compact import quantize
from edgefleet.shared.messages import AlertMessage, utcnow
from edgefleet.shared.topics import ALERTS_TOPIC
from tests.fleet.drift.conftest import MODEL, VERSION, Fleet, Window, WineData
from tests.support.webhooks import WebhookReceiver

LOOPBACK_ALLOWED = DestinationPolicy.of([], ["127.0.0.0/8"])


def monitor(fleet: Fleet, *, slices=("device",), cooldown_s: float = 600.0, publisher=None):
    notifier = Notifier(
        fleet.engine,
        publisher=publisher,
        policy=RetryPolicy(backoff_s=0.01, max_attempts=4),
        destinations=LOOPBACK_ALLOWED,  # the test receivers listen on loopback
    )
    return DriftMonitorService(
        fleet.engine, notifier, lookback_s=3600, cooldown_s=cooldown_s, slice_kinds=slices
    )


def finished_deliveries(fleet: Fleet, count: int) -> list[WebhookDelivery]:
    """Wait until ``count`` webhook deliveries are finished (they run off the drift thread)."""
    deadline = time.monotonic() + 15
    while True:
        with Session(fleet.engine) as session:
            rows = list(session.exec(select(WebhookDelivery).order_by(WebhookDelivery.id)).all())
        if len(rows) == count and all(r.finished_at is not None for r in rows):
            return rows
        assert time.monotonic() < deadline, f"deliveries not finished: {rows}"
        time.sleep(0.02)


def kinds(alerts: list[DriftAlert]) -> list[tuple[str, str]]:
    return sorted((a.slice_key, a.kind) for a in alerts)


def test_shifted_windows_raise_data_drift_and_unshifted_do_not_then_cool_down(
    fleet: Fleet, wine: WineData
) -> None:
    fleet.register(wine.profile)
    now = utcnow()
    start = now - timedelta(minutes=10)
    fleet.send(
        [
            Window("calm", start, wine.unlabelled(250, seed=1)),
            Window("hot", start, wine.unlabelled(250, shift=1.0, seed=2)),
        ]
    )
    service = monitor(fleet, cooldown_s=600)
    raised = service.run_once(now)
    assert kinds(raised) == [
        ("device:hot", AlertKind.DATA_DRIFT),
        ("device:hot", AlertKind.PREDICTION_DRIFT),
    ]
    data = next(a for a in raised if a.kind == AlertKind.DATA_DRIFT)
    assert data.model_name == MODEL
    assert data.model_version == VERSION
    assert data.slice == {"device": "hot"}
    assert data.evidence["count"] == 250
    assert len(data.evidence["drifted_inputs"]) == wine.model.n_features
    # Still drifting a minute later: the cool-down holds it back; after it, it alerts again.
    assert service.run_once(now + timedelta(seconds=60)) == []
    later = service.run_once(now + timedelta(seconds=601))
    assert kinds(later) == kinds(raised)
    with Session(fleet.engine) as session:
        assert len(session.exec(select(DriftAlert)).all()) == 4


def test_worse_labels_raise_performance_drop_with_drift_and_concept_drift_without(
    fleet: Fleet, wine: WineData
) -> None:
    fleet.register(wine.profile)
    now = utcnow()
    start = now - timedelta(minutes=5)
    fleet.send(
        [
            Window("fine", start, wine.labelled(250, seed=3)),
            Window("relabelled", start, wine.labelled(250, wrong=0.3, seed=4)),
            Window("moved", start, wine.labelled(250, shift=1.5, seed=5)),
        ]
    )
    raised = monitor(fleet).run_once(now)
    by_slice: dict[str, set[str]] = {}
    for alert in raised:
        by_slice.setdefault(alert.slice_key, set()).add(alert.kind)
    assert "device:fine" not in by_slice
    assert by_slice["device:relabelled"] == {AlertKind.CONCEPT_DRIFT}
    assert AlertKind.PERFORMANCE_DROP in by_slice["device:moved"]
    assert AlertKind.CONCEPT_DRIFT not in by_slice["device:moved"]
    concept = next(a for a in raised if a.kind == AlertKind.CONCEPT_DRIFT)
    accuracy = next(d for d in concept.evidence["metric_drops"] if d["metric"] == "accuracy")
    assert accuracy["baseline"] - accuracy["current"] > 0.2
    assert concept.severity == "critical"


def test_windows_of_a_version_without_a_reference_are_not_judged(
    fleet: Fleet, wine: WineData
) -> None:
    now = utcnow()
    fleet.send([Window("hot", now - timedelta(minutes=1), wine.unlabelled(250, shift=2.0))])
    assert monitor(fleet).run_once(now) == []


def test_an_alert_reaches_mqtt_subscribers_and_a_flaky_webhook_exactly_once(
    fleet: Fleet, wine: WineData, webhook_receiver: WebhookReceiver
) -> None:
    fleet.register(wine.profile)
    webhook_receiver.fail_first = 2
    with Session(fleet.engine) as session:
        session.add(
            Webhook(id="hook1", url=webhook_receiver.url, kinds=["data_drift"], created_at=utcnow())
        )
        session.commit()
    got: list[bytes] = []
    subscribed = threading.Event()
    arrived = threading.Event()
    subscriber = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2)
    subscriber.on_subscribe = lambda *_a: subscribed.set()

    def on_message(_c, _u, message) -> None:
        got.append(message.payload)
        arrived.set()

    subscriber.on_message = on_message
    subscriber.connect("127.0.0.1", fleet.broker.port)
    subscriber.subscribe(ALERTS_TOPIC, qos=1)
    subscriber.loop_start()
    publisher = MqttAlertPublisher(fleet.service.settings, timeout_s=5)
    publisher.start()
    try:
        assert subscribed.wait(5)
        assert publisher.wait_connected(5)
        now = utcnow()
        fleet.send([Window("hot", now - timedelta(minutes=2), wine.unlabelled(250, shift=1.0))])
        raised = monitor(fleet, slices=("fleet",), publisher=publisher).run_once(now)
        assert kinds(raised) == [
            ("fleet", AlertKind.DATA_DRIFT),
            ("fleet", AlertKind.PREDICTION_DRIFT),
        ]
        assert arrived.wait(5)
        finished_deliveries(fleet, 1)  # delivery runs on its own thread
    finally:
        publisher.stop()
        subscriber.loop_stop()
        subscriber.disconnect()
    messages = [AlertMessage.model_validate_json(p) for p in got]
    assert sorted(m.kind for m in messages) == ["data_drift", "prediction_drift"]
    assert {m.id for m in messages} == {a.id for a in raised}
    data = next(m for m in messages if m.kind == "data_drift")
    assert data.evidence["model"] == {"name": MODEL, "version": VERSION}
    assert all(a.published for a in raised)
    # The webhook only takes data_drift: it failed twice with 503, then took it once.
    assert webhook_receiver.failed == 2
    assert len(webhook_receiver.received()) == 1
    payload = WebhookPayload.model_validate(webhook_receiver.received()[0])
    assert payload.alert.id == data.id
    assert payload.retraining.model.name == MODEL
    assert payload.retraining.reason == "data_drift"
    assert payload.retraining.slice == {}
    assert payload.retraining.evidence["drifted_inputs"]
    deliveries = finished_deliveries(fleet, 1)
    assert [(d.status, d.attempts) for d in deliveries] == [("delivered", 3)]
    assert [e.get("status_code") for e in deliveries[0].log] == [503, 503, 204]


def test_a_webhook_that_never_answers_is_given_up_and_the_alert_is_kept(
    fleet: Fleet, wine: WineData
) -> None:
    fleet.register(wine.profile)
    with Session(fleet.engine) as session:
        # Nothing listens on port 9 (discard) on the test machine: connection refused.
        session.add(Webhook(id="dead", url="http://127.0.0.1:9/x", created_at=utcnow()))
        session.commit()
    now = utcnow()
    fleet.send([Window("hot", now - timedelta(minutes=2), wine.unlabelled(250, shift=1.0))])
    raised = monitor(fleet, slices=("fleet",)).run_once(now)
    assert len(raised) == 2
    deliveries = finished_deliveries(fleet, 2)
    with Session(fleet.engine) as session:
        assert len(session.exec(select(DriftAlert)).all()) == 2
    assert [(d.status, d.attempts) for d in deliveries] == [("failed", 4), ("failed", 4)]
    assert all("ConnectError" in e["error"] for d in deliveries for e in d.log)


def test_the_background_thread_raises_alerts_on_its_own(fleet: Fleet, wine: WineData) -> None:
    fleet.register(wine.profile)
    fleet.send([Window("hot", utcnow() - timedelta(minutes=1), wine.unlabelled(250, shift=1.0))])
    service = monitor(fleet, slices=("fleet",))
    service.interval_s = 0.05
    service.start()
    try:
        deadline = utcnow() + timedelta(seconds=10)
        while utcnow() < deadline:
            with Session(fleet.engine) as session:
                if len(session.exec(select(DriftAlert)).all()) >= 2:
                    break
            time.sleep(0.05)
        with Session(fleet.engine) as session:
            assert len(session.exec(select(DriftAlert)).all()) == 2
    finally:
        service.stop()


def test_an_older_agents_version_1_windows_are_stored_and_judged_beside_compact_ones(
    fleet: Fleet, wine: WineData
) -> None:
    fleet.register(wine.profile)
    now = utcnow()
    start = now - timedelta(minutes=10)
    old = wine.unlabelled(250, shift=1.0, seed=2)  # full precision, as older agents send it
    new = quantize(wine.unlabelled(250, shift=1.0, seed=3), wine.profile)
    calm = quantize(wine.unlabelled(250, seed=1), wine.profile)
    fleet.send([Window("old-agent", start, old)], version1=True)
    fleet.send([Window("new-agent", start, new), Window("calm", start, calm)])
    with Session(fleet.engine) as session:
        records = load_windows(session, SliceFilter(model=MODEL))
    assert {r.device_id: r.sketch for r in records} == {
        "old-agent": old,
        "new-agent": new,
        "calm": calm,
    }
    raised = monitor(fleet, slices=("device", "fleet")).run_once(now)
    assert kinds(raised) == [
        ("device:new-agent", AlertKind.DATA_DRIFT),
        ("device:new-agent", AlertKind.PREDICTION_DRIFT),
        ("device:old-agent", AlertKind.DATA_DRIFT),
        ("device:old-agent", AlertKind.PREDICTION_DRIFT),
        ("fleet", AlertKind.DATA_DRIFT),
        ("fleet", AlertKind.PREDICTION_DRIFT),
    ]
    fleet_alert = next(a for a in raised if a.slice_key == "fleet")
    assert fleet_alert.evidence["count"] == 750
