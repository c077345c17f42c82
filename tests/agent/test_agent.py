"""An in-process `Agent` against a real Mosquitto: birth, desired, stop, outage replay."""

from __future__ import annotations

import http.client
import json
import threading
import time
from pathlib import Path

import pytest

from edgefleet.agent.daemon import Agent
from edgefleet.shared.messages import (
    EventKind,
    StateMessage,
    TelemetryMessage,
    decode_device_message,
)
from edgefleet.shared.topics import Channel
from edgefleet.simulators.models import TrainedModel
from tests.support.agent import Subscriber, agent_config
from tests.support.mosquitto import MosquittoBroker


def topic(device_id: str, channel: str = "+") -> str:
    return f"edgefleet/v1/devices/{device_id}/{channel}"


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
def test_birth_is_retained_and_desired_state_reaches_the_callback(
    tmp_path: Path,
    shared_mosquitto: MosquittoBroker,
    unique_id: str,
    subscribers: list[Subscriber],
    protocol: str,
) -> None:
    device = f"birth-{unique_id}"
    desired: list[bytes] = []
    got_desired = threading.Event()

    def on_desired(payload: bytes) -> None:
        desired.append(payload)
        got_desired.set()

    config = agent_config(
        tmp_path, shared_mosquitto, device, tags=["roof"], broker={"protocol": protocol}
    )
    agent = Agent(config, on_desired=on_desired)
    agent.start()
    try:
        deadline = time.monotonic() + 5
        while not agent.connected and time.monotonic() < deadline:
            time.sleep(0.02)
        assert agent.connected
        # A subscriber that arrives after the birth still gets it: it is retained.
        late = Subscriber(shared_mosquitto.port, [topic(device, "state")])
        subscribers.append(late)
        (birth,) = late.wait_for(lambda r: len(r) >= 1)
        assert birth.retain
        state = decode_device_message(Channel.STATE, device, birth.payload)
        assert isinstance(state, StateMessage)
        assert state.online is True
        assert state.tags == ["roof"]
        assert "onnx" in state.runtimes

        from paho.mqtt import publish

        publish.single(
            topic(device, "desired"),
            b'{"hello": 1}',
            qos=1,
            retain=True,
            hostname="127.0.0.1",
            port=shared_mosquitto.port,
        )
        assert got_desired.wait(5)
        assert desired == [b'{"hello": 1}']
    finally:
        agent.stop(3)


def test_graceful_stop_leaves_a_retained_offline_state_and_flushes(
    tmp_path: Path, shared_mosquitto: MosquittoBroker, unique_id: str, subscribers: list[Subscriber]
) -> None:
    device = f"stop-{unique_id}"
    watcher = Subscriber(shared_mosquitto.port, [topic(device)])
    subscribers.append(watcher)
    agent = Agent(agent_config(tmp_path, shared_mosquitto, device))
    agent.start()
    watcher.wait_for(lambda r: any(x.topic.endswith("/state") for x in r))
    seqs = [agent.publish_event(EventKind.INFO, detail={"n": n}) for n in range(5)]
    assert agent.stop(5) is True
    received = watcher.wait_for(lambda r: len([x for x in r if x.topic.endswith("/state")]) >= 2)
    events = [json.loads(r.payload)["seq"] for r in received if r.topic.endswith("/events")]
    assert events == seqs
    last_state = json.loads(watcher.on("state")[-1].payload)
    assert last_state["online"] is False
    assert last_state["reason"] == "shutdown"
    assert last_state["seq"] > max(s for s in seqs if s is not None)

    retained = Subscriber(shared_mosquitto.port, [topic(device, "state")])
    subscribers.append(retained)
    (state,) = retained.wait_for(lambda r: len(r) >= 1)
    assert state.retain
    assert json.loads(state.payload)["reason"] == "shutdown"


def test_events_during_a_broker_outage_are_replayed_in_order(
    tmp_path: Path,
    durable_mosquitto: MosquittoBroker,
    unique_id: str,
    subscribers: list[Subscriber],
) -> None:
    device = f"outage-{unique_id}"
    # A persistent session on a broker with persistence: the subscriber's queue
    # survives the outage, so whatever the agent replays after it cannot be missed.
    watcher = Subscriber(
        durable_mosquitto.port, [topic(device, "events")], session=f"w-{unique_id}"
    )
    subscribers.append(watcher)
    agent = Agent(agent_config(tmp_path, durable_mosquitto, device))
    agent.start()
    try:
        before = [agent.publish_event(EventKind.INFO, detail={"n": n}) for n in range(5)]
        watcher.wait_for(lambda r: len(r) >= 5)
        durable_mosquitto.stop()
        during = []
        for n in range(5, 45):
            during.append(agent.publish_event(EventKind.INFO, detail={"n": n}))
            time.sleep(0.02)
        assert not agent.connected
        assert agent.status.outbox_depth >= 40
        durable_mosquitto.start()
        expected = before + during
        received = watcher.wait_for(
            lambda r: {json.loads(x.payload)["seq"] for x in r} >= set(expected), timeout_s=10
        )
    finally:
        agent.stop(3)
    seqs = [json.loads(r.payload)["seq"] for r in received]
    first_seen = list(dict.fromkeys(seqs))
    assert first_seen == sorted(first_seen)  # in order; duplicates only re-sends
    assert set(expected) <= set(first_seen)
    ns = [json.loads(r.payload)["detail"]["n"] for r in received]
    assert list(dict.fromkeys(ns)) == list(range(45))


def test_telemetry_reports_the_predictions_served_over_http(
    tmp_path: Path,
    shared_mosquitto: MosquittoBroker,
    unique_id: str,
    subscribers: list[Subscriber],
    wine_model: TrainedModel,
) -> None:
    device = f"telemetry-{unique_id}"
    watcher = Subscriber(shared_mosquitto.port, [topic(device, "telemetry")])
    subscribers.append(watcher)
    config = agent_config(
        tmp_path,
        shared_mosquitto,
        device,
        telemetry_interval_s=0.5,
        model={"path": str(wine_model.path), "name": "wine", "version": "1.0.0"},
    )
    agent = Agent(config)
    agent.start()
    try:
        assert agent.api_port
        conn = http.client.HTTPConnection("127.0.0.1", agent.api_port, timeout=5)
        for row in wine_model.x_test[:25]:
            body = json.dumps({"inputs": {"input": [row.tolist()]}}).encode()
            conn.request("POST", "/v1/predict", body=body)
            response = conn.getresponse()
            assert response.status == 200, response.read()
            response.read()
        conn.close()
        received = watcher.wait_for(
            lambda r: any(json.loads(x.payload)["inferences_total"] >= 25 for x in r)
        )
    finally:
        agent.stop(3)
    reports = [TelemetryMessage.model_validate_json(r.payload) for r in received]
    last = reports[-1]
    assert sum(t.inferences for t in reports) == 25
    assert last.inferences_total == 25
    assert last.errors_total == 0
    with_latency = [t for t in reports if t.latency]
    assert with_latency
    latency = with_latency[0].latency
    assert latency is not None
    assert 0 < latency.p50_ms <= latency.p95_ms <= latency.p99_ms < 1000
    assert 10_000_000 < last.rss_bytes < 2_000_000_000
    assert last.disk_free_bytes > 0
    assert last.cpu_percent >= 0
    assert last.active_model is not None
    assert last.active_model.version == "1.0.0"
    assert last.uptime_s > 0.4
    assert 0.3 < last.interval_s < 2
    assert [t.seq for t in reports] == sorted(t.seq for t in reports)
