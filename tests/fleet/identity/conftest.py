"""Fixtures of the identity tests: a fresh store on both engines and an identity service on it."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine

from edgefleet.fleet.identity.service import IdentityService
from edgefleet.fleet.store.engine import create_all, make_engine


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    """A fresh fleet store on SQLite and on PostgreSQL."""
    engine = make_engine(database_url)
    create_all(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def identity_service(engine: Engine, tmp_path: Path) -> IdentityService:
    """The identity service with its device CA under ``tmp_path/ca``, key encrypted."""
    return IdentityService(
        engine,
        tmp_path / "ca",
        passphrase=b"pass",
        allow_unencrypted=False,
        cert_lifetime=timedelta(days=90),
    )
