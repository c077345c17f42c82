"""Fixtures for ``edgefleet ctl`` tests: the real entry point run in-process with a
clean environment, a fleet on SQLite, and protocol-level devices."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from edgefleet.fleet.service import FleetService
from edgefleet.shared.cli import main
from tests.fleet.publisher import wait_until
from tests.fleet.rollout_service.devices import ProtocolFleet
from tests.support.fleet_fixtures import ADMIN_TOKEN, admin_client
from tests.support.mosquitto import MosquittoBroker

CONFIG_VARIABLES = (
    "EDGEFLEET_URL",
    "EDGEFLEET_TOKEN",
    "EDGEFLEET_CONFIG",
    "EDGEFLEET_PROFILE",
    "EDGEFLEET_CA_FILE",
    "NO_COLOR",
)


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    """SQLite only: the command line sees the database through the API alone."""
    return f"sqlite:///{tmp_path / 'fleet.db'}"


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


Ctl = Callable[..., Result]


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No ctl settings from the machine running the tests (nor its ~/.config)."""
    for name in CONFIG_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


@pytest.fixture
def ctl(
    clean_env: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Ctl:
    """``ctl(*argv, url=..., token=...)``: ``edgefleet ctl ARGV`` through the real entry
    point, with EDGEFLEET_URL/EDGEFLEET_TOKEN set to ``url`` and ``token`` (None: unset)."""

    def run(*argv: str, url: str | None = None, token: str | None = ADMIN_TOKEN) -> Result:
        capsys.readouterr()
        with monkeypatch.context() as env:
            for name, value in (("EDGEFLEET_URL", url), ("EDGEFLEET_TOKEN", token)):
                if value is None:
                    env.delenv(name, raising=False)
                else:
                    env.setenv(name, value)
            code = main(["ctl", *argv])
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run


StartDevices = Callable[[FleetService, int], ProtocolFleet]


@pytest.fixture
def start_devices(mosquitto: MosquittoBroker, unique_id: str) -> Iterator[StartDevices]:
    """``n`` protocol-level devices running wine 1.0.0, tagged ``t-<unique_id>``, started
    once the fleet lists all of them."""
    started: list[ProtocolFleet] = []

    def start(fleet: FleetService, n: int) -> ProtocolFleet:
        tag = f"t-{unique_id}"
        ids = [f"ctl-{unique_id}-{i:02d}" for i in range(n)]
        devices = ProtocolFleet(mosquitto.port, ids, fleet.director_key, tags=(tag,))
        devices.start()
        started.append(devices)
        with admin_client(fleet) as api:
            wait_until(
                lambda: api.get("/v1/devices", params={"tag": tag}).json()["total"] == n,
                what=f"{n} devices to register",
            )
        return devices

    yield start
    for devices in started:
        devices.stop()
