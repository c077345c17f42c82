"""The broker config directory: what `write_broker_setup` writes, and `sync_broker_files`
keeping the CRL and password file current."""

from __future__ import annotations

import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from edgefleet.fleet.identity.broker_config import FLEET_IDENTITY, BrokerMode, Listener
from edgefleet.fleet.identity.broker_files import (
    FLEET_PASSWORD_USER,
    BrokerLayout,
    BrokerSetup,
    reload_broker,
    sync_broker_files,
    write_broker_setup,
)
from edgefleet.fleet.identity.broker_passwords import check_password, mosquitto_hash
from edgefleet.fleet.identity.ca import DeviceCA

NOW = datetime(2026, 12, 4, tzinfo=UTC)


@pytest.fixture
def ca(tmp_path: Path) -> DeviceCA:
    return DeviceCA.open_or_create(tmp_path / "ca", None, allow_unencrypted=True, now=NOW)


def write(
    ca: DeviceCA, directory: Path, mode: BrokerMode, passwords: tuple[tuple[str, str], ...] = ()
) -> BrokerSetup:
    return write_broker_setup(
        directory,
        ca,
        mode=mode,
        device=Listener(8883),
        fleet=Listener(8884, "127.0.0.1"),
        server_names=("broker.example", "10.0.0.5"),
        crl_pem=ca.crl([], now=NOW),
        device_passwords=list(passwords),
        now=NOW,
    )


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_mtls_writes_a_broker_certificate_a_fleet_client_certificate_and_the_crl(
    ca: DeviceCA, tmp_path: Path
) -> None:
    setup = write(ca, tmp_path / "broker", BrokerMode.MTLS)
    layout = setup.layout
    conf = layout.conf.read_text()
    for path in (layout.ca, layout.crl, layout.broker_cert, layout.broker_key):
        assert str(path.absolute()) in conf
    broker = x509.load_pem_x509_certificate(layout.broker_cert.read_bytes())
    names = broker.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["broker.example"]
    assert broker.issuer == ca.certificate.subject
    fleet = x509.load_pem_x509_certificate(layout.fleet_cert.read_bytes())
    assert fleet.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == FLEET_IDENTITY
    assert mode_of(layout.fleet_key) == 0o600
    assert x509.load_pem_x509_crl(layout.crl.read_bytes()).issuer == ca.certificate.subject
    settings = setup.fleet_settings("127.0.0.1")
    assert settings["EDGEFLEET_FLEET_BROKER_URL"] == "mqtts://127.0.0.1:8884"
    assert settings["EDGEFLEET_FLEET_BROKER_CERT_FILE"] == str(layout.fleet_cert.absolute())
    assert settings["EDGEFLEET_FLEET_REQUIRE_DEVICE_IDENTITY"] == "true"
    assert not layout.device_passwords.exists()


def test_password_mode_keeps_the_fleet_password_across_a_rewrite(
    ca: DeviceCA, tmp_path: Path
) -> None:
    device_hash = mosquitto_hash("device-pw")
    setup = write(ca, tmp_path / "broker", BrokerMode.PASSWORD, (("cam-1", device_hash),))
    layout = setup.layout
    password = layout.fleet_password.read_text().strip()
    assert mode_of(layout.fleet_password) == 0o600
    user, hashed = layout.fleet_passwords.read_text().strip().split(":", 1)
    assert user == FLEET_PASSWORD_USER
    assert check_password(password, hashed)
    assert layout.device_passwords.read_text() == f"cam-1:{device_hash}\n"
    assert "require_certificate" not in layout.conf.read_text()
    settings = write(ca, tmp_path / "broker", BrokerMode.PASSWORD).fleet_settings("10.0.0.5")
    assert settings["EDGEFLEET_FLEET_BROKER_PASSWORD"] == password
    assert settings["EDGEFLEET_FLEET_BROKER_USERNAME"] == FLEET_PASSWORD_USER


def test_a_broker_certificate_needs_a_server_name(ca: DeviceCA, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="server name"):
        write_broker_setup(
            tmp_path,
            ca,
            mode=BrokerMode.MTLS,
            device=Listener(8883),
            fleet=Listener(8884),
            server_names=(),
            crl_pem=b"",
            device_passwords=[],
            now=NOW,
        )


def test_sync_rewrites_the_crl_when_the_revoked_set_changes_or_it_is_a_day_old(
    ca: DeviceCA, tmp_path: Path
) -> None:
    layout = write(ca, tmp_path / "broker", BrokerMode.MTLS).layout

    def sync(revoked: set[str], now: datetime) -> bool:
        crl = ca.crl([(s, now) for s in sorted(revoked)], now=now)
        return sync_broker_files(
            layout, revoked=revoked, crl_pem=crl, device_passwords=None, now=now
        )

    assert not sync(set(), NOW + timedelta(hours=1))
    assert sync({"ab12"}, NOW + timedelta(hours=1))
    assert [
        format(r.serial_number, "x") for r in x509.load_pem_x509_crl(layout.crl.read_bytes())
    ] == ["ab12"]
    assert not sync({"ab12"}, NOW + timedelta(hours=2))
    assert sync({"ab12"}, NOW + timedelta(days=1, hours=1))  # re-signed before it expires
    layout.crl.write_text("damaged")
    assert sync({"ab12"}, NOW + timedelta(days=1, hours=2))


def test_sync_rewrites_the_device_password_file_only_when_it_differs(
    ca: DeviceCA, tmp_path: Path
) -> None:
    layout = write(ca, tmp_path / "broker", BrokerMode.PASSWORD).layout
    crl = ca.crl([], now=NOW)
    layout.crl.write_bytes(crl)  # password mode has no CRL of its own; the sync keeps one
    entries = [("cam-1", mosquitto_hash("a"))]

    def sync(passwords: list[tuple[str, str]]) -> bool:
        return sync_broker_files(
            layout, revoked=set(), crl_pem=crl, device_passwords=passwords, now=NOW
        )

    assert sync(entries)
    assert not sync(entries)
    assert sync([])
    assert layout.device_passwords.read_text() == ""


def test_the_reload_command_runs_without_a_shell_and_a_failure_is_reported(tmp_path: Path) -> None:
    marker = tmp_path / "reloaded; rm -rf /"
    assert reload_broker(f"touch '{marker}'")
    assert marker.exists()
    assert not reload_broker("false")
    assert not reload_broker("/nonexistent/reload")
    assert not reload_broker("unbalanced 'quote")


def test_the_layout_names_the_files_the_conf_points_at(tmp_path: Path) -> None:
    files = BrokerLayout(tmp_path).broker_files(BrokerMode.PASSWORD)
    assert files.crl_file is None
    assert files.device_password_file == (tmp_path / "passwd.devices").absolute()
