"""Disaster recovery on a simulated fleet of real agents: a backup taken while the fleet
ingests and a rollout runs, restored into a new fleet (new directories, the same
broker and address), which serves the same devices, models and rollouts, carries the
rollout on to the end, and whose audit log still verifies against its checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from edgefleet.fleet.keys import LabSetup
from edgefleet.shared.cli import main
from edgefleet.simulators.fleet import DeviceProfile
from tests.simulators.conftest import FAST, StartSim, devices, publish, wait_status
from tests.support.fleet_fixtures import MakeFleet, admin_client

pytestmark = pytest.mark.slow

DEVICES = 12


def snapshot(api: httpx.Client) -> dict[str, Any]:
    """What an operator sees: the devices, the model versions, the rollouts."""
    return {
        "devices": sorted(d["device_id"] for d in devices(api)),
        "models": sorted(
            (m["name"], m["version"], m["sha256"]) for m in api.get("/v1/models").json()
        ),
        "rollouts": sorted(r["id"] for r in api.get("/v1/rollouts").json()["items"]),
    }


def test_a_backup_taken_during_ingest_restores_into_a_fleet_that_carries_on(
    make_fleet: MakeFleet,
    start_sim: StartSim,
    sim_packages: dict[str, Path],
    lab: LabSetup,
    tmp_path: Path,
    unique_id: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fleet = make_fleet(**FAST)
    port = int(fleet.base_url.rsplit(":", 1)[1])
    tag = f"t-{unique_id}"
    with admin_client(fleet) as api:
        publish(api, sim_packages, fleet.engine)
        sim = start_sim(fleet, api, [DeviceProfile(hardware="rpi4", tags=(tag,), count=DEVICES)])
        created = api.post(
            "/v1/rollouts",
            json={
                "model": "wine",
                "version": "1.1.0",
                "selector": {"tags": [tag]},
                "waves": [{"fraction": 0.25}, {"fraction": 1.0}],
                "gate": {"soak_s": 2, "timeout_s": 120},
            },
        )
        assert created.status_code == 201, created.text
        rollout_id = created.json()["id"]
        wait_status(api, rollout_id, {"running"}, timeout_s=30)

        # The backup, while devices report and the first wave installs.
        backup = tmp_path / "backup"
        assert (
            main(
                [
                    "fleet",
                    "backup",
                    str(backup),
                    "--database-url",
                    fleet.settings.database_url,
                    "--data-dir",
                    str(fleet.settings.data_dir),
                    "--keys-dir",
                    str(lab.keys_dir),
                ]
            )
            == 0
        )
        before = snapshot(api)
        at_backup = api.get(f"/v1/rollouts/{rollout_id}").json()
    fleet.stop()  # the machine is lost
    assert at_backup["status"] == "running", "the backup was taken mid-rollout"

    new = tmp_path / "restored"
    assert main(["fleet", "restore", str(backup), "--data-dir", str(new)]) == 0
    restored = make_fleet(
        **FAST,
        database_url=f"sqlite:///{new / 'fleet.db'}",
        data_dir=new,
        keys_dir=new / "keys",
        api_port=port,  # where the devices' repository URL points
        migrate_at_start=False,  # the backup's schema is this release's head
    )
    with admin_client(restored) as api:
        assert snapshot(api) == before
        done = wait_status(api, rollout_id, {"completed"}, timeout_s=150)
        assert done["counts"]["healthy"] == DEVICES
    assert set(sim.active_versions().values()) == {"1.1.0"}
    restored.stop()

    monkeypatch.setenv("EDGEFLEET_FLEET_DATA_DIR", str(new))
    assert (
        main(["fleet", "audit", "verify", "--database-url", f"sqlite:///{new / 'fleet.db'}"]) == 0
    )
