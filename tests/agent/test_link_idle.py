"""An idle link sleeps: its thread wakes for traffic and keepalive only (real Mosquitto)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgefleet.agent.config import BrokerConfig
from edgefleet.agent.link import Link
from edgefleet.agent.outbox import Outbox
from edgefleet.shared.messages import StateMessage
from tests.support.mosquitto import MosquittoBroker


def _state(seq: int, online: bool, reason: str | None) -> StateMessage:
    return StateMessage(device_id="idle-1", seq=seq, online=online, reason=reason)


class CountingLink(Link):
    """A link that counts the turns of its network loop."""

    turns = 0

    def _loop(self, client, timeout_s):  # type: ignore[no-untyped-def]
        self.turns += 1
        return super()._loop(client, timeout_s)


@pytest.fixture
def link(
    request: pytest.FixtureRequest, tmp_path: Path, mosquitto: MosquittoBroker
) -> Iterator[tuple[CountingLink, Outbox]]:
    """A connected link with the keepalive the test is parametrized with."""
    outbox = Outbox(tmp_path / "outbox.db")
    config = BrokerConfig(url=mosquitto.url, keepalive_s=request.param)
    link = CountingLink(config=config, device_id="idle-1", outbox=outbox, state=_state)
    link.start()
    deadline = time.monotonic() + 10
    while not link.connected:
        assert time.monotonic() < deadline, "the link never connected"
        time.sleep(0.02)
    yield link, outbox
    link.stop(2.0)
    outbox.close()


@pytest.mark.parametrize("link", [20], indirect=True)
def test_an_idle_link_thread_sleeps_a_quarter_of_the_keepalive(
    link: tuple[CountingLink, Outbox],
) -> None:
    agent_link, outbox = link
    time.sleep(0.5)  # let the connect's SUBACK and birth PUBACK settle
    turns_before = agent_link.turns
    time.sleep(6.0)
    # 20 s / 4 = 5 s per turn: one or two turns. A 1 s timer would make 6, paho's own
    # 0.1 s poll 60.
    assert agent_link.turns - turns_before <= 3
    # A message stored meanwhile still goes out at once, not at the next turn.
    outbox.enqueue("edgefleet/v1/devices/idle-1/telemetry", "telemetry", lambda s: b"{}")
    agent_link.wake()
    deadline = time.monotonic() + 1.0
    while outbox.depth:
        assert time.monotonic() < deadline, "the woken link did not send the stored message"
        time.sleep(0.01)


@pytest.mark.parametrize("link", [5], indirect=True)
def test_a_sleeping_link_still_sends_its_keepalive_pings(
    link: tuple[CountingLink, Outbox],
) -> None:
    agent_link, _ = link
    # The broker drops a client that sends nothing for 1.5 x 5 s = 7.5 s.
    time.sleep(10.0)
    assert agent_link.connected
    assert agent_link.connects_total == 1
