"""Simulated devices with identities on: each enrolls through the fleet's REST API
(`edgefleet.simulators.enrollment`) and then reaches the closed broker and the
repository with its own certificate only, through a whole staged rollout."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlmodel import Session, select

from edgefleet.agent.identity import CERT_FILE
from edgefleet.fleet.identity.broker_config import BrokerMode
from edgefleet.fleet.keys import LabSetup
from edgefleet.fleet.service import FleetService
from edgefleet.fleet.store.tables import DeadLetter
from edgefleet.simulators.enrollment import EnrollmentError, IdentityPlan, enroll_device
from edgefleet.simulators.fleet import DeviceProfile, FleetPlan, UpdatePlan
from edgefleet.simulators.models import TrainedModel
from edgefleet.simulators.shards import ShardedFleet
from tests.simulators.conftest import FAST, devices, publish, wait_for, wait_status
from tests.support.closed_broker import ClosedBroker, fleet_overrides, write_closed_setup
from tests.support.fleet_fixtures import ADMIN_TOKEN, StartFleet, admin_client
from tests.support.tls_fleet import device_ca


@dataclass
class ClosedFleet:
    fleet: FleetService
    broker: ClosedBroker
    identities: IdentityPlan


@pytest.fixture
def closed_fleet(start_fleet: StartFleet, lab: LabSetup, tmp_path: Path) -> Iterator[ClosedFleet]:
    """A fleet with lab keys behind the broker `broker-config` writes (mTLS mode)."""
    ca = device_ca(lab.keys_dir, tmp_path / "fleet")  # the CA the fleet below opens
    setup = write_closed_setup(tmp_path / "broker", ca, BrokerMode.MTLS)
    broker = ClosedBroker(tmp_path / "mosquitto", setup)
    broker.start()
    settings = fleet_overrides(setup)
    fleet = start_fleet(
        str(settings.pop("broker_url")),
        **settings,
        **FAST,
        keys_dir=lab.keys_dir,
        lab_mode=True,
        admin_token=ADMIN_TOKEN,
        publish_timeout_s=5.0,
        broker_reload_command=broker.reload_command,
    )
    plan = IdentityPlan(
        fleet_url=fleet.base_url, admin_token=ADMIN_TOKEN, device_broker_url=broker.device_url
    )
    yield ClosedFleet(fleet, broker, plan)
    fleet.stop()
    broker.stop()


def test_a_device_enrolls_once_and_keeps_its_identity_on_the_next_start(
    closed_fleet: ClosedFleet, tmp_path: Path
) -> None:
    identity_dir = tmp_path / "dev" / "identity"
    assert enroll_device(closed_fleet.identities, "sim-0001", identity_dir) is True
    certificate = (identity_dir / CERT_FILE).read_bytes()
    assert enroll_device(closed_fleet.identities, "sim-0001", identity_dir) is False
    assert (identity_dir / CERT_FILE).read_bytes() == certificate
    with admin_client(closed_fleet.fleet) as api:
        assert api.get("/v1/identities/sim-0001").json()["state"] == "active"


def test_a_token_without_the_right_to_enroll_fails_with_the_fleets_reason(
    closed_fleet: ClosedFleet, tmp_path: Path
) -> None:
    plan = IdentityPlan(
        fleet_url=closed_fleet.fleet.base_url,
        admin_token="not-a-token-of-this-fleet-0123456789",
        device_broker_url=closed_fleet.broker.device_url,
    )
    with pytest.raises(
        EnrollmentError, match=r"sim-0002: the fleet refused an enrollment token \(401\)"
    ):
        enroll_device(plan, "sim-0002", tmp_path / "identity")
    assert not (tmp_path / "identity" / CERT_FILE).exists()


def test_an_unreachable_fleet_is_named_in_the_error(tmp_path: Path) -> None:
    plan = IdentityPlan(
        fleet_url="http://127.0.0.1:9", admin_token=ADMIN_TOKEN, device_broker_url="mqtts://x:1"
    )
    with pytest.raises(EnrollmentError, match=r"no enrollment token from http://127.0.0.1:9"):
        enroll_device(plan, "sim-0003", tmp_path / "identity")


@pytest.mark.slow
def test_a_rollout_reaches_every_enrolled_device_through_the_closed_broker(
    closed_fleet: ClosedFleet,
    lab: LabSetup,
    sim_packages: dict[str, Path],
    wine_model: TrainedModel,
    tmp_path: Path,
    unique_id: str,
) -> None:
    count, prefix, tag = 20, f"e{unique_id}", f"t-{unique_id}"
    fleet = closed_fleet.fleet
    sim = ShardedFleet(
        FleetPlan(
            count=count,
            broker_url=closed_fleet.broker.device_url,
            data_dir=tmp_path / "devices",
            model=wine_model,
            model_name="wine",
            factory_package=sim_packages["1.0.0"],
            # No device token: with identities on, the devices sign their requests.
            updates=UpdatePlan(
                repository_url=f"{fleet.base_url}/v1/repository",
                trust_dir=lab.bundle_dir,
                tick_s=0.25,
                retry_base_s=0.2,
                retry_max_s=1.0,
            ),
            profiles=(DeviceProfile(hardware="rpi4", tags=(tag,)),),
            id_prefix=prefix,
            telemetry_interval_s=10.0,
            reconnect_min_s=0.2,
            reconnect_max_s=2.0,
            identities=closed_fleet.identities,
        ),
        per_process=10,
    )
    with admin_client(fleet) as api:
        publish(api, sim_packages, fleet.engine)
        sim.start()
        try:
            wait_for(
                lambda: (
                    sum(
                        1 for d in devices(api) if d["device_id"].startswith(prefix) and d["online"]
                    )
                    == count
                ),
                timeout_s=60,
                what=f"{count} enrolled devices online",
            )
            identities = api.get("/v1/identities", params={"limit": 1000}).json()["items"]
            assert Counter(i["state"] for i in identities if i["device_id"].startswith(prefix)) == {
                "active": count
            }
            created = api.post(
                "/v1/rollouts",
                json={
                    "model": "wine",
                    "version": "1.1.0",
                    "selector": {"tags": [tag]},
                    "waves": [{"fraction": 0.25}, {"fraction": 1.0}],
                    "gate": {"soak_s": 0, "timeout_s": 60},
                },
            )
            assert created.status_code == 201, created.text
            done = wait_status(api, created.json()["id"], {"completed"}, timeout_s=120)
            assert done["counts"]["healthy"] == count
            assert Counter(sim.active_versions().values()) == {"1.1.0": count}
        finally:
            sim.stop()
    with Session(fleet.engine) as session:
        refused = session.exec(select(DeadLetter)).all()
    assert [(d.topic, d.reason) for d in refused] == []
