"""``edgefleet agent enroll`` end to end against a real fleet API served over HTTP.

The fleet runs for real (uvicorn on a free loopback port, SQLite, its device CA
encrypted with a passphrase); the agent side is the real CLI, in-process.
"""

from __future__ import annotations

import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from cryptography.x509.oid import NameOID

from edgefleet.agent.identity import CA_FILE, CERT_FILE, KEY_FILE
from edgefleet.fleet.api.app import create_app
from edgefleet.fleet.service import uvicorn_config
from edgefleet.fleet.settings import FleetSettings
from edgefleet.fleet.store.engine import make_engine
from edgefleet.fleet.store.migrate import create_all
from edgefleet.shared.cli import main
from tests.support.people import user_token


@dataclass(frozen=True)
class RunningFleet:
    url: str
    operator: httpx.Client

    def token(self, **body: object) -> str:
        response = self.operator.post("/v1/enrollment-tokens", json=body)
        assert response.status_code == 201, response.text
        return str(response.json()["token"])


def _serve(tmp_path: Path) -> Iterator[RunningFleet]:
    engine = make_engine(f"sqlite:///{tmp_path / 'fleet.db'}")
    create_all(engine)
    settings = FleetSettings(data_dir=tmp_path / "fleet", database_url=str(engine.url), api_port=0)
    server = uvicorn.Server(uvicorn_config(create_app(settings, engine=engine), settings))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive(), "the fleet API stopped while starting"
        assert time.monotonic() < deadline, "the fleet API did not start within 10 s"
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {user_token(engine, 'olga', 'operator')}"}
    with httpx.Client(base_url=url, headers=headers, timeout=20) as operator:
        yield RunningFleet(url, operator)
    server.should_exit = True
    thread.join(10)
    engine.dispose()


@pytest.fixture
def fleet_api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[RunningFleet]:
    monkeypatch.setenv("EDGEFLEET_KEY_PASSPHRASE", "a passphrase for the device CA")
    yield from _serve(tmp_path / "fleet-a")


def _enroll(fleet: str, token: str, device: str, directory: Path) -> int:
    args = ["agent", "enroll", "--fleet", fleet, "--token", token]
    return main([*args, "--device-id", device, "--identity-dir", str(directory)])


def test_a_device_enrolls_and_keeps_its_key_private(
    fleet_api: RunningFleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    token = fleet_api.token()
    directory = tmp_path / "device" / "identity"
    assert _enroll(fleet_api.url, token, "cam-1", directory) == 0
    assert "enrolled cam-1" in capsys.readouterr().out
    key_file = directory / KEY_FILE
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(directory.stat().st_mode) & 0o077 == 0
    cert = x509.load_pem_x509_certificate((directory / CERT_FILE).read_bytes())
    ca = x509.load_pem_x509_certificate((directory / CA_FILE).read_bytes())
    cert.verify_directly_issued_by(ca)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "cam-1"
    key = load_pem_private_key(key_file.read_bytes(), None)
    assert cert.public_key() == key.public_key()
    identity = fleet_api.operator.get("/v1/identities/cam-1").json()
    assert identity["state"] == "active"
    assert identity["cert_serial"] == format(cert.serial_number, "x")


def test_a_second_enrollment_with_the_same_token_is_refused(
    fleet_api: RunningFleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    token = fleet_api.token()
    assert _enroll(fleet_api.url, token, "cam-1", tmp_path / "one") == 0
    capsys.readouterr()
    assert _enroll(fleet_api.url, token, "cam-2", tmp_path / "two") == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "HTTP 401" in err
    assert "used already" in err
    assert not (tmp_path / "two" / CERT_FILE).exists()


def test_a_pre_authorised_key_enrolls_and_another_key_is_refused(
    fleet_api: RunningFleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = tmp_path / "device"
    common = ["--device-id", "cam-5", "--identity-dir", str(directory)]
    assert main(["agent", "key-fingerprint", *common]) == 0
    fingerprint = capsys.readouterr().out.strip()
    token = fleet_api.token(device_id="cam-5", key_fingerprint=fingerprint)
    assert _enroll(fleet_api.url, token, "cam-5", tmp_path / "impostor") == 2
    assert "pre-authorised for key" in capsys.readouterr().err
    assert _enroll(fleet_api.url, token, "cam-5", directory) == 0


def test_an_enrolled_device_does_not_enroll_again(
    fleet_api: RunningFleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _enroll(fleet_api.url, fleet_api.token(), "cam-1", tmp_path / "d") == 0
    capsys.readouterr()
    assert _enroll(fleet_api.url, fleet_api.token(), "cam-1", tmp_path / "d") == 2
    assert "enrolled already" in capsys.readouterr().err


def test_a_fleet_with_another_ca_than_the_pinned_one_is_refused(
    fleet_api: RunningFleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = tmp_path / "d"
    assert _enroll(fleet_api.url, fleet_api.token(), "cam-1", directory) == 0
    (directory / CERT_FILE).unlink()  # as if enrolling anew, with the old CA still pinned
    for other in _serve(tmp_path / "fleet-b"):
        capsys.readouterr()
        assert _enroll(other.url, other.token(), "cam-1", directory) == 2
        assert "another device CA" in capsys.readouterr().err
        assert not (directory / CERT_FILE).exists()


def test_an_unreachable_fleet_is_one_clear_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _enroll("http://127.0.0.1:9", "efe_" + "x" * 40, "cam-1", tmp_path / "d") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("edgefleet: error: enrollment failed: cannot reach the fleet")
    assert not (tmp_path / "d" / KEY_FILE).exists()  # nothing made before the fleet answered


def test_enrolling_needs_nothing_beyond_the_agent_extra() -> None:
    # httpx, FastAPI and SQLModel are the fleet's: a device installs edgefleet[agent] only.
    code = (
        "import sys, edgefleet.agent.identity, edgefleet.agent.cli\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in"
        " ('httpx', 'fastapi', 'sqlmodel', 'sqlalchemy', 'uvicorn')"
        " or m.startswith('edgefleet.fleet'))\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == ""


def test_a_device_renews_over_its_certificate_until_it_is_revoked(
    fleet_api: RunningFleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = tmp_path / "d"
    assert _enroll(fleet_api.url, fleet_api.token(), "cam-1", directory) == 0
    first = x509.load_pem_x509_certificate((directory / CERT_FILE).read_bytes())
    key_before = (directory / KEY_FILE).read_bytes()
    renew = ["agent", "renew", "--fleet", fleet_api.url, "--identity-dir", str(directory)]
    assert main(renew) == 0
    assert "renewed cam-1" in capsys.readouterr().out
    second = x509.load_pem_x509_certificate((directory / CERT_FILE).read_bytes())
    assert second.serial_number != first.serial_number
    assert second.public_key() == first.public_key()
    assert (directory / KEY_FILE).read_bytes() == key_before
    identity = fleet_api.operator.get("/v1/identities/cam-1").json()
    assert identity["cert_serial"] == format(second.serial_number, "x")
    revoked = fleet_api.operator.post("/v1/identities/cam-1/revoke", json={"reason": "lost"})
    assert revoked.status_code == 200
    assert main(renew) == 2
    err = capsys.readouterr().err
    assert "renewal failed" in err
    assert "revoked" in err
    assert x509.load_pem_x509_certificate((directory / CERT_FILE).read_bytes()) == second


def test_renewing_a_device_that_never_enrolled_is_one_clear_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    renew = ["agent", "renew", "--fleet", "http://127.0.0.1:9", "--identity-dir", str(tmp_path)]
    assert main(renew) == 2
    assert "not enrolled" in capsys.readouterr().err
