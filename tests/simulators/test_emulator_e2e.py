"""Emulated devices against a real fleet on a real Mosquitto: a 4-wave rollout completes.

50 devices of `edgefleet.simulators.emulator` (one worker process) register, verify the
director's signed desired states, fetch the artifact from the fleet's repository over
HTTP and report the agent's events; the rollout must reach every one of them healthy,
and the registry must show each one on the new version.
"""

from __future__ import annotations

from pathlib import Path

from edgefleet.fleet.keys import LabSetup
from edgefleet.shared.hashing import sha256_file
from edgefleet.shared.messages import ModelRef
from edgefleet.simulators.emulator.connection import LinkSettings
from edgefleet.simulators.emulator.launcher import EmulatedFleet, EmulatorPlan
from tests.simulators.conftest import FAST, devices, publish, wait_for, wait_status
from tests.support.fleet_fixtures import DEVICE_TOKEN, MakeFleet, admin_client
from tests.support.mosquitto import MosquittoBroker

COUNT = 50


def test_a_four_wave_rollout_reaches_50_emulated_devices(
    make_fleet: MakeFleet,
    mosquitto: MosquittoBroker,
    lab: LabSetup,
    sim_packages: dict[str, Path],
    unique_id: str,
) -> None:
    fleet = make_fleet(**FAST)
    tag = f"e-{unique_id}"
    prefix = f"e{unique_id}"
    factory = sim_packages["1.0.0"]
    plan = EmulatorPlan(
        count=COUNT,
        link=LinkSettings(
            broker_url=mosquitto.url,
            repository_url=f"{fleet.base_url}/v1/repository",
            device_token=DEVICE_TOKEN,
        ),
        trust_dir=lab.bundle_dir,
        id_prefix=prefix,
        tags=(tag,),
        factory=ModelRef(name="wine", version="1.0.0", sha256=sha256_file(factory)),
        probation_s=0.2,
    )
    emulated = EmulatedFleet(plan, processes=1, nice=0)
    with admin_client(fleet) as api:
        publish(api, sim_packages, fleet.engine)
        emulated.start()
        try:
            wait_for(
                lambda: sum(1 for d in devices(api) if d["device_id"].startswith(prefix)) == COUNT,
                timeout_s=30,
                what=f"{COUNT} emulated devices to register",
            )
            created = api.post(
                "/v1/rollouts",
                json={
                    "model": "wine",
                    "version": "1.1.0",
                    "selector": {"tags": [tag]},
                    "waves": [
                        {"fraction": 0.05},
                        {"fraction": 0.25},
                        {"fraction": 0.5},
                        {"fraction": 1.0},
                    ],
                    "gate": {"soak_s": 0, "timeout_s": 30},
                },
            )
            assert created.status_code == 201, created.text
            done = wait_status(api, created.json()["id"], {"completed"}, timeout_s=40)
            assert done["counts"]["healthy"] == COUNT
            # Every device fetched the artifact itself and runs 1.1.0 by its own report.
            wait_for(
                lambda: emulated.versions() == {"1.1.0": COUNT},
                timeout_s=10,
                what="every emulated device on 1.1.0",
            )
            status = emulated.status()
            assert sum(s.downloads for s in status) == COUNT
            assert sum(s.download_failures for s in status) == 0
            wait_for(
                lambda: (
                    {d["model_version"] for d in devices(api) if d["device_id"].startswith(prefix)}
                    == {"1.1.0"}
                ),
                timeout_s=10,
                what="the registry to show 1.1.0 on every emulated device",
            )
        finally:
            emulated.stop()
