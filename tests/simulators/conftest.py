"""A simulated fleet of real agents (in worker processes) against a real fleet service.

The fleet service runs in the test process with lab keys on SQLite and a per-test
Mosquitto; the devices are `edgefleet.simulators.shards.ShardedFleet` workers running the real
agent with updates enabled (the fleet's repository URL, its provisioning bundle, the
device token).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine

from edgefleet.fleet.keys import LabSetup
from edgefleet.fleet.service import FleetService
from edgefleet.simulators.fleet import DeviceProfile, FleetPlan, UpdatePlan
from edgefleet.simulators.models import TrainedModel
from edgefleet.simulators.shards import ShardedFleet
from tests.fleet.publisher import wait_until
from tests.support import rollouts
from tests.support.fleet_fixtures import DEVICE_TOKEN, upload
from tests.support.mosquitto import MosquittoBroker
from tests.support.rollouts import publish_and_approve

FAST = {"rollout_tick_interval_s": 0.2, "rollout_lease_s": 2.0}

StartSim = Callable[..., ShardedFleet]


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'fleet.db'}"


@pytest.fixture(scope="session")
def sim_packages(fast_wine_packages: dict[str, Path]) -> dict[str, Path]:
    """wine 1.0.0 (the factory model) and 1.1.0, with golden samples and a short probation."""
    return fast_wine_packages


def publish(api: httpx.Client, packages: dict[str, Path], engine: Engine) -> None:
    """Upload, publish and approve (as a second person) every package's version."""
    for version, package in packages.items():
        assert upload(api, package).status_code in (200, 201)
        publish_and_approve(api, engine, "wine", version)


@pytest.fixture
def start_sim(
    mosquitto: MosquittoBroker,
    lab: LabSetup,
    sim_packages: dict[str, Path],
    wine_model: TrainedModel,
    tmp_path: Path,
    unique_id: str,
) -> Iterator[StartSim]:
    """Start simulated devices for ``fleet``; returns once the registry lists them all."""
    started: list[ShardedFleet] = []

    def start(
        fleet: FleetService, api: httpx.Client, profiles: Sequence[DeviceProfile], **plan: Any
    ) -> ShardedFleet:
        count = sum(p.count or 0 for p in profiles)
        sim = ShardedFleet(
            FleetPlan(
                count=count,
                broker_url=mosquitto.url,
                data_dir=tmp_path / "devices",
                model=wine_model,
                model_name="wine",
                model_version="1.0.0",
                factory_package=sim_packages["1.0.0"],
                updates=UpdatePlan(
                    repository_url=f"{fleet.base_url}/v1/repository",
                    trust_dir=lab.bundle_dir,
                    device_token=DEVICE_TOKEN,
                    tick_s=0.25,
                    retry_base_s=0.2,
                    retry_max_s=1.0,
                ),
                profiles=profiles,
                id_prefix=f"s{unique_id}",
                telemetry_interval_s=10.0,
                reconnect_min_s=0.2,
                reconnect_max_s=2.0,
                **plan,
            )
        )
        started.append(sim)
        sim.start()
        wait_for(
            lambda: registered(api, f"s{unique_id}") == count,
            timeout_s=60,
            what=f"{count} simulated devices to register",
        )
        return sim

    yield start
    for sim in started:
        sim.stop()


def registered(api: httpx.Client, prefix: str) -> int:
    return sum(1 for d in devices(api) if d["device_id"].startswith(prefix))


def devices(api: httpx.Client) -> list[dict[str, Any]]:
    """Every device in the fleet's registry."""
    page = api.get("/v1/devices", params={"limit": 1000}).json()
    return page["items"]  # type: ignore[no-any-return]


def wait_for(condition: Callable[[], bool], *, timeout_s: float, what: str) -> None:
    # Polls slowly: a simulated fleet of hundreds of devices shares the fleet's CPU.
    wait_until(condition, timeout_s, what, poll_s=0.25)


def wait_status(
    api: httpx.Client, rollout_id: str, statuses: set[str], timeout_s: float
) -> dict[str, Any]:
    return rollouts.wait_status(api, rollout_id, statuses, timeout_s, poll_s=0.25)
