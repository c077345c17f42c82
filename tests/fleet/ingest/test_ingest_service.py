"""The running fleet service against a real Mosquitto and real SQLite / PostgreSQL."""

from __future__ import annotations

import socket
import sqlite3
import time
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from prometheus_client import CollectorRegistry
from sqlalchemy import func, select
from sqlmodel import Session

from edgefleet.fleet.ingest import Ingester, IngestMetrics
from edgefleet.fleet.service import FleetService
from edgefleet.fleet.settings import FleetSettings
from edgefleet.fleet.store import DeadLetter, TelemetryRow, create_all, make_engine
from edgefleet.shared.messages import DriftMessage, utcnow
from edgefleet.shared.topics import Channel, device_topic
from tests.fleet.factories import state, telemetry
from tests.fleet.publisher import device_message, publish, wait_until
from tests.support.fleet_fixtures import MakeFleet
from tests.support.mosquitto import MosquittoBroker


@pytest.fixture
def service(fleet: FleetService) -> FleetService:
    """These tests read the same replica their ``api`` client talks to."""
    return fleet


def rows(service: FleetService, table: type) -> int:
    with Session(service.engine) as s:
        return int(s.scalar(select(func.count()).select_from(table)) or 0)


def test_published_state_and_telemetry_show_up_online_with_fresh_telemetry(
    service: FleetService, api: httpx.Client, mosquitto: MosquittoBroker, unique_id: str
) -> None:
    device_id = f"dev-{unique_id}"
    now = utcnow()
    publish(
        mosquitto.port,
        [
            device_message(Channel.STATE, state(device_id, 1, ts=now), retain=True),
            device_message(Channel.TELEMETRY, telemetry(device_id, 2, ts=now)),
        ],
    )
    wait_until(
        lambda: api.get(f"/v1/devices/{device_id}/telemetry").json().get("items"), what="telemetry"
    )
    body = api.get(f"/v1/devices/{device_id}").json()
    assert body["online"] is True
    assert body["hardware"] == "rpi4"
    items = api.get(f"/v1/devices/{device_id}/telemetry").json()["items"]
    assert [(i["seq"], i["cpu_percent"]) for i in items] == [(2, 12.5)]
    listed = api.get("/v1/devices", params={"tag": "line-1", "online": "true"}).json()
    assert [d["device_id"] for d in listed["items"]] == [device_id]
    assert api.get("/v1/devices", params={"tag": "nope"}).json()["total"] == 0
    assert api.get("/v1/devices", params={"online": "false"}).json()["total"] == 0


def test_the_same_seq_published_twice_is_stored_once(
    service: FleetService, mosquitto: MosquittoBroker, unique_id: str
) -> None:
    message = device_message(Channel.TELEMETRY, telemetry(f"dev-{unique_id}", 5))
    publish(mosquitto.port, [message, message, message])
    wait_until(
        lambda: service.metrics.total("edgefleet_ingest_duplicates_total") == 2, what="duplicates"
    )
    assert rows(service, TelemetryRow) == 1


def test_the_last_will_turns_a_device_offline(
    service: FleetService, api: httpx.Client, mosquitto: MosquittoBroker, unique_id: str
) -> None:
    device_id = f"dev-{unique_id}"
    agent = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=device_id)
    will_topic, will_payload, _ = device_message(Channel.STATE, state(device_id, 2, online=False))
    agent.will_set(will_topic, will_payload, qos=1, retain=True)
    agent.connect("127.0.0.1", mosquitto.port, keepalive=5)
    agent.loop_start()
    topic, payload, _ = device_message(Channel.STATE, state(device_id, 1, ts=utcnow()))
    agent.publish(topic, payload, qos=1, retain=True).wait_for_publish(5)
    wait_until(lambda: api.get(f"/v1/devices/{device_id}").status_code == 200, what="birth")
    assert api.get(f"/v1/devices/{device_id}").json()["online"] is True
    agent.loop_stop()
    sock = agent.socket()
    assert isinstance(sock, socket.socket)
    sock.shutdown(socket.SHUT_RDWR)  # dies without DISCONNECT, so the broker sends the will
    sock.close()
    wait_until(lambda: api.get(f"/v1/devices/{device_id}").json()["online"] is False, what="will")
    assert api.get(f"/v1/devices/{device_id}").json()["offline_reason"] == "will"


def test_garbage_on_every_device_topic_is_dead_lettered_and_ingest_goes_on(
    service: FleetService, api: httpx.Client, mosquitto: MosquittoBroker, unique_id: str
) -> None:
    device_id = f"dev-{unique_id}"
    bad = [b"\x00\xff\xfe", b"{not json", b'{"schema": "edgefleet/v1/telemetry", "seq": -1}']
    topics = [
        device_topic(device_id, c)
        for c in (Channel.STATE, Channel.TELEMETRY, Channel.EVENTS, Channel.DRIFT)
    ]
    topics.append(f"edgefleet/v1/devices/{device_id}/firmware")
    garbage = [(topic, payload, False) for topic in topics for payload in bad]
    wrong_device = device_message(Channel.TELEMETRY, telemetry("someone-else", 1))
    garbage.append((device_topic(device_id, Channel.TELEMETRY), wrong_device[1], False))
    now = utcnow()
    drift = DriftMessage(device_id=device_id, seq=4, window_start=now, window_end=now, count=3)
    valid = [
        device_message(Channel.TELEMETRY, telemetry(device_id, 3)),
        device_message(Channel.DRIFT, drift),
    ]
    publish(mosquitto.port, garbage + valid)
    wait_until(
        lambda: service.metrics.total("edgefleet_ingest_persisted_total") == 2,
        what="valid messages",
    )
    wait_until(lambda: rows(service, DeadLetter) == len(garbage), what="dead letters")
    assert service.metrics.value("edgefleet_ingest_dead_lettered_total") == len(garbage)
    assert service.metrics.value("edgefleet_ingest_received_total") == len(garbage) + 2
    metrics = httpx.get(f"{service.base_url}/metrics").text
    assert f"edgefleet_ingest_dead_lettered_total {float(len(garbage))}" in metrics
    assert api.get(f"/v1/devices/{device_id}/telemetry").json()["items"][0]["seq"] == 3


def test_bad_requests_get_clear_errors(
    service: FleetService, api: httpx.Client, mosquitto: MosquittoBroker
) -> None:
    publish(mosquitto.port, [device_message(Channel.TELEMETRY, telemetry("known", 1))])
    wait_until(lambda: api.get("/v1/devices/known").status_code == 200, what="device")
    anonymous = httpx.get(f"{service.base_url}/v1/devices")
    assert anonymous.status_code == 401
    assert anonymous.headers["www-authenticate"] == "Bearer"
    assert anonymous.json()["error"]["code"] == "unauthenticated"
    wrong = httpx.get(
        f"{service.base_url}/v1/devices", headers={"Authorization": "Bearer not-a-token"}
    )
    assert wrong.status_code == 401
    missing = api.get("/v1/devices/never-seen")
    assert missing.status_code == 404
    assert missing.json()["error"] == {
        "code": "not_found",
        "message": "device 'never-seen' has never been seen by this fleet",
    }
    assert api.get("/v1/devices/never-seen/telemetry").status_code == 404
    assert api.get("/v1/devices/known/telemetry", params={"since": "yesterday"}).status_code == 422
    assert api.get("/v1/devices/known/telemetry", params={"limit": 0}).status_code == 422
    backwards = api.get(
        "/v1/devices/known/telemetry",
        params={"since": "2026-03-02T00:00:00Z", "until": "2026-03-01T00:00:00Z"},
    )
    assert backwards.status_code == 422
    assert "must be before" in backwards.json()["error"]["message"]
    window = api.get(
        "/v1/devices/known/telemetry",
        params={"since": "2026-03-01T00:00:00Z", "until": "2026-03-01T12:00:01Z"},
    )
    assert [i["seq"] for i in window.json()["items"]] == []
    window = api.get("/v1/devices/known/telemetry", params={"since": "2026-03-01T12:00:01+00:00"})
    assert [i["seq"] for i in window.json()["items"]] == [1]
    health = httpx.get(f"{service.base_url}/healthz")
    assert health.json() == {
        "status": "ok",
        "database": "ok",
        "ingester": "connected",
        "approval": "four_eyes",
    }


def test_the_ingester_resubscribes_after_the_broker_restarts(
    service: FleetService, api: httpx.Client, mosquitto: MosquittoBroker
) -> None:
    mosquitto.stop()
    assert service.ingester is not None
    wait_until(lambda: not service.ingester.connected, what="disconnect")  # type: ignore[union-attr]
    assert httpx.get(f"{service.base_url}/healthz").status_code == 503
    mosquitto.start()
    assert service.ingester.wait_connected(15)
    time.sleep(0.2)  # the SUBACK follows on_connect
    publish(mosquitto.port, [device_message(Channel.TELEMETRY, telemetry("after-restart", 1))])
    wait_until(
        lambda: api.get("/v1/devices/after-restart").status_code == 200, what="ingest after restart"
    )


def test_two_replicas_split_a_shared_subscription_and_store_each_message_once(
    make_service: MakeFleet, mosquitto: MosquittoBroker, unique_id: str
) -> None:
    first, second = make_service(), make_service()
    assert first.bootstrap_admin_token
    assert second.bootstrap_admin_token is None
    time.sleep(0.2)  # both SUBACKs
    messages = [
        device_message(Channel.TELEMETRY, telemetry(f"dev-{unique_id}-{d}", seq))
        for d in range(10)
        for seq in range(30)
    ]
    publish(mosquitto.port, messages)
    wait_until(lambda: rows(first, TelemetryRow) == len(messages), what="all messages stored")
    received = [s.metrics.value("edgefleet_ingest_received_total") for s in (first, second)]
    assert sum(received) == len(messages), received
    assert min(received) > 0, received
    assert first.metrics.total("edgefleet_ingest_duplicates_total") == 0


def test_a_batch_waits_out_a_locked_database_and_nothing_is_lost(
    tmp_path: Path, mosquitto: MosquittoBroker, unique_id: str
) -> None:
    path = tmp_path / "fleet.db"
    settings = FleetSettings(
        database_url=f"sqlite:///{path}",
        broker_url=mosquitto.url,
        data_dir=tmp_path,
        ingest_flush_interval_s=0.05,
    )
    engine = make_engine(settings.database_url, sqlite_busy_timeout_ms=20)
    create_all(engine)
    metrics = IngestMetrics(CollectorRegistry())
    ingester = Ingester(settings, engine, metrics)
    ingester.start()
    try:
        assert ingester.wait_connected(10)
        time.sleep(0.2)
        locker = sqlite3.connect(path, isolation_level=None)
        locker.execute("BEGIN EXCLUSIVE")
        messages = [
            device_message(Channel.TELEMETRY, telemetry(f"dev-{unique_id}", seq))
            for seq in range(50)
        ]
        publish(mosquitto.port, messages)
        wait_until(lambda: metrics.value("edgefleet_ingest_db_retries_total") >= 2, what="retries")
        locker.execute("COMMIT")
        locker.close()
        wait_until(
            lambda: metrics.total("edgefleet_ingest_persisted_total") == 50, what="all stored"
        )
        with Session(engine) as s:
            assert s.scalar(select(func.count()).select_from(TelemetryRow)) == 50
    finally:
        ingester.stop()
        engine.dispose()
