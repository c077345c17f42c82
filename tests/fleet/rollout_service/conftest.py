"""Fixtures for the rollout service: lab-keyed fleet replicas, published models, devices."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from sqlalchemy import Engine

from edgefleet.fleet.service import FleetService
from edgefleet.shared.modeltools.builder import build_package
from edgefleet.simulators.models import TrainedModel
from tests.fleet.publisher import wait_until
from tests.fleet.rollout_service.devices import ProtocolFleet
from tests.fleet.rollout_service.wine_windows import WineWindows
from tests.support.fleet_fixtures import upload
from tests.support.mosquitto import MosquittoBroker
from tests.support.rollouts import publish_and_approve

# Fast orchestration for tests: a tick every 0.1 s, a lease that lapses after 1.5 s.
FAST = {"rollout_tick_interval_s": 0.1, "rollout_lease_s": 1.5}

StartDevices = Callable[..., ProtocolFleet]


def publish_models(api: httpx.Client, built: dict[str, Path], engine: Engine) -> None:
    """Upload wine 1.0.0 and 1.1.0, publish both (lab mode) and approve both as a second
    person (``engine`` is the fleet's database, where the approver is made)."""
    for version, package in built.items():
        assert upload(api, package).status_code in (200, 201)
        publish_and_approve(api, engine, "wine", version)


@pytest.fixture
def start_devices(mosquitto: MosquittoBroker, unique_id: str) -> Iterator[StartDevices]:
    """Start ``n`` protocol-level devices tagged with this test's id, once the fleet
    ``api`` shows all of them."""
    started: list[ProtocolFleet] = []

    def start(fleet: FleetService, api: httpx.Client, n: int, **kw: Any) -> ProtocolFleet:
        ids = [f"sim-{unique_id}-{i:02d}" for i in range(n)]
        devices = ProtocolFleet(
            mosquitto.port, ids, fleet.director_key, tags=(f"t-{unique_id}",), **kw
        )
        devices.start()
        started.append(devices)
        wait_until(
            lambda: api.get("/v1/devices", params={"tag": f"t-{unique_id}"}).json()["total"] == n,
            what=f"{n} devices to register",
        )
        return devices

    yield start
    for devices in started:
        devices.stop()


@pytest.fixture(scope="session")
def drift_packages(
    tmp_path_factory: pytest.TempPathFactory, wine_model: TrainedModel
) -> dict[str, Path]:
    """wine 1.0.0 and 1.1.0 packages that carry a reference profile (of the training
    data), which the registry stores on upload for the drift guard."""
    out = tmp_path_factory.mktemp("drift-packages")
    reference = out / "reference.npy"
    np.save(reference, wine_model.x_train)
    return {
        version: build_package(
            wine_model.path,
            name="wine",
            version=version,
            out_dir=out,
            golden_count=8,
            reference_data=reference,
            feature_names=list(wine_model.feature_names),
        )
        for version in ("1.0.0", "1.1.0")
    }


@pytest.fixture(scope="session")
def wine_windows(wine_model: TrainedModel, drift_packages: dict[str, Path]) -> WineWindows:
    return WineWindows(wine_model, drift_packages)
