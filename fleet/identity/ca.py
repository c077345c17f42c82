"""The fleet's device CA: an EC P-256 key and a self-signed certificate, and what it signs.

Invariants:
- the CA key and certificate live together in one file, ``<dir>/ca.bundle.pem`` (the
  key PKCS#8, encrypted with the passphrase unless the caller explicitly allows a lab
  key in clear; mode 0600). It is created once, by a hard link that fails if another
  replica created it first, so two replicas starting at once end up with one CA;
- ``<dir>/ca.pem`` (the certificate alone, for brokers and devices) and ``<dir>/crl.pem``
  (the CRL, for Mosquitto's ``crlfile``) are derived files, rewritten atomically;
- a device certificate is issued only for a CSR whose self-signature verifies, whose key
  is P-256 and whose CN is a valid device id: CN = the device id, random 159-bit serial,
  CA=false, key usage digitalSignature, extended key usage clientAuth.

Errors: `CsrRejectedError` (the CSR or certificate a client sent is bad), `CaUnavailableError`
(the CA cannot be opened or created: no passphrase, wrong passphrase, damaged file).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import (
    BestAvailableEncryption,
    Encoding,
    KeySerializationEncryption,
    NoEncryption,
    PrivateFormat,
    load_pem_private_key,
)
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edgefleet.shared.durable import atomic_write_bytes, fsync_dir, temp_path_for
from edgefleet.shared.identity import key_fingerprint
from edgefleet.shared.topics import TopicError, validate_device_id

logger = logging.getLogger(__name__)

BUNDLE_FILE = "ca.bundle.pem"
CERT_FILE = "ca.pem"
CRL_FILE = "crl.pem"
CA_COMMON_NAME = "edgefleet device CA"
CA_LIFETIME = timedelta(days=3650)
# A CRL past its nextUpdate makes OpenSSL (so Mosquitto) refuse every client: long
# enough to outlast a fleet that is down for a while, rewritten at every revocation.
CRL_LIFETIME = timedelta(days=30)
# Issued certificates start a little in the past: a device clock a few minutes behind
# the fleet's must not find its new certificate "not yet valid".
BACKDATE = timedelta(minutes=5)
# RFC 5280's upper bound of a CN: device ids (up to 128) longer than it cannot enroll.
MAX_CN_CHARS = 64
MIN_CERT_LIFETIME = timedelta(hours=1)
MAX_CERT_LIFETIME = timedelta(days=397)
_DNS_NAME_RE = re.compile(
    r"^(?=.{1,253}$)([A-Za-z0-9*]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)


class CsrRejectedError(ValueError):
    """A CSR or certificate from a client that the CA will not sign or accept."""


class CaUnavailableError(RuntimeError):
    """The device CA cannot be opened or created; the message says why."""


@dataclass(frozen=True)
class CsrInfo:
    """What a verified CSR asks for."""

    device_id: str
    public_key: ec.EllipticCurvePublicKey
    key_fingerprint: str


@dataclass(frozen=True)
class IssuedCertificate:
    """A certificate the CA signed."""

    certificate: x509.Certificate
    serial: str  # hex, no leading zeros
    not_after: datetime
    key_fingerprint: str

    @property
    def pem(self) -> str:
        return self.certificate.public_bytes(Encoding.PEM).decode()


def not_after(now: datetime, lifetime: timedelta) -> datetime:
    """When a certificate issued at ``now`` expires (whole seconds, as X.509 stores it)."""
    return (now + lifetime).replace(microsecond=0)


def new_serial() -> int:
    """A random positive 159-bit certificate serial."""
    return x509.random_serial_number()


def serial_hex(serial: int) -> str:
    return format(serial, "x")


def parse_csr(csr_pem: str) -> CsrInfo:
    """Parse and check a device CSR.

    Raises `CsrRejectedError` for a CSR that is not PEM PKCS#10, whose signature does not
    verify, whose key is not EC P-256, or whose subject CN is missing, repeated or not a
    valid device id.
    """
    try:
        csr = x509.load_pem_x509_csr(csr_pem.encode())
    except ValueError as e:
        raise CsrRejectedError(f"not a PEM certificate signing request: {e}") from None
    if not csr.is_signature_valid:
        raise CsrRejectedError("the CSR's signature does not verify with its own key")
    key = csr.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise CsrRejectedError(
            f"the CSR's key is {_describe_key(key)}; the fleet issues certificates only for"
            " EC P-256 (secp256r1) keys"
        )
    device_id = _single_common_name(csr.subject, "the CSR")
    if len(device_id) > MAX_CN_CHARS:
        raise CsrRejectedError(
            f"the CSR's CN is {len(device_id)} characters; a certificate's CN holds at most"
            f" {MAX_CN_CHARS} (RFC 5280), so longer device ids cannot enroll"
        )
    try:
        validate_device_id(device_id)
    except TopicError as e:
        raise CsrRejectedError(f"the CSR's CN is not a device id: {e}") from None
    return CsrInfo(device_id=device_id, public_key=key, key_fingerprint=key_fingerprint(key))


def _single_common_name(name: x509.Name, what: str) -> str:
    values = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(values) != 1:
        raise CsrRejectedError(f"{what} must have exactly one subject CN, found {len(values)}")
    value = values[0].value
    return value if isinstance(value, str) else value.decode(errors="replace")


def _describe_key(key: object) -> str:
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"EC {key.curve.name}"
    return type(key).__name__.removeprefix("_")


class DeviceCA:
    """The CA key and certificate, in memory; `open_or_create` loads them from a dir."""

    def __init__(
        self, key: ec.EllipticCurvePrivateKey, certificate: x509.Certificate, directory: Path
    ) -> None:
        self._key = key
        self.certificate = certificate
        self.directory = directory

    @property
    def certificate_pem(self) -> str:
        return self.certificate.public_bytes(Encoding.PEM).decode()

    @property
    def crl_path(self) -> Path:
        return self.directory / CRL_FILE

    @classmethod
    def open_or_create(
        cls,
        directory: Path,
        passphrase: bytes | None,
        *,
        allow_unencrypted: bool = False,
        now: datetime,
    ) -> DeviceCA:
        """The CA in ``directory``, made first if there is none.

        A new CA key is encrypted with ``passphrase``; without one it is written in clear
        only with ``allow_unencrypted`` (labs). Raises `CaUnavailableError` for a missing or
        wrong passphrase, a damaged bundle, or a new CA without a passphrase and without
        ``allow_unencrypted``; `OSError` if the directory cannot be written.
        """
        bundle = directory / BUNDLE_FILE
        if not bundle.exists():
            if not passphrase and not allow_unencrypted:
                raise CaUnavailableError(
                    "no device CA yet, and no $EDGEFLEET_KEY_PASSPHRASE to encrypt a new one's"
                    " key (a lab fleet may keep it in clear: lab mode)"
                )
            _create_bundle(bundle, passphrase, now)
        ca = cls._load(bundle, passphrase)
        atomic_write_bytes(directory / CERT_FILE, ca.certificate_pem.encode(), mode=0o644)
        return ca

    @classmethod
    def _load(cls, bundle: Path, passphrase: bytes | None) -> DeviceCA:
        pem = bundle.read_bytes()
        encrypted = b"ENCRYPTED PRIVATE KEY" in pem
        if encrypted and not passphrase:
            raise CaUnavailableError(
                f"the device CA key {bundle} is encrypted: set $EDGEFLEET_KEY_PASSPHRASE"
            )
        try:
            key = load_pem_private_key(pem, passphrase if encrypted else None)
            certificate = x509.load_pem_x509_certificate(
                pem[pem.index(b"-----BEGIN CERTIFICATE-----") :]
            )
        except ValueError as e:
            what = "wrong passphrase for" if encrypted else "cannot read"
            raise CaUnavailableError(f"{what} the device CA bundle {bundle}: {e}") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise CaUnavailableError(f"{bundle} holds a {type(key).__name__}, expected an EC key")
        if key.public_key() != certificate.public_key():
            raise CaUnavailableError(f"{bundle}: the CA certificate is not the key's")
        return cls(key, certificate, bundle.parent)

    def sign(
        self, csr: CsrInfo, *, lifetime: timedelta, now: datetime, serial: int | None = None
    ) -> IssuedCertificate:
        """A client certificate for the CSR's key with CN = its device id, valid until
        `not_after` (``now`` + ``lifetime``), with ``serial`` (default: a new random one).

        Raises `ValueError` for a lifetime outside [1 h, 397 days].
        """
        return self._issue(
            csr.device_id,
            csr.public_key,
            lifetime=lifetime,
            now=now,
            serial=serial,
            usage=ExtendedKeyUsageOID.CLIENT_AUTH,
        )

    def sign_service(
        self,
        public_key: ec.EllipticCurvePublicKey,
        common_name: str,
        *,
        lifetime: timedelta,
        now: datetime,
        server_names: Sequence[str] = (),
    ) -> IssuedCertificate:
        """A certificate for one of the fleet's own services, not a device: with
        ``server_names`` a TLS server certificate (the broker) for those DNS names and IP
        addresses, without them a client certificate with CN ``common_name`` (the fleet's
        own MQTT identity, which must not be a valid device id).

        Raises `ValueError` for a lifetime outside [1 h, 397 days], a ``common_name``
        that is a device id (it would let a device's certificate pass for the service)
        or longer than 64 characters, or a server name that is neither a DNS name nor an
        IP address.
        """
        if len(common_name) > MAX_CN_CHARS:
            raise ValueError(f"CN {common_name!r} is longer than {MAX_CN_CHARS} characters")
        try:
            validate_device_id(common_name)
        except TopicError:
            pass
        else:
            raise ValueError(f"CN {common_name!r} is a valid device id; a service's must not be")
        return self._issue(
            common_name,
            public_key,
            lifetime=lifetime,
            now=now,
            serial=None,
            usage=ExtendedKeyUsageOID.SERVER_AUTH
            if server_names
            else ExtendedKeyUsageOID.CLIENT_AUTH,
            server_names=[_general_name(n) for n in server_names],
        )

    def _issue(
        self,
        common_name: str,
        public_key: ec.EllipticCurvePublicKey,
        *,
        lifetime: timedelta,
        now: datetime,
        serial: int | None,
        usage: x509.ObjectIdentifier,
        server_names: Sequence[x509.GeneralName] = (),
    ) -> IssuedCertificate:
        if not MIN_CERT_LIFETIME <= lifetime <= MAX_CERT_LIFETIME:
            raise ValueError(f"certificate lifetime {lifetime} is outside [1 h, 397 days]")
        ca_ski = self.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self.certificate.subject)
            .public_key(public_key)
            .serial_number(serial if serial is not None else x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(not_after(now, lifetime))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(digital_signature=True), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski.value),
                critical=False,
            )
        )
        if server_names:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(list(server_names)), critical=False
            )
        certificate = builder.sign(self._key, hashes.SHA256())
        return IssuedCertificate(
            certificate=certificate,
            serial=serial_hex(certificate.serial_number),
            not_after=certificate.not_valid_after_utc,
            key_fingerprint=key_fingerprint(public_key),
        )

    def check_issued(self, certificate_pem: str, *, now: datetime) -> x509.Certificate:
        """The certificate, if this CA issued it and it is valid at ``now``.

        Raises `CsrRejectedError` for one that does not parse, another CA's, or one outside its
        validity period. (Revocation is the caller's: it knows the current serial.)
        """
        try:
            certificate = x509.load_pem_x509_certificate(certificate_pem.encode())
        except ValueError as e:
            raise CsrRejectedError(f"not a PEM certificate: {e}") from None
        try:
            certificate.verify_directly_issued_by(self.certificate)
        except (ValueError, TypeError, InvalidSignature):
            raise CsrRejectedError(
                "the certificate was not issued by this fleet's device CA"
            ) from None
        if not certificate.not_valid_before_utc <= now <= certificate.not_valid_after_utc:
            raise CsrRejectedError(
                f"the certificate is valid from {certificate.not_valid_before_utc} to"
                f" {certificate.not_valid_after_utc}, not at {now}"
            )
        return certificate

    def crl(self, revoked: Iterable[tuple[str, datetime]], *, now: datetime) -> bytes:
        """A PEM CRL listing ``revoked`` (hex serial, revocation time), valid 30 days."""
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.certificate.subject)
            .last_update(now)
            .next_update(now + CRL_LIFETIME)
            # Monotonic across replicas and restarts without storing a counter.
            .add_extension(x509.CRLNumber(int(now.timestamp() * 1000)), critical=False)
        )
        for serial, at in revoked:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder()
                .serial_number(int(serial, 16))
                .revocation_date(at)
                .build()
            )
        return builder.sign(self._key, hashes.SHA256()).public_bytes(Encoding.PEM)

    def write_crl(self, revoked: Iterable[tuple[str, datetime]], *, now: datetime) -> bytes:
        """`crl`, also written to ``<dir>/crl.pem`` atomically; raises `OSError`."""
        pem = self.crl(revoked, now=now)
        atomic_write_bytes(self.crl_path, pem, mode=0o644)
        return pem


def _general_name(name: str) -> x509.GeneralName:
    """An IP address SAN for an address, else a DNS name SAN; `ValueError` for neither."""
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        pass
    if not _DNS_NAME_RE.match(name):
        raise ValueError(f"server name {name!r} is neither an IP address nor a DNS name")
    return x509.DNSName(name)


def _key_usage(*, digital_signature: bool = False, cert_sign: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _create_bundle(bundle: Path, passphrase: bytes | None, now: datetime) -> None:
    """Make a CA key and certificate and link them into place unless a bundle exists."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CA_COMMON_NAME)])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + CA_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    encryption: KeySerializationEncryption = (
        BestAvailableEncryption(passphrase) if passphrase else NoEncryption()
    )
    pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, encryption)
    pem += certificate.public_bytes(Encoding.PEM)
    bundle.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = temp_path_for(bundle)
    atomic_write_bytes(tmp, pem, mode=0o600)
    try:
        os.link(tmp, bundle)  # fails if another replica made the CA first: theirs stands
        fsync_dir(bundle.parent)
        logger.info(
            "created the device CA in %s%s", bundle.parent, "" if passphrase else " (key in clear)"
        )
    except FileExistsError:
        logger.info("another replica created the device CA in %s first", bundle.parent)
    finally:
        tmp.unlink(missing_ok=True)
