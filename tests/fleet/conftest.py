"""Fleet fixtures: settings pointed at this test's broker and database, a running service."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from edgefleet.fleet.service import FleetService
from edgefleet.fleet.settings import FleetSettings
from tests.support.mosquitto import MosquittoBroker

MakeService = Callable[..., FleetService]


@pytest.fixture
def make_service(
    database_url: str, mosquitto: MosquittoBroker, tmp_path: Path
) -> Iterator[MakeService]:
    """Start fleet replicas on this test's database and broker; all stopped at the end."""
    started: list[FleetService] = []

    def make(**overrides: object) -> FleetService:
        values: dict[str, object] = {
            "database_url": database_url,
            "broker_url": mosquitto.url,
            "data_dir": tmp_path / "fleet",
            "api_port": 0,
            "ingest_flush_interval_s": 0.05,
        } | overrides
        service = FleetService(FleetSettings(**values))  # type: ignore[arg-type]
        started.append(service)
        service.start()
        assert service.ingester is not None
        assert service.ingester.wait_connected(10), "ingester did not connect to the broker"
        return service

    yield make
    for service in started:
        service.stop()


@pytest.fixture
def service(make_service: MakeService) -> FleetService:
    return make_service()


@pytest.fixture
def api(service: FleetService) -> Iterator[httpx.Client]:
    """An HTTP client authenticated with the bootstrap admin token."""
    assert service.bootstrap_admin_token
    headers = {"Authorization": f"Bearer {service.bootstrap_admin_token}"}
    with httpx.Client(base_url=service.base_url, headers=headers, timeout=10) as client:
        yield client
