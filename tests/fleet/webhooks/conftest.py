"""Webhook fixtures: the fleet API on a real database, with chosen destination settings.

``webhook_api(**settings)`` returns a `TestClient` (admin token set) for an app built on
this test's database (SQLite, and PostgreSQL when available) with those settings.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from edgefleet.fleet.api.app import create_app
from edgefleet.fleet.api.auth import bootstrap_admin_token
from edgefleet.fleet.settings import FleetSettings
from edgefleet.fleet.store.engine import create_all, make_engine

ADMIN = "webhook-test-admin-token"

WebhookApi = Callable[..., TestClient]


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    create_all(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def webhook_api(engine: Engine, database_url: str, tmp_path: Path) -> Iterator[WebhookApi]:
    clients: list[TestClient] = []

    def make(**overrides: object) -> TestClient:
        values: dict[str, object] = {
            "database_url": database_url,
            "data_dir": tmp_path / "fleet",
            "admin_token": ADMIN,
        } | overrides
        settings = FleetSettings(**values)  # type: ignore[arg-type]
        bootstrap_admin_token(engine, settings)
        client = TestClient(
            create_app(settings, engine=engine), headers={"Authorization": f"Bearer {ADMIN}"}
        )
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()
