"""The device identity in use: when the agent uses it, what the broker link connects with,
and request signatures that follow a renewed certificate."""

from __future__ import annotations

import ssl
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

from edgefleet.agent.config import AgentConfig
from edgefleet.agent.credentials import (
    DeviceCredentials,
    broker_with_identity,
    fleet_tls_context,
    load_credentials,
)
from edgefleet.agent.identity import (
    BROKER_PASSWORD_FILE,
    CA_FILE,
    CERT_FILE,
    IdentityError,
    load_or_create_key,
)
from edgefleet.fleet.identity.ca import DeviceCA, parse_csr
from edgefleet.shared.device_auth import parse_authorization, signed_message
from tests.support.identity import csr_pem


@pytest.fixture
def ca(tmp_path: Path) -> DeviceCA:
    return DeviceCA.open_or_create(
        tmp_path / "ca", None, allow_unencrypted=True, now=datetime.now(UTC)
    )


def provision(ca: DeviceCA, identity_dir: Path, device_id: str) -> x509.Certificate:
    """What enrollment leaves in the identity dir: key, certificate of ``ca``, ca.pem."""
    key = load_or_create_key(identity_dir)
    issued = ca.sign(
        parse_csr(csr_pem(key, device_id)), lifetime=timedelta(days=1), now=datetime.now(UTC)
    )
    (identity_dir / CERT_FILE).write_text(issued.pem)
    (identity_dir / CA_FILE).write_text(ca.certificate_pem)
    return issued.certificate


def config(tmp_path: Path, **fields: object) -> AgentConfig:
    return AgentConfig.model_validate(
        {"device_id": "cam-1", "data_dir": str(tmp_path / "data"), **fields}
    )


def test_an_agent_without_a_certificate_uses_no_identity_unless_told_to(tmp_path: Path) -> None:
    assert load_credentials(config(tmp_path)) is None
    with pytest.raises(IdentityError, match="run `edgefleet agent enroll` first"):
        load_credentials(config(tmp_path, identity={"use": "on"}))


def test_an_enrolled_agent_uses_its_identity_unless_turned_off(
    ca: DeviceCA, tmp_path: Path
) -> None:
    cfg = config(tmp_path)
    provision(ca, cfg.identity_dir, "cam-1")
    credentials = load_credentials(cfg)
    assert credentials is not None
    assert credentials.device_id == "cam-1"
    assert load_credentials(config(tmp_path, identity={"use": "off"})) is None


def test_a_certificate_for_another_device_is_refused_at_start(ca: DeviceCA, tmp_path: Path) -> None:
    cfg = config(tmp_path)
    provision(ca, cfg.identity_dir, "cam-2")
    with pytest.raises(IdentityError, match="for device 'cam-2', this agent is 'cam-1'"):
        load_credentials(cfg)


def test_over_mqtts_the_broker_link_takes_the_identity_where_the_config_names_nothing(
    ca: DeviceCA, tmp_path: Path
) -> None:
    cfg = config(tmp_path, broker={"url": "mqtts://broker:8883", "ca_file": "/etc/broker-ca.pem"})
    provision(ca, cfg.identity_dir, "cam-1")
    credentials = load_credentials(cfg)
    assert credentials is not None
    broker = broker_with_identity(cfg.broker, credentials)
    assert broker.cert_file == cfg.identity_dir / "device.cert.pem"
    assert broker.key_file == cfg.identity_dir / "device.key.pem"
    assert broker.ca_file == Path("/etc/broker-ca.pem")  # named: kept
    plain = config(tmp_path, broker={"url": "mqtt://broker:1883"}).broker
    assert broker_with_identity(plain, credentials) == plain


def test_a_broker_password_from_enrollment_becomes_the_mqtt_login_with_the_device_id(
    ca: DeviceCA, tmp_path: Path
) -> None:
    cfg = config(tmp_path, broker={"url": "mqtts://broker:8883"})
    provision(ca, cfg.identity_dir, "cam-1")
    credentials = load_credentials(cfg)
    assert credentials is not None
    assert broker_with_identity(cfg.broker, credentials).username is None  # mtls: no login
    (cfg.identity_dir / BROKER_PASSWORD_FILE).write_text("efbp_secret-0123456789\n")
    broker = broker_with_identity(cfg.broker, credentials)
    assert broker.username == "cam-1"
    assert broker.password is not None
    assert broker.password.get_secret_value() == "efbp_secret-0123456789"
    named = config(tmp_path, broker={"url": "mqtts://broker:8883", "username": "ops"}).broker
    assert broker_with_identity(named, credentials).username == "ops"  # named: kept


def test_signatures_carry_the_renewed_certificate_once_the_file_is_replaced(
    ca: DeviceCA, tmp_path: Path
) -> None:
    directory = tmp_path / "identity"
    first = provision(ca, directory, "cam-1")
    credentials = DeviceCredentials(directory, clock=lambda: 1_700_000_000.0)
    url = "https://fleet/v1/repository/metadata/timestamp.json"
    signed = parse_authorization(credentials.authorization("GET", url)["Authorization"])
    assert signed.certificate_der == first.public_bytes(Encoding.DER)
    assert signed.timestamp == 1_700_000_000
    first.public_key().verify(  # type: ignore[union-attr, call-arg]
        signed.signature,
        signed_message("GET", "/v1/repository/metadata/timestamp.json", 1_700_000_000),
        ec.ECDSA(hashes.SHA256()),
    )
    renewed = provision(ca, directory, "cam-1")  # same key, new certificate
    signed = parse_authorization(credentials.authorization("GET", url)["Authorization"])
    assert signed.certificate_der == renewed.public_bytes(Encoding.DER)
    assert credentials.not_after == renewed.not_valid_after_utc


def test_a_certificate_for_another_key_is_not_taken(ca: DeviceCA, tmp_path: Path) -> None:
    directory = tmp_path / "identity"
    first = provision(ca, directory, "cam-1")
    credentials = DeviceCredentials(directory)
    stranger = ca.sign(
        parse_csr(csr_pem(ec.generate_private_key(ec.SECP256R1()), "cam-1")),
        lifetime=timedelta(days=1),
        now=datetime.now(UTC),
    )
    (directory / CERT_FILE).write_text(stranger.pem)
    assert credentials.certificate == first  # kept the one that matches the key
    with pytest.raises(IdentityError, match="not for the key"):
        DeviceCredentials(directory)


def test_the_fleet_tls_context_trusts_the_pinned_ca_and_checks_host_names(
    ca: DeviceCA, tmp_path: Path
) -> None:
    pinned = tmp_path / "ca" / "ca.pem"
    context = fleet_tls_context(pinned, None)
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname
    subjects = [dict(x[0] for x in c["subject"]) for c in context.get_ca_certs()]
    assert {"commonName": "edgefleet device CA"} in subjects
    assert fleet_tls_context(tmp_path / "not-enrolled-yet.pem", None).get_ca_certs() == (
        ssl.create_default_context().get_ca_certs()
    )
    with pytest.raises(IdentityError, match="cannot load the CA certificates"):
        fleet_tls_context(None, tmp_path / "missing.pem")
