"""The agent as a real process (``python -m agent run``): will, SIGTERM, restart replay."""

from __future__ import annotations

import json
import signal
import sqlite3
import time
from pathlib import Path

import pytest

from tests.support.agent import Subscriber, toml_config
from tests.support.agent_process import AgentProcess
from tests.support.mosquitto import MosquittoBroker

pytestmark = pytest.mark.slow


def states(watcher: Subscriber) -> list[dict[str, object]]:
    return [json.loads(r.payload) for r in watcher.on("state")]


def outbox_seqs(data_dir: Path) -> list[int]:
    """Read the agent's outbox from outside, as SQLite's WAL allows."""
    with sqlite3.connect(data_dir / "outbox.sqlite3") as db:
        return [row[0] for row in db.execute("SELECT seq FROM messages ORDER BY id")]


def test_sigkill_makes_the_broker_publish_the_retained_will(
    tmp_path: Path,
    shared_mosquitto: MosquittoBroker,
    unique_id: str,
    subscribers: list[Subscriber],
    processes: list[AgentProcess],
) -> None:
    device = f"kill-{unique_id}"
    watcher = Subscriber(shared_mosquitto.port, [f"edgefleet/v1/devices/{device}/state"])
    subscribers.append(watcher)
    config = toml_config(tmp_path / "agent.toml", shared_mosquitto, device, model=None)
    agent = AgentProcess(config, tmp_path / "agent.log")
    processes.append(agent)
    watcher.wait_for(lambda r: len(r) >= 1, timeout_s=15)
    birth = states(watcher)[0]
    assert birth["online"] is True
    assert birth["hardware"] == "test-rig"

    agent.signal(signal.SIGKILL)
    agent.wait()
    watcher.wait_for(lambda r: len(r) >= 2)
    will = states(watcher)[1]
    assert will["online"] is False
    assert will["reason"] == "will"
    assert will["seq"] > birth["seq"]  # type: ignore[operator]

    late = Subscriber(shared_mosquitto.port, [f"edgefleet/v1/devices/{device}/state"])
    subscribers.append(late)
    (retained,) = late.wait_for(lambda r: len(r) >= 1)
    assert retained.retain
    assert json.loads(retained.payload)["reason"] == "will"


def test_sigterm_publishes_offline_and_exits_zero(
    tmp_path: Path,
    shared_mosquitto: MosquittoBroker,
    unique_id: str,
    subscribers: list[Subscriber],
    processes: list[AgentProcess],
) -> None:
    device = f"term-{unique_id}"
    watcher = Subscriber(shared_mosquitto.port, [f"edgefleet/v1/devices/{device}/state"])
    subscribers.append(watcher)
    config = toml_config(tmp_path / "agent.toml", shared_mosquitto, device, model=None)
    agent = AgentProcess(config, tmp_path / "agent.log")
    processes.append(agent)
    watcher.wait_for(lambda r: len(r) >= 1, timeout_s=15)
    agent.signal(signal.SIGTERM)
    assert agent.wait() == 0, agent.output()
    watcher.wait_for(lambda r: len(r) >= 2)
    offline = states(watcher)[-1]
    assert offline["online"] is False
    assert offline["reason"] == "shutdown"
    assert "will" not in [s["reason"] for s in states(watcher)]


def test_backlog_survives_an_agent_restart_during_a_broker_outage(
    tmp_path: Path,
    durable_mosquitto: MosquittoBroker,
    unique_id: str,
    subscribers: list[Subscriber],
    processes: list[AgentProcess],
) -> None:
    device = f"restart-{unique_id}"
    telemetry = f"edgefleet/v1/devices/{device}/telemetry"
    watcher = Subscriber(durable_mosquitto.port, [telemetry], session=f"w-{unique_id}")
    subscribers.append(watcher)
    config = toml_config(
        tmp_path / "agent.toml", durable_mosquitto, device, model=None, telemetry_interval_s=0.1
    )
    data_dir = tmp_path / f"data-{device}"
    first = AgentProcess(config, tmp_path / "agent.log")
    processes.append(first)
    watcher.wait_for(lambda r: len(r) >= 3, timeout_s=15)

    durable_mosquitto.stop()
    time.sleep(0.8)  # telemetry piles up in the outbox
    first.signal(signal.SIGTERM)
    assert first.wait() == 0, first.output()
    pending_at_restart = outbox_seqs(data_dir)
    assert len(pending_at_restart) >= 4

    second = AgentProcess(config, tmp_path / "agent.log")
    processes.append(second)
    # The new process keeps producing while the broker is still down.
    deadline = time.monotonic() + 10
    while len(outbox_seqs(data_dir)) < len(pending_at_restart) + 3:
        assert time.monotonic() < deadline, second.output()
        time.sleep(0.1)
    pending_before_broker = outbox_seqs(data_dir)
    assert pending_before_broker[: len(pending_at_restart)] == pending_at_restart
    assert min(pending_before_broker[len(pending_at_restart) :]) > max(pending_at_restart)

    durable_mosquitto.start()
    expected = set(pending_before_broker)
    received = watcher.wait_for(
        lambda r: {json.loads(x.payload)["seq"] for x in r} >= expected, timeout_s=10
    )
    second.signal(signal.SIGTERM)
    assert second.wait() == 0, second.output()

    seqs = [json.loads(r.payload)["seq"] for r in received]
    first_seen = list(dict.fromkeys(seqs))
    assert first_seen == sorted(first_seen)
    assert outbox_seqs(data_dir) == []  # the clean stop flushed everything
