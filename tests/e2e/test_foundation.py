"""Agent → MQTT → fleet → REST, on a real Mosquitto, with real agent processes.

Each test runs on SQLite and on PostgreSQL (the `database_url` fixture).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlmodel import Session, col, select

from edgefleet.agent.daemon import Agent
from edgefleet.fleet.store.tables import EventRow
from edgefleet.shared.messages import EventKind
from edgefleet.simulators.models import TrainedModel
from tests.e2e.conftest import Console, eventually
from tests.support.agent import REPO, agent_config, toml_config
from tests.support.mosquitto import MosquittoBroker, free_port, wait_for_port

pytestmark = pytest.mark.slow


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()


def _run_agent(config: Path, processes: list[subprocess.Popen[bytes]]) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [sys.executable, "-m", "edgefleet.agent", "run", "--config", str(config)],
        cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    processes.append(process)
    return process


def test_agent_process_shows_online_with_fresh_telemetry_then_offline_on_sigterm_and_sigkill(
    tmp_path: Path,
    mosquitto: MosquittoBroker,
    start_fleet,
    wine_model: TrainedModel,
    unique_id: str,
    processes: list[subprocess.Popen[bytes]],
) -> None:
    console = Console(start_fleet(mosquitto.url))
    polite, killed = f"polite-{unique_id}", f"killed-{unique_id}"
    api_port = free_port()
    polite_agent = _run_agent(
        toml_config(
            tmp_path / "polite.toml",
            mosquitto,
            polite,
            model=wine_model.path,
            api_port=api_port,
            telemetry_interval_s=0.5,
        ),
        processes,
    )
    killed_agent = _run_agent(
        toml_config(tmp_path / "killed.toml", mosquitto, killed, model=wine_model.path),
        processes,
    )

    for device_id in (polite, killed):
        device = eventually(
            lambda d=device_id: (x := console.device(d)) and x["online"] and x,
            what=f"{device_id} online in the fleet",
        )
        assert device["hardware"] == "test-rig"
        assert device["tags"] == ["test"]
        assert device["model_name"] == "wine"
        assert device["model_version"] == "1.0.0"
        assert "onnx" in device["runtimes"]

    # Real inferences through the device's local API show up in the fleet's telemetry.
    wait_for_port(api_port)
    rows = wine_model.x_test[:5].tolist()
    for row in rows:
        response = httpx.post(
            f"http://127.0.0.1:{api_port}/v1/predict", json={"inputs": {"input": [row]}}
        )
        assert response.status_code == 200, response.text
    fresh = eventually(
        lambda: [t for t in console.telemetry(polite) if t["inferences_total"] >= len(rows)],
        what="telemetry counting the inferences",
    )
    # Oldest first: the first report counting all five closed the interval of (at least)
    # the last of them, so it has their latencies; a later, idle one has none.
    latest = fresh[0]
    assert latest["inferences"] > 0
    assert latest["latency_p50_ms"] is not None
    assert latest["latency_p50_ms"] > 0
    assert latest["rss_bytes"] > 10_000_000
    assert latest["disk_free_bytes"] > 0

    polite_agent.send_signal(signal.SIGTERM)
    assert polite_agent.wait(timeout=20) == 0
    offline = eventually(
        lambda: (x := console.device(polite)) and not x["online"] and x,
        what="the SIGTERMed agent offline",
    )
    assert offline["offline_reason"] == "shutdown"

    killed_agent.kill()  # no goodbye: only the broker's will can tell the fleet
    gone = eventually(
        lambda: (x := console.device(killed)) and not x["online"] and x,
        timeout_s=30,
        what="the SIGKILLed agent offline through its will",
    )
    assert gone["offline_reason"] == "will"


def _stored_events(engine, device_id: str) -> list[EventRow]:
    with Session(engine) as session:
        return list(
            session.exec(
                select(EventRow)
                .where(col(EventRow.device_id) == device_id)
                .order_by(col(EventRow.seq))
            )
        )


@pytest.mark.parametrize("restart_agent_during_outage", [False, True])
def test_every_qos1_message_from_a_broker_outage_is_stored_exactly_once_in_order(
    tmp_path: Path,
    durable_mosquitto: MosquittoBroker,
    start_fleet,
    unique_id: str,
    restart_agent_during_outage: bool,
) -> None:
    # The fleet keeps a persistent session on a broker with persistence, so the broker
    # queues replayed messages for it even if the agents come back before the fleet
    # does. A plain subscription: Mosquitto does not queue shared-subscription messages
    # for a disconnected session (see README, "Delivery guarantees").
    fleet = start_fleet(
        durable_mosquitto.url,
        broker_client_id=f"fleet-{unique_id}",
        broker_persistent_session=True,
        shared_subscription=False,
    )
    device_id = f"outage-{unique_id}"
    config = agent_config(tmp_path, durable_mosquitto, device_id, api={"enabled": False})
    agent = Agent(config)
    agent.start()
    eventually(lambda: agent.connected, what="the agent connected")

    published: list[int] = []

    def produce(n: int, start: int) -> None:
        for i in range(start, start + n):
            seq = agent.publish_event(EventKind.INFO, reason=f"message {i}", detail={"i": i})
            assert seq is not None
            published.append(seq)

    produce(10, 0)
    eventually(lambda: len(_stored_events(fleet.engine, device_id)) == 10, what="10 events")

    durable_mosquitto.stop()
    produce(20, 10)
    if restart_agent_during_outage:
        agent.stop(timeout_s=1.0)  # cannot flush: the broker is down; the outbox keeps it all
        agent = Agent(config)
        agent.start()
    produce(20, 30)
    assert agent.outbox.depth >= 40
    durable_mosquitto.start()

    try:
        stored = eventually(
            lambda: (rows := _stored_events(fleet.engine, device_id)) and len(rows) >= 50 and rows,
            timeout_s=30,
            what="all 50 events in the database",
        )
        assert [row.seq for row in stored] == published  # each exactly once, none missing
        assert [row.detail["i"] for row in stored] == list(range(50))
        by_arrival = sorted(stored, key=lambda row: (row.received_at, row.seq))
        assert [row.seq for row in by_arrival] == published, "replayed out of order"
        eventually(lambda: agent.outbox.depth == 0, what="the outbox drained")
    finally:
        agent.stop()
