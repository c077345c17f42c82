"""The fleet's check of a signed device request (`edgefleet.shared.device_auth`).

`DeviceAuthenticator.authenticate` lets a request through as device ``d`` only if:

- its certificate was issued by this fleet's device CA (`DeviceCA.check_issued`), is a
  device certificate (not a CA; ``clientAuth``; its CN a valid device id) and is valid
  now;
- the identity of ``d`` is ``active`` (not unknown, pending or revoked) and, when the
  identity records a key, the certificate is for that key;
- the signature over method, target and timestamp verifies with the certificate's key;
- the timestamp is within ``max_skew_s`` of the fleet's clock, either way.

Cheap for a rollout wave, where every device fetches the same few files at once: what
never changes about a certificate (its issuer's signature, its CN, key and validity
period) is checked once and kept per certificate (`VerifiedCertificate`, keyed by the
sha256 of its DER, least recently used evicted); the identities are read in one query
and kept for ``identity_ttl_s`` seconds. So a request costs one signature check and a
few dictionary lookups, and touches neither the disk nor the database except when
`needs_io` says so (the CA not loaded yet, or the identities stale): callers on an event
loop run `authenticate` in a worker thread then. A revoked device is refused at the
latest ``identity_ttl_s`` after its revocation (the REST API and the revocation may be
in different replicas, so the bound is a TTL).

Errors: `DeviceAuthRefused`, with the reason (the API answers it 401).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from sqlalchemy import Engine

from edgefleet.fleet.identity.ca import CsrRejectedError, DeviceCA
from edgefleet.fleet.identity.enrollment import IdentityState
from edgefleet.fleet.identity.snapshot import IdentityCache
from edgefleet.shared.device_auth import (
    DeviceAuthFormatError,
    parse_authorization,
    signed_message,
)
from edgefleet.shared.identity import key_fingerprint
from edgefleet.shared.topics import TopicError, validate_device_id

logger = logging.getLogger(__name__)

# Certificates kept verified: a fleet's devices each have one (two around a renewal).
DEFAULT_MAX_CERTIFICATES = 50_000


class DeviceAuthRefused(Exception):  # noqa: N818  (a refusal, not a program error)
    """A signed device request that does not let the device in; says why."""


@dataclass(frozen=True, slots=True)
class VerifiedCertificate:
    """What was checked once about a certificate the device CA issued."""

    device_id: str
    serial: str
    not_before: datetime
    not_after: datetime
    public_key: ec.EllipticCurvePublicKey
    key_fingerprint: str


class DeviceAuthenticator:
    """Checks signed device requests against the device CA and the identities; thread-safe."""

    def __init__(
        self,
        *,
        ca: Callable[[], DeviceCA],
        engine: Engine,
        identity_ttl_s: float,
        max_skew_s: float,
        max_certificates: int = DEFAULT_MAX_CERTIFICATES,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """``ca`` opens the device CA (may block, may raise what it raises: the caller's
        domain error for an unavailable CA); it is called once."""
        self._open_ca = ca
        self._max_skew_s = max_skew_s
        self._max_certificates = max_certificates
        self._clock = clock
        self._ca: DeviceCA | None = None
        self._identities = IdentityCache(engine, identity_ttl_s, monotonic=monotonic)
        self._certificates: OrderedDict[bytes, VerifiedCertificate] = OrderedDict()
        self._lock = threading.Lock()  # the CA: loaded once
        self._cache_lock = threading.Lock()  # the certificate cache: one dict operation
        self.certificate_checks = 0  # chain verifications done (the cache's misses)

    def needs_io(self) -> bool:
        """Whether the next `authenticate` may read the disk or the database (then call it
        from a worker thread, not an event loop)."""
        return self._ca is None or not self._identities.fresh()

    def invalidate(self) -> None:
        """Make the next call reread the identities (after a revocation in this process)."""
        self._identities.invalidate()

    def authenticate(self, authorization: str, method: str, target: str) -> str:
        """The device id of a signed request for ``method`` ``target``.

        Raises `DeviceAuthRefused` naming the reason; SQLAlchemyError if the identities
        cannot be read, and whatever ``ca`` raises when the CA cannot be opened.
        """
        try:
            signed = parse_authorization(authorization)
        except DeviceAuthFormatError as e:
            raise DeviceAuthRefused(str(e)) from None
        now_s = self._clock()
        if abs(now_s - signed.timestamp) > self._max_skew_s:
            raise DeviceAuthRefused(
                f"the request was signed at {signed.timestamp}, {now_s - signed.timestamp:+.0f} s"
                f" from the fleet's clock; at most {self._max_skew_s:g} s either way is accepted"
            )
        certificate = self._certificate(signed.certificate_der)
        now = datetime.fromtimestamp(now_s, UTC)
        if not certificate.not_before <= now <= certificate.not_after:
            raise DeviceAuthRefused(
                f"the certificate of {certificate.device_id} is valid from"
                f" {certificate.not_before:%Y-%m-%d %H:%M:%S} to"
                f" {certificate.not_after:%Y-%m-%d %H:%M:%S} UTC, not now"
            )
        try:
            certificate.public_key.verify(
                signed.signature,
                signed_message(method, target, signed.timestamp),
                ec.ECDSA(hashes.SHA256()),
            )
        except InvalidSignature:
            raise DeviceAuthRefused(
                f"the signature of {certificate.device_id}'s request does not verify"
                f" for {method} {target}"
            ) from None
        # Only to the key's holder: a certificate alone (they are not secret) learns nothing.
        self._check_identity(certificate)
        return certificate.device_id

    def _certificate(self, der: bytes) -> VerifiedCertificate:
        digest = hashlib.sha256(der).digest()
        with self._cache_lock:
            found = self._certificates.get(digest)
            if found is not None:
                self._certificates.move_to_end(digest)
                return found
        verified = self._verify(der)
        with self._cache_lock:
            self._certificates[digest] = verified
            while len(self._certificates) > self._max_certificates:
                self._certificates.popitem(last=False)
        return verified

    def _verify(self, der: bytes) -> VerifiedCertificate:
        self.certificate_checks += 1
        try:
            parsed = x509.load_der_x509_certificate(der)
        except ValueError:
            raise DeviceAuthRefused("the certificate is not DER X.509") from None
        pem = parsed.public_bytes(Encoding.PEM).decode()
        # Validity is checked per request (it changes with the clock), so at the middle
        # of the certificate's period here: this checks only who issued it.
        middle = (
            parsed.not_valid_before_utc
            + (parsed.not_valid_after_utc - parsed.not_valid_before_utc) / 2
        )
        try:
            self._device_ca().check_issued(pem, now=middle)
        except CsrRejectedError as e:
            raise DeviceAuthRefused(f"bad device certificate: {e}") from None
        device_id = _device_id(parsed)
        key = parsed.public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise DeviceAuthRefused(f"the certificate of {device_id} has no EC key")
        return VerifiedCertificate(
            device_id=device_id,
            serial=format(parsed.serial_number, "x"),
            not_before=parsed.not_valid_before_utc,
            not_after=parsed.not_valid_after_utc,
            public_key=key,
            key_fingerprint=key_fingerprint(key),
        )

    def _device_ca(self) -> DeviceCA:
        ca = self._ca
        if ca is None:
            with self._lock:
                if self._ca is None:
                    self._ca = self._open_ca()
                ca = self._ca
        return ca

    def _check_identity(self, certificate: VerifiedCertificate) -> None:
        state, fingerprint = self._identities.snapshot().by_device.get(
            certificate.device_id, (None, None)
        )
        if state is None:
            raise DeviceAuthRefused(f"device {certificate.device_id} has no identity in this fleet")
        if state != IdentityState.ACTIVE.value:
            raise DeviceAuthRefused(f"the identity of {certificate.device_id} is {state}")
        if fingerprint is not None and fingerprint != certificate.key_fingerprint:
            raise DeviceAuthRefused(
                f"the certificate of {certificate.device_id} is for another key than its identity's"
            )


def _device_id(certificate: x509.Certificate) -> str:
    """The device id a device certificate names; `DeviceAuthRefused` for other ones."""
    names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    value = names[0].value if len(names) == 1 else None
    if not isinstance(value, str):
        raise DeviceAuthRefused("the certificate has not exactly one subject CN")
    try:
        validate_device_id(value)
    except TopicError:
        # The CA's service certificates (broker, fleet) are made with CNs no device has.
        raise DeviceAuthRefused(f"the certificate's CN {value!r} is not a device id") from None
    try:
        constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
        usages = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    except x509.ExtensionNotFound:
        raise DeviceAuthRefused(f"the certificate of {value} is not a device certificate") from None
    if constraints.value.ca or ExtendedKeyUsageOID.CLIENT_AUTH not in usages.value:
        raise DeviceAuthRefused(f"the certificate of {value} is not a device certificate")
    return value
