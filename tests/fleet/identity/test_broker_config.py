"""The broker config renderer, pure: each device only its own topics, the fleet apart."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from edgefleet.fleet.identity.broker_config import (
    FLEET_IDENTITY,
    BrokerFiles,
    BrokerMode,
    device_acl,
    fleet_acl,
    mosquitto_conf,
)
from edgefleet.fleet.identity.ca import DeviceCA
from edgefleet.shared.topics import TopicError, validate_device_id

NOW = datetime(2026, 12, 3, tzinfo=UTC)
FILES = BrokerFiles(
    ca_file=Path("/b/ca.pem"),
    cert_file=Path("/b/server.pem"),
    key_file=Path("/b/server.key"),
    device_acl_file=Path("/b/acl.devices"),
    fleet_acl_file=Path("/b/acl.fleet"),
    crl_file=Path("/b/crl.pem"),
)


def test_a_device_may_write_only_its_own_topics_and_read_only_its_desired_and_stored() -> None:
    rules = [line for line in device_acl().splitlines() if not line.startswith("#")]
    assert sorted(rules) == sorted(
        [
            "pattern write edgefleet/v1/devices/%u/state",
            "pattern write edgefleet/v1/devices/%u/telemetry",
            "pattern write edgefleet/v1/devices/%u/drift",
            "pattern write edgefleet/v1/devices/%u/events",
            "pattern read edgefleet/v1/devices/%u/desired",
            "pattern read edgefleet/v1/devices/%u/stored",
        ]
    )


def test_only_the_fleet_identity_gets_desired_stored_and_alerts() -> None:
    acl = fleet_acl()
    assert f"user {FLEET_IDENTITY}\n" in acl
    assert "topic write edgefleet/v1/devices/+/desired" in acl
    assert "topic write edgefleet/v1/devices/+/stored" in acl
    assert "topic readwrite edgefleet/v1/fleet/alerts" in acl
    assert "pattern" not in acl


def test_the_fleet_identity_can_never_be_a_device_id() -> None:
    with pytest.raises(TopicError):
        validate_device_id(FLEET_IDENTITY)


def test_mtls_device_listener_ties_client_id_to_the_certificate() -> None:
    conf = mosquitto_conf(BrokerMode.MTLS, FILES)
    device, fleet = conf.split("\n\n")[1:]
    for line in (
        "require_certificate true",
        "use_identity_as_username true",
        "use_username_as_clientid true",
        "crlfile /b/crl.pem",
        "allow_anonymous false",
        "acl_file /b/acl.devices",
    ):
        assert line in device.splitlines()
    assert "use_username_as_clientid true" not in fleet
    assert "acl_file /b/acl.fleet" in fleet.splitlines()
    assert conf.startswith("#")
    assert "per_listener_settings true" in conf.splitlines()


def test_mtls_without_a_crl_is_refused() -> None:
    with pytest.raises(ValueError, match="CRL"):
        mosquitto_conf(
            BrokerMode.MTLS,
            BrokerFiles(**{**FILES.__dict__, "crl_file": None}),
        )


def test_a_service_certificate_cannot_carry_a_device_id(tmp_path: Path) -> None:
    ca = DeviceCA.open_or_create(tmp_path / "ca", b"pass", now=NOW)
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    with pytest.raises(ValueError, match="device id"):
        ca.sign_service(key, "cam-1", lifetime=timedelta(days=30), now=NOW)
    server = ca.sign_service(
        key,
        "edgefleet broker",
        lifetime=timedelta(days=30),
        now=NOW,
        server_names=["localhost", "127.0.0.1"],
    )
    eku = server.certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
