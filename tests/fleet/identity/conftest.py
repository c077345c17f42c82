"""The identity service of the identity tests, on the fresh store of `tests/conftest.py`."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine

from edgefleet.fleet.identity.service import IdentityService


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
