"""A real agent on a real Mosquitto takes 200 hostile payloads on its ``desired`` topic.

The payloads are drawn (derandomized, so every run sends the same ones) from the
strategies the function-level fuzz tests use (`tests.shared.signing.hostile`), with the
rig's own director key, so envelopes the director really signed are among them. After
them the agent must be connected and serving the factory model, must have reported one
``rejected`` event per payload (a payload equal to the one just before it is a
redelivery, reported once), and must still take a valid desired state.
"""

from __future__ import annotations

import http.client
import json

from hypothesis import HealthCheck, given, settings

from edgefleet.agent.update.machine import AT_REST
from edgefleet.simulators.models import TrainedModel
from tests.e2e.updates.conftest import Packages
from tests.e2e.updates.support import Rig, event_docs
from tests.e2e.updates.test_updates import Traffic, assert_serves, wait_event
from tests.shared.signing.hostile import hostile_payloads

PAYLOADS = 200


def draw_payloads(rig: Rig, device: str) -> list[bytes]:
    """``PAYLOADS`` hostile payloads, the same on every run."""
    drawn: list[bytes] = []

    @settings(
        max_examples=PAYLOADS,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(payload=hostile_payloads(rig.signers["director"], device))
    def collect(payload: bytes) -> None:
        drawn.append(payload)

    collect()
    return drawn[:PAYLOADS]


def test_hostile_desired_payloads_are_each_rejected_and_the_agent_updates_after(
    tmp_path,
    rig: Rig,
    packages: Packages,
    start_agent,
    events_of,
    unique_id,
    wine_model: TrainedModel,
) -> None:
    device = f"fz-{unique_id}"
    rig.add(packages.factory)
    rig.add(packages.upgrade)
    events = events_of(device)
    agent = start_agent(rig.config(tmp_path, device, packages.factory))
    updates = agent.updates
    assert updates is not None
    assert_serves(agent, packages.factory.sha256, "1.0.0", wine_model)

    payloads = draw_payloads(rig, device)
    assert len(payloads) >= PAYLOADS * 0.9
    for payload in payloads:
        rig.publish(device, payload)
    # A payload equal to the one before it is the same message again: reported once.
    expected = sum(1 for i, p in enumerate(payloads) if i == 0 or p != payloads[i - 1])

    def rejected(received: list[object]) -> list[dict[str, object]]:
        return [d for d in event_docs(received) if d["kind"] == "rejected"]

    events.wait_for(lambda r: len(rejected(r)) >= expected, timeout_s=60)
    reports = rejected(events.received)
    assert len(reports) == expected
    assert all(isinstance(d["reason"], str) and d["reason"] for d in reports)
    assert not any(d["kind"] not in ("rejected",) for d in event_docs(events.received))

    assert agent.connected
    assert updates.state.phase in AT_REST
    assert updates.state.last_desired_seq == -1, "no hostile payload was taken"
    assert updates.store.models() == [packages.factory.sha256]
    assert_serves(agent, packages.factory.sha256, "1.0.0", wine_model)
    conn = http.client.HTTPConnection("127.0.0.1", agent.api_port or 0, timeout=5)
    conn.request("GET", "/v1/health")
    health = conn.getresponse()
    assert health.status == 200, json.loads(health.read())
    conn.close()

    traffic = Traffic(agent, wine_model.x_test[:2])
    try:
        rig.publish(device, rig.sign(device, packages.upgrade, 1))
        committed = wait_event(events, "committed", 1, timeout_s=60)
    finally:
        traffic.stop()
    assert committed["model"]["sha256"] == packages.upgrade.sha256
    assert traffic.failures == []
    assert_serves(agent, packages.upgrade.sha256, "1.1.0", wine_model)
