"""The device CA: what it issues verifies with cryptography, what it refuses is named."""

from __future__ import annotations

import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edgefleet.fleet.identity.ca import (
    BUNDLE_FILE,
    CERT_FILE,
    CaUnavailableError,
    CsrRejectedError,
    DeviceCA,
    parse_csr,
)
from edgefleet.shared.identity import key_fingerprint
from tests.support.identity import csr_pem, p256_key

NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)
PASS = b"correct horse battery staple"


@pytest.fixture
def ca(tmp_path: Path) -> DeviceCA:
    return DeviceCA.open_or_create(tmp_path / "ca", PASS, now=NOW)


def test_the_ca_key_is_encrypted_at_rest_and_private(ca: DeviceCA) -> None:
    bundle = ca.directory / BUNDLE_FILE
    assert stat.S_IMODE(bundle.stat().st_mode) == 0o600
    assert b"ENCRYPTED PRIVATE KEY" in bundle.read_bytes()
    assert (ca.directory / CERT_FILE).read_text() == ca.certificate_pem
    constraints = ca.certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert constraints.ca


def test_reopening_gives_the_same_ca_and_a_wrong_passphrase_is_named(ca: DeviceCA) -> None:
    again = DeviceCA.open_or_create(ca.directory, PASS, now=NOW)
    assert again.certificate == ca.certificate
    with pytest.raises(CaUnavailableError, match="wrong passphrase"):
        DeviceCA.open_or_create(ca.directory, b"wrong", now=NOW)
    with pytest.raises(CaUnavailableError, match="encrypted"):
        DeviceCA.open_or_create(ca.directory, None, now=NOW)


def test_no_ca_is_made_in_clear_unless_asked(tmp_path: Path) -> None:
    with pytest.raises(CaUnavailableError, match="EDGEFLEET_KEY_PASSPHRASE"):
        DeviceCA.open_or_create(tmp_path / "ca", None, now=NOW)
    assert not (tmp_path / "ca" / BUNDLE_FILE).exists()
    lab = DeviceCA.open_or_create(tmp_path / "ca", None, allow_unencrypted=True, now=NOW)
    assert b"ENCRYPTED" not in (lab.directory / BUNDLE_FILE).read_bytes()


def test_an_issued_certificate_verifies_against_the_ca(ca: DeviceCA) -> None:
    key = p256_key()
    issued = ca.sign(parse_csr(csr_pem(key, "cam-7")), lifetime=timedelta(days=90), now=NOW)
    cert = x509.load_pem_x509_certificate(issued.pem.encode())
    cert.verify_directly_issued_by(ca.certificate)  # raises if not
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "cam-7"
    assert cert.not_valid_after_utc == NOW + timedelta(days=90)
    assert cert.not_valid_before_utc <= NOW
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature
    assert not usage.key_cert_sign
    assert issued.serial == format(cert.serial_number, "x")
    assert issued.key_fingerprint == key_fingerprint(key.public_key())
    assert ca.check_issued(issued.pem, now=NOW).serial_number == cert.serial_number


def test_two_certificates_get_different_random_serials(ca: DeviceCA) -> None:
    csr = parse_csr(csr_pem(p256_key(), "cam-7"))
    serials = {ca.sign(csr, lifetime=timedelta(days=1), now=NOW).serial for _ in range(5)}
    assert len(serials) == 5


@pytest.mark.parametrize("days", [0, 398])
def test_a_lifetime_out_of_bounds_is_refused(ca: DeviceCA, days: int) -> None:
    csr = parse_csr(csr_pem(p256_key(), "cam-7"))
    with pytest.raises(ValueError, match="lifetime"):
        ca.sign(csr, lifetime=timedelta(days=days), now=NOW)


@pytest.mark.parametrize(
    ("key", "match"),
    [
        (ed25519.Ed25519PrivateKey.generate(), "Ed25519PublicKey.*P-256"),
        (ec.generate_private_key(ec.SECP384R1()), "secp384r1.*P-256"),
    ],
)
def test_a_csr_with_another_key_type_is_refused(key: object, match: str) -> None:
    with pytest.raises(CsrRejectedError, match=match):
        parse_csr(csr_pem(key, "cam-7"))  # type: ignore[arg-type]


@pytest.mark.parametrize("cn", ["", "../etc", "a/b", "-leading", "x" * 65, "x" * 129])
def test_a_csr_whose_cn_is_no_device_id_is_refused(cn: str) -> None:
    with pytest.raises(CsrRejectedError):
        parse_csr(csr_pem(p256_key(), cn))


def test_garbage_and_a_tampered_csr_are_refused() -> None:
    with pytest.raises(CsrRejectedError, match="not a PEM"):
        parse_csr("-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n")
    der = x509.load_pem_x509_csr(csr_pem(p256_key(), "cam-7").encode()).public_bytes(Encoding.DER)
    assert der.count(b"cam-7") == 1
    # The CN changed after signing: the signature no longer covers what the CSR says.
    tampered = x509.load_der_x509_csr(der.replace(b"cam-7", b"cam-8"))
    with pytest.raises(CsrRejectedError, match="signature"):
        parse_csr(tampered.public_bytes(Encoding.PEM).decode())


def test_another_cas_certificate_and_an_expired_one_are_refused(
    ca: DeviceCA, tmp_path: Path
) -> None:
    other = DeviceCA.open_or_create(tmp_path / "other", PASS, now=NOW)
    csr = parse_csr(csr_pem(p256_key(), "cam-7"))
    foreign = other.sign(csr, lifetime=timedelta(days=1), now=NOW)
    with pytest.raises(CsrRejectedError, match="not issued by this fleet"):
        ca.check_issued(foreign.pem, now=NOW)
    own = ca.sign(csr, lifetime=timedelta(days=1), now=NOW)
    with pytest.raises(CsrRejectedError, match="valid from"):
        ca.check_issued(own.pem, now=NOW + timedelta(days=2))


def test_the_crl_lists_the_revoked_serials_and_is_signed_by_the_ca(ca: DeviceCA) -> None:
    csr = parse_csr(csr_pem(p256_key(), "cam-7"))
    revoked = ca.sign(csr, lifetime=timedelta(days=1), now=NOW)
    kept = ca.sign(csr, lifetime=timedelta(days=1), now=NOW)
    pem = ca.write_crl([(revoked.serial, NOW)], now=NOW)
    assert ca.crl_path.read_bytes() == pem
    crl = x509.load_pem_x509_crl(pem)
    assert crl.is_signature_valid(ca.certificate.public_key())  # type: ignore[arg-type]
    assert crl.get_revoked_certificate_by_serial_number(int(revoked.serial, 16)) is not None
    assert crl.get_revoked_certificate_by_serial_number(int(kept.serial, 16)) is None
    assert crl.next_update_utc is not None
    assert crl.next_update_utc > NOW + timedelta(days=7)
