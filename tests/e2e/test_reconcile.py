"""End to end: a desired state the broker lost is published again, and the device installs it.

A real fleet (lab keys, a short reconcile interval) and a real agent on a real Mosquitto.
The device is offline when its update is assigned; then the retained desired state
vanishes, by an empty retained publish or by a broker restart without persistence.
Before reconciliation, the device came back, never saw the update, and nobody noticed.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import httpx
import pytest

from edgefleet.agent.daemon import Agent
from edgefleet.fleet.keys import LabSetup
from edgefleet.fleet.service import FleetService
from edgefleet.shared.hashing import sha256_file
from edgefleet.shared.topics import Channel, device_topic
from edgefleet.simulators.models import TrainedModel
from tests.fleet.publisher import publish, wait_until
from tests.support.agent import Received, Subscriber, agent_config, infer_until
from tests.support.fleet_fixtures import (
    DEVICE_TOKEN,
    MakeFleet,
    admin_client,
    current_deployment,
    device_record,
    upload,
)
from tests.support.mosquitto import MosquittoBroker
from tests.support.mqtt_helpers import retained_desired

FAST_RECONCILE: dict[str, object] = {
    "reconcile_interval_s": 0.5,
    "reconcile_settle_s": 1.0,
    "reconcile_backoff_s": 1.0,
}


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'fleet.db'}"


def test_cleared_retained_desired_state_is_republished_and_installed(
    make_fleet: MakeFleet,
    lab: LabSetup,
    mosquitto: MosquittoBroker,
    fast_wine_packages: dict[str, Path],
    wine_model: TrainedModel,
    tmp_path: Path,
    unique_id: str,
) -> None:
    device_id = f"rec-{unique_id}"
    fleet = make_fleet(**FAST_RECONCILE)
    factory, upgrade = fast_wine_packages["1.0.0"], fast_wine_packages["1.1.0"]
    config = agent_config(
        tmp_path,
        mosquitto,
        device_id,
        model={"path": str(factory), "name": "wine", "version": "1.0.0"},
        update={
            "enabled": True,
            "repository_url": f"{fleet.base_url}/v1/repository",
            "trust_dir": str(lab.bundle_dir),
            "device_token": DEVICE_TOKEN,
            "tick_s": 0.05,
            "policy": {"retry_base_s": 0.05, "retry_max_s": 0.2},
        },
    )
    topic = device_topic(device_id, Channel.DESIRED)
    with admin_client(fleet) as api:
        # The device is known to the fleet, then goes offline.
        agent = Agent(config)
        agent.start()
        wait_until(
            lambda: device_record(api, device_id).get("model_version") == "1.0.0",
            what="the agent's birth state to reach the fleet",
        )
        agent.stop(2.0)
        wait_until(lambda: device_record(api, device_id).get("online") is False, what="offline")
        seq = _assign_upgrade(api, device_id, factory, upgrade)

        watching = Subscriber(mosquitto.port, [topic])
        try:
            watching.wait_for(lambda got: _seqs(got) == [seq])
            # Someone clears the retained message while the device is away.
            publish(mosquitto.port, [(topic, b"", True)])
            # The fleet saw it vanish and published the same envelope again.
            watching.wait_for(lambda got: _seqs(got)[-2:] == [None, seq])
        finally:
            watching.close()
        assert json.loads(retained_desired(mosquitto.port, device_id))["signed"]["seq"] == seq
        assert _republished(fleet, "retained_lost") >= 1

        agent = Agent(config)
        agent.start()
        stop = threading.Event()
        traffic = threading.Thread(target=infer_until, args=(agent, wine_model, stop), daemon=True)
        traffic.start()
        try:
            wait_until(
                lambda: current_deployment(api, device_id).get("outcome") == "committed",
                timeout_s=60,
                what="the device to install the republished update",
            )
            assert current_deployment(api, device_id)["desired_seq"] == seq
            assert agent.updates is not None
            assert agent.updates.store.active() == sha256_file(upgrade)
        finally:
            stop.set()
            traffic.join(5)
            agent.stop(2.0)


def test_desired_state_lost_in_a_broker_restart_is_republished(
    make_fleet: MakeFleet,
    mosquitto: MosquittoBroker,
    fast_wine_packages: dict[str, Path],
    unique_id: str,
) -> None:
    device_id = f"rec-{unique_id}"
    fleet = make_fleet(**FAST_RECONCILE)
    with admin_client(fleet) as api:
        seq = _assign_upgrade(
            api, device_id, fast_wine_packages["1.0.0"], fast_wine_packages["1.1.0"]
        )
    assert json.loads(retained_desired(mosquitto.port, device_id))["signed"]["seq"] == seq
    # The test broker keeps nothing on disk: a restart forgets every retained message,
    # and no message says so; the fleet notices the absence after it resubscribes.
    mosquitto.stop()
    mosquitto.start()
    wait_until(
        lambda: _republished(fleet, "retained_lost") >= 1,
        timeout_s=30,
        what="the fleet to republish the lost desired state",
    )
    assert json.loads(retained_desired(mosquitto.port, device_id))["signed"]["seq"] == seq


def _assign_upgrade(api: httpx.Client, device_id: str, factory: Path, upgrade: Path) -> int:
    for package in (factory, upgrade):
        assert upload(api, package).status_code == 201
    assert api.post("/v1/models/wine/1.1.0/publish").status_code == 200
    desired = api.put(
        f"/v1/devices/{device_id}/desired", json={"model": "wine", "version": "1.1.0"}
    )
    assert desired.status_code == 200, desired.text
    seq: int = desired.json()["signed"]["seq"]
    return seq


def _seqs(received: list[Received]) -> list[int | None]:
    return [json.loads(r.payload)["signed"]["seq"] if r.payload else None for r in received]


def _republished(fleet: FleetService, reason: str) -> float:
    value = fleet.registry.get_sample_value(
        "edgefleet_reconcile_republished_total", {"reason": reason}
    )
    return value or 0.0
