"""The fleet's check of signed device requests, on a real device CA and real databases.

Each test is named after what it stops: a stranger's certificate, a revoked or unknown
device, a signature for another request, a stale or future timestamp.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from sqlalchemy import Engine
from sqlmodel import Session

from edgefleet.fleet.identity.ca import DeviceCA, parse_csr
from edgefleet.fleet.identity.device_auth import DeviceAuthenticator, DeviceAuthRefused
from edgefleet.fleet.identity.service import IdentityService, device_recorder
from edgefleet.shared.device_auth import authorization
from edgefleet.shared.identity import EnrollRequest
from tests.support.identity import csr_pem, p256_key

URL = "https://fleet.example:8443/v1/repository/metadata/timestamp.json"
TARGET = "/v1/repository/metadata/timestamp.json"
TTL_S = 2.0


class Clocks:
    """A wall clock and a monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.wall = time.time()
        self.mono = 1000.0


@pytest.fixture
def clocks() -> Clocks:
    return Clocks()


@pytest.fixture
def authenticator(
    engine: Engine, identity_service: IdentityService, clocks: Clocks
) -> DeviceAuthenticator:
    return DeviceAuthenticator(
        ca=identity_service.ca,
        engine=engine,
        identity_ttl_s=TTL_S,
        max_skew_s=300,
        clock=lambda: clocks.wall,
        monotonic=lambda: clocks.mono,
    )


def enroll(engine: Engine, identity_service: IdentityService, device_id: str):
    """Enroll ``device_id`` for real; its key and certificate DER."""
    operator = device_recorder("ops", request_id=None, source=None)
    key = p256_key()
    with Session(engine) as session:
        token = identity_service.create_token(
            session, operator, created_by="ops", ttl=timedelta(hours=1)
        )
        issued = identity_service.enroll(
            session,
            EnrollRequest(token=token.token, csr_pem=csr_pem(key, device_id)),
            request_id=None,
            source=None,
        )
    der = x509.load_pem_x509_certificate(issued.certificate_pem.encode()).public_bytes(Encoding.DER)
    return key, der


def signed(key: ec.EllipticCurvePrivateKey, der: bytes, clocks: Clocks, url: str = URL) -> str:
    return authorization(key, der, "GET", url, clocks.wall)


def test_an_enrolled_device_is_let_in_by_its_own_signature(
    engine: Engine,
    identity_service: IdentityService,
    authenticator: DeviceAuthenticator,
    clocks: Clocks,
) -> None:
    key, der = enroll(engine, identity_service, "cam-1")
    assert authenticator.needs_io()
    assert authenticator.authenticate(signed(key, der, clocks), "GET", TARGET) == "cam-1"
    assert not authenticator.needs_io()  # CA and identities loaded: the next one is in memory


def test_the_chain_is_verified_once_per_certificate_however_many_requests(
    engine: Engine,
    identity_service: IdentityService,
    authenticator: DeviceAuthenticator,
    clocks: Clocks,
) -> None:
    devices = [enroll(engine, identity_service, f"cam-{i}") for i in range(3)]
    for _ in range(50):
        for i, (key, der) in enumerate(devices):
            assert authenticator.authenticate(signed(key, der, clocks), "GET", TARGET) == f"cam-{i}"
    assert authenticator.certificate_checks == 3


def test_a_signature_for_another_target_or_method_is_refused(
    engine: Engine,
    identity_service: IdentityService,
    authenticator: DeviceAuthenticator,
    clocks: Clocks,
) -> None:
    key, der = enroll(engine, identity_service, "cam-1")
    value = signed(key, der, clocks)
    with pytest.raises(DeviceAuthRefused, match="does not verify"):
        authenticator.authenticate(value, "GET", "/v1/repository/metadata/1.root.json")
    with pytest.raises(DeviceAuthRefused, match="does not verify"):
        authenticator.authenticate(value, "PUT", TARGET)


def test_another_devices_key_cannot_sign_for_its_certificate(
    engine: Engine,
    identity_service: IdentityService,
    authenticator: DeviceAuthenticator,
    clocks: Clocks,
) -> None:
    _, victim_der = enroll(engine, identity_service, "cam-1")
    attacker_key, _ = enroll(engine, identity_service, "cam-2")
    with pytest.raises(DeviceAuthRefused, match="does not verify"):
        authenticator.authenticate(signed(attacker_key, victim_der, clocks), "GET", TARGET)


@pytest.mark.parametrize("skew_s", [-301, 301, -86_400 * 365])
def test_a_stale_or_future_timestamp_is_refused(
    engine: Engine,
    identity_service: IdentityService,
    authenticator: DeviceAuthenticator,
    clocks: Clocks,
    skew_s: int,
) -> None:
    key, der = enroll(engine, identity_service, "cam-1")
    value = authorization(key, der, "GET", URL, clocks.wall + skew_s)
    with pytest.raises(DeviceAuthRefused, match="fleet's clock"):
        authenticator.authenticate(value, "GET", TARGET)
    within = authorization(key, der, "GET", URL, clocks.wall - 299)
    assert authenticator.authenticate(within, "GET", TARGET) == "cam-1"


def test_a_certificate_of_another_ca_is_refused(
    authenticator: DeviceAuthenticator, clocks: Clocks, tmp_path: Path
) -> None:
    other = DeviceCA.open_or_create(
        tmp_path / "other-ca", None, allow_unencrypted=True, now=datetime.now(UTC)
    )
    key = p256_key()
    issued = other.sign(
        parse_csr(csr_pem(key, "cam-1")), lifetime=timedelta(days=1), now=datetime.now(UTC)
    )
    der = issued.certificate.public_bytes(Encoding.DER)
    with pytest.raises(DeviceAuthRefused, match="not issued by this fleet's device CA"):
        authenticator.authenticate(signed(key, der, clocks), "GET", TARGET)
    assert authenticator.certificate_checks == 1
    with pytest.raises(DeviceAuthRefused):  # a refusal is not cached as a pass
        authenticator.authenticate(signed(key, der, clocks), "GET", TARGET)


def test_a_certificate_of_the_ca_without_an_identity_is_refused(
    identity_service: IdentityService, authenticator: DeviceAuthenticator, clocks: Clocks
) -> None:
    # Signed by the CA but never enrolled (no identity row): e.g. a stolen CA signature.
    key = p256_key()
    issued = identity_service.ca().sign(
        parse_csr(csr_pem(key, "ghost")), lifetime=timedelta(days=1), now=datetime.now(UTC)
    )
    der = issued.certificate.public_bytes(Encoding.DER)
    with pytest.raises(DeviceAuthRefused, match="no identity"):
        authenticator.authenticate(signed(key, der, clocks), "GET", TARGET)


def test_a_service_certificate_of_the_ca_is_no_device(
    identity_service: IdentityService, authenticator: DeviceAuthenticator, clocks: Clocks
) -> None:
    key = p256_key()
    issued = identity_service.ca().sign_service(
        key.public_key(), "edgefleet:fleet", lifetime=timedelta(days=1), now=datetime.now(UTC)
    )
    der = issued.certificate.public_bytes(Encoding.DER)
    with pytest.raises(DeviceAuthRefused, match="not a device id"):
        authenticator.authenticate(signed(key, der, clocks), "GET", TARGET)


def test_a_revoked_device_is_refused_once_the_identities_are_reread(
    engine: Engine,
    identity_service: IdentityService,
    authenticator: DeviceAuthenticator,
    clocks: Clocks,
) -> None:
    key, der = enroll(engine, identity_service, "cam-1")
    assert authenticator.authenticate(signed(key, der, clocks), "GET", TARGET) == "cam-1"
    operator = device_recorder("ops", request_id=None, source=None)
    with Session(engine) as session:
        identity_service.revoke(session, "cam-1", operator, by="ops", reason="stolen")
    clocks.mono += TTL_S  # the copy of the identities is now stale
    assert authenticator.needs_io()
    with pytest.raises(DeviceAuthRefused, match="is revoked"):
        authenticator.authenticate(signed(key, der, clocks), "GET", TARGET)


def test_an_expired_certificate_is_refused(
    engine: Engine,
    identity_service: IdentityService,
    authenticator: DeviceAuthenticator,
    clocks: Clocks,
) -> None:
    key, der = enroll(engine, identity_service, "cam-1")
    clocks.wall += 91 * 86_400
    with pytest.raises(DeviceAuthRefused, match="not now"):
        authenticator.authenticate(signed(key, der, clocks), "GET", TARGET)


def test_garbage_is_refused_with_the_reason(authenticator: DeviceAuthenticator) -> None:
    with pytest.raises(DeviceAuthRefused, match="expected <certificate>"):
        authenticator.authenticate("EdgefleetDevice nonsense", "GET", TARGET)
    with pytest.raises(DeviceAuthRefused, match=r"not DER X\.509"):
        authenticator.authenticate(f"EdgefleetDevice AAAA.{int(time.time())}.AAAA", "GET", TARGET)
