"""End to end through the fleet: upload, publish, assign; a real agent installs the model.

The fleet (lab keys) serves the TUF repository over its own HTTP API and publishes the
director's signed desired state on a real Mosquitto; an in-process `edgefleet.agent.daemon.Agent`
provisioned with the fleet's bundle downloads, verifies, activates and commits it, and
the fleet sees that in the device's deployments and state.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from edgefleet.agent.daemon import Agent
from edgefleet.fleet.keys import LabSetup
from edgefleet.shared.hashing import sha256_file
from edgefleet.simulators.models import TrainedModel
from tests.fleet.publisher import wait_until
from tests.support.agent import agent_config, infer_until
from tests.support.fleet_fixtures import (
    DEVICE_TOKEN,
    MakeFleet,
    admin_client,
    current_deployment,
    device_record,
    upload,
)
from tests.support.mosquitto import MosquittoBroker


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'fleet.db'}"


def test_update_through_fleet_is_installed_and_reported_committed(
    make_fleet: MakeFleet,
    lab: LabSetup,
    mosquitto: MosquittoBroker,
    fast_wine_packages: dict[str, Path],
    wine_model: TrainedModel,
    tmp_path: Path,
    unique_id: str,
) -> None:
    device_id = f"e2e-{unique_id}"
    fleet = make_fleet()
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
    agent = Agent(config)
    agent.start()
    stop = threading.Event()
    # Probation needs inferences on the new model; an app on the device would send them.
    traffic = threading.Thread(target=infer_until, args=(agent, wine_model, stop), daemon=True)
    traffic.start()
    try:
        with admin_client(fleet) as api:
            for package in (factory, upgrade):
                assert upload(api, package).status_code == 201
            assert api.post("/v1/models/wine/1.1.0/publish").status_code == 200
            wait_until(
                lambda: device_record(api, device_id).get("model_version") == "1.0.0",
                what="the agent's birth state to reach the fleet",
            )
            desired = api.put(
                f"/v1/devices/{device_id}/desired",
                json={"model": "wine", "version": "1.1.0", "rollout_id": "e2e"},
            )
            assert desired.status_code == 200, desired.text
            seq = desired.json()["signed"]["seq"]
            wait_until(
                lambda: current_deployment(api, device_id).get("outcome") == "committed",
                timeout_s=60,
                what="the device to report the update committed",
            )
            current = current_deployment(api, device_id)
            assert current["desired_seq"] == seq
            assert current["rollout_id"] == "e2e"
            kinds = [step["kind"] for step in current["steps"]]
            assert kinds[0] == "downloading"
            assert {"verified", "activated", "committed"} <= set(kinds)
            assert "failed" not in kinds
            assert agent.updates is not None
            assert agent.updates.store.active() == sha256_file(upgrade)
            # The agent reports its active model in its birth state, sent at connect:
            # after a reboot the fleet's device registry shows the new model.
            stop.set()
            traffic.join(5)
            agent.stop(2.0)
            agent = Agent(config)
            agent.start()
            wait_until(
                lambda: device_record(api, device_id).get("model_version") == "1.1.0",
                what="the device state to show the new active model",
            )
            assert current_deployment(api, device_id)["outcome"] == "committed"
    finally:
        stop.set()
        traffic.join(5)
        agent.stop(2.0)
