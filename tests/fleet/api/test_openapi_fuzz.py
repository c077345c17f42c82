"""schemathesis against a running fleet: every operation, a valid admin token, a fixed budget.

The fleet runs for real (HTTP on loopback, SQLite, Mosquitto, lab signing keys so the
repository and publish routes are live). Each operation gets `EXAMPLES` generated
requests, derandomized so CI sees the same cases every run. Checked: no 5xx, every
status is one the OpenAPI document lists for that operation, and every body matches
the documented schema (errors included: `edgefleet.fleet.api.errors.ErrorBody`).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import Case
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.schemas import BaseSchema

from edgefleet.fleet.api.app import create_app
from edgefleet.fleet.keys import create_lab_setup
from edgefleet.fleet.service import FleetService
from edgefleet.fleet.settings import FleetSettings
from edgefleet.fleet.store.engine import make_engine
from tests.support.fleet_fixtures import ADMIN_TOKEN, DEVICE_TOKEN
from tests.support.mosquitto import MosquittoBroker

EXAMPLES = 30
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


def _documented_schema() -> BaseSchema:
    """The fleet's OpenAPI document, from an app on an in-memory database.

    Built at import because schemathesis makes one test per operation at collection;
    the document depends on the code only, never on the database or the settings.
    """
    app = create_app(FleetSettings(data_dir=Path("/nonexistent")), engine=make_engine("sqlite://"))
    return schemathesis.openapi.from_dict(app.openapi())


@pytest.fixture(scope="module")
def fleet_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The base URL of a real fleet that runs for the whole module."""
    root: Path = tmp_path_factory.mktemp("openapi-fuzz")
    broker = MosquittoBroker(root / "mosquitto")
    broker.start()
    lab = create_lab_setup(root / "lab")
    service = FleetService(
        FleetSettings(
            database_url=f"sqlite:///{root / 'fleet.db'}",
            migrate_at_start=True,
            broker_url=broker.url,
            data_dir=root / "fleet",
            api_port=0,
            keys_dir=lab.keys_dir,
            lab_mode=True,
            repository_device_token=DEVICE_TOKEN,
            admin_token=ADMIN_TOKEN,
            publish_timeout_s=2.0,
        )
    )
    service.start()
    try:
        yield service.base_url
    finally:
        service.stop()
        broker.stop()


schema = _documented_schema()


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
def test_every_operation_answers_as_documented(case: Case, fleet_url: str) -> None:
    case.call_and_validate(base_url=fleet_url, headers=AUTH, checks=CHECKS, timeout=30)
