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
from edgefleet.fleet.drift.alerts import AlertDecision, AlertKind
from edgefleet.fleet.settings import FleetSettings

ADMIN = "webhook-test-admin-token"
LOOPBACK = ["127.0.0.0/8"]


def decision(slice_key: str = "fleet", kind: AlertKind = AlertKind.DATA_DRIFT) -> AlertDecision:
    """An alert to raise, as the drift monitor would decide it."""
    return AlertDecision(
        kind=kind,
        severity="warning",
        model_name="wine",
        model_version="1.0.0",
        slice_key=slice_key,
        message=f"{kind.value} on {slice_key}",
        evidence={"slice": {}, "window_start": "2026-01-01T00:00:00+00:00"},
    )


WebhookApi = Callable[..., TestClient]


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
