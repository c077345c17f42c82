"""The link against a real Mosquitto: PUBACK deletes until the fleet acknowledges, then only
the fleet's ``stored`` word does, and what it skipped is sent again.

The fleet here is a plain client publishing `StoredMessage`s on the device's topic: the
interface the real ingester uses (tests/e2e/test_delivery_end_to_end.py runs that one).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from paho.mqtt import publish

from edgefleet.agent.daemon import OUTBOX_FILE, Agent
from edgefleet.agent.outbox import Outbox
from edgefleet.shared.messages import EventKind, StoredMessage, encode
from edgefleet.shared.topics import Channel, device_topic
from tests.fleet.publisher import wait_until
from tests.support.agent import Subscriber, agent_config
from tests.support.mosquitto import MosquittoBroker


def acknowledge(broker: MosquittoBroker, device_id: str, *ranges: tuple[int, int]) -> None:
    message = StoredMessage(device_id=device_id, seqs=list(ranges))
    publish.single(
        device_topic(device_id, Channel.STORED),
        encode(message),
        qos=1,
        retain=True,
        hostname="127.0.0.1",
        port=broker.port,
    )


def sent_seqs(watcher: Subscriber) -> list[int]:
    return [json.loads(r.payload)["seq"] for r in watcher.on("events")]


def test_without_a_fleet_acknowledgement_the_puback_deletes(
    tmp_path: Path, shared_mosquitto: MosquittoBroker, unique_id: str
) -> None:
    device = f"oldfleet-{unique_id}"
    agent = Agent(agent_config(tmp_path, shared_mosquitto, device))
    agent.start()
    try:
        for n in range(3):
            agent.publish_event(EventKind.INFO, detail={"n": n})
        wait_until(lambda: agent.connected and agent.status.outbox_depth == 0, what="PUBACKs")
    finally:
        agent.stop(3)
    assert not Outbox(tmp_path / f"data-{device}" / OUTBOX_FILE).fleet_acks


def test_once_the_fleet_acknowledged_only_its_word_deletes_and_skipped_ones_are_resent(
    tmp_path: Path, shared_mosquitto: MosquittoBroker, unique_id: str
) -> None:
    device = f"e2e-{unique_id}"
    watcher = Subscriber(shared_mosquitto.port, [device_topic(device, Channel.EVENTS)])
    outbox = {"fleet_ack_grace_s": 0.5, "fleet_ack_timeout_s": 1.5}
    config = agent_config(tmp_path, shared_mosquitto, device, outbox=outbox)
    # A retained acknowledgement from before (of a seq this agent never sent) is enough
    # to know the fleet acknowledges.
    acknowledge(shared_mosquitto, device, (1, 1))
    agent = Agent(config)
    agent.start()
    try:
        wait_until(lambda: agent.connected, what="connected")
        seqs = [agent.publish_event(EventKind.INFO, detail={"n": n}) or 0 for n in range(3)]
        watcher.wait_for(lambda _: set(sent_seqs(watcher)) >= set(seqs))
        time.sleep(0.3)
        assert agent.status.outbox_depth == 3  # PUBACKed, not stored: kept
        acknowledge(shared_mosquitto, device, (seqs[1], seqs[1]))
        wait_until(lambda: agent.status.outbox_depth == 2, what="seq 2 deleted")
        # Nobody acknowledges the other two: after the timeout they go out again, in order.
        watcher.wait_for(lambda _: len(sent_seqs(watcher)) >= 5, timeout_s=10)
        resent = sent_seqs(watcher)[3:5]
        assert resent == [seqs[0], seqs[2]]
        acknowledge(shared_mosquitto, device, (seqs[0], seqs[2]))
        wait_until(lambda: agent.status.outbox_depth == 0, what="all deleted")
    finally:
        assert agent.stop(3)
        watcher.close()
    assert Outbox(tmp_path / f"data-{device}" / OUTBOX_FILE).fleet_acks  # for the next start
