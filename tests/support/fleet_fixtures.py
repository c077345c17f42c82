"""Fleet fixtures for every test folder: running replicas (plain, or with lab keys and
fixed tokens), an admin client, real model packages, and helpers to upload and tamper.

Registered once for the whole suite by `tests/conftest.py` (``pytest_plugins``).
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from edgefleet.fleet.keys import LabSetup, create_lab_setup
from edgefleet.fleet.service import FleetService
from edgefleet.fleet.settings import FleetSettings
from edgefleet.shared.manifest import ProbationBudget
from edgefleet.shared.modeltools.builder import build_package
from edgefleet.simulators.models import TrainedModel
from tests.support.mosquitto import MosquittoBroker

DEVICE_TOKEN = "device-token-for-tests-0123456789"
ADMIN_TOKEN = "admin-token-for-tests-0123456789"

StartFleet = Callable[..., FleetService]
MakeFleet = Callable[..., FleetService]


@pytest.fixture(scope="session")
def wine_packages(
    tmp_path_factory: pytest.TempPathFactory, wine_model: TrainedModel
) -> dict[str, Path]:
    """Two real model packages of the wine classifier: 1.0.0 and 1.1.0 (other metrics)."""
    out = tmp_path_factory.mktemp("packages")
    training = out / "train.csv"
    training.write_text("\n".join(",".join(map(str, row)) for row in wine_model.x_train))
    return {
        version: build_package(
            wine_model.path,
            name="wine",
            version=version,
            out_dir=out,
            golden_count=8,
            metrics={"accuracy": wine_model.accuracy, "build": float(i)},
            training_data=training,
        )
        for i, version in enumerate(("1.0.0", "1.1.0"))
    }


# A probation short enough for end-to-end tests: a few inferences and half a second.
FAST_PROBATION = ProbationBudget(min_inferences=3, duration_s=0.5)


@pytest.fixture(scope="session")
def fast_wine_packages(
    tmp_path_factory: pytest.TempPathFactory, wine_model: TrainedModel
) -> dict[str, Path]:
    """wine 1.0.0 (a factory model) and 1.1.0, with golden samples and `FAST_PROBATION`."""
    out = tmp_path_factory.mktemp("fast-packages")
    return {
        v: build_package(
            wine_model.path,
            name="wine",
            version=v,
            out_dir=out,
            golden_count=8,
            probation=FAST_PROBATION,
        )
        for v in ("1.0.0", "1.1.0")
    }


@pytest.fixture
def lab(tmp_path: Path) -> LabSetup:
    """Lab keys (unencrypted), a version-1 repository and the device bundle."""
    return create_lab_setup(tmp_path / "lab")


@pytest.fixture
def start_fleet(database_url: str, tmp_path: Path) -> Iterator[StartFleet]:
    """Start fleet replicas on this test's database and a given broker; all stopped after.

    ``start(broker_url, **overrides)`` starts one with plain settings (no signing keys, a
    bootstrap admin token generated on the first start) and waits until its ingester is
    connected.
    """
    started: list[FleetService] = []

    def start(broker_url: str, **overrides: object) -> FleetService:
        values: dict[str, object] = {
            "database_url": database_url,
            "broker_url": broker_url,
            "data_dir": tmp_path / "fleet",
            "api_port": 0,
            "ingest_flush_interval_s": 0.05,
            "migrate_at_start": True,
        } | overrides
        service = FleetService(FleetSettings(**values))  # type: ignore[arg-type]
        started.append(service)
        service.start()
        assert service.ingester is not None
        assert service.ingester.wait_connected(10), "ingester did not connect to the broker"
        return service

    yield start
    for service in started:
        service.stop()


@pytest.fixture
def make_service(start_fleet: StartFleet, mosquitto: MosquittoBroker) -> MakeFleet:
    """Start plain fleet replicas (no signing keys) on this test's broker."""
    return lambda **overrides: start_fleet(mosquitto.url, **overrides)


@pytest.fixture
def service(make_service: MakeFleet) -> FleetService:
    return make_service()


@pytest.fixture
def make_fleet(start_fleet: StartFleet, mosquitto: MosquittoBroker, lab: LabSetup) -> MakeFleet:
    """Start fleet replicas with the lab keys and fixed tokens on this test's broker."""
    defaults: dict[str, object] = {
        "keys_dir": lab.keys_dir,
        "lab_mode": True,
        "repository_device_token": DEVICE_TOKEN,
        "admin_token": ADMIN_TOKEN,
        "publish_timeout_s": 5.0,
    }
    return lambda **overrides: start_fleet(mosquitto.url, **(defaults | overrides))


@pytest.fixture
def fleet(make_fleet: MakeFleet) -> FleetService:
    return make_fleet()


@pytest.fixture
def api(fleet: FleetService) -> Iterator[httpx.Client]:
    """An HTTP client of the running fleet, authenticated as admin."""
    with admin_client(fleet) as client:
        yield client


def admin_client(fleet: FleetService) -> httpx.Client:
    """An HTTP client of ``fleet`` with the admin token."""
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    return httpx.Client(base_url=fleet.base_url, headers=headers, timeout=20)


def upload(api: httpx.Client, package: Path) -> httpx.Response:
    """POST a package as the raw body."""
    return api.post(
        "/v1/models",
        content=package.read_bytes(),
        headers={"Content-Type": "application/octet-stream"},
    )


def retar(package: Path, out: Path, change: Callable[[dict[str, bytes]], dict[str, bytes]]) -> Path:
    """A copy of ``package`` with its members (name -> bytes) changed by ``change``."""
    with tarfile.open(package, "r:") as tar:
        members = {
            m.name: f.read() for m in tar.getmembers() if (f := tar.extractfile(m)) is not None
        }
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:") as tar:
        for name, data in change(members).items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    out.write_bytes(buffer.getvalue())
    return out


def device_record(api: httpx.Client, device_id: str) -> dict[str, Any]:
    """``GET /v1/devices/{id}``, or ``{}`` while the fleet does not know the device."""
    response = api.get(f"/v1/devices/{device_id}")
    return response.json() if response.status_code == 200 else {}  # type: ignore[no-any-return]


def current_deployment(api: httpx.Client, device_id: str) -> dict[str, Any]:
    """The device's current deployment (``/deployments``'s ``current``), or ``{}``."""
    current = api.get(f"/v1/devices/{device_id}/deployments").json().get("current")
    return current or {}  # type: ignore[no-any-return]
