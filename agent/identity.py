"""The device's identity: its own P-256 key and a certificate from the fleet's device CA.

`enroll` makes the key on the device (or reuses one made earlier, e.g. to pre-authorise
its fingerprint), sends the fleet a CSR with CN = the device id and the one-time
enrollment token, and keeps what comes back only once it checks out. `renew` gets a new
certificate for the same key over the current one (the fleet checks that certificate
and the CSR's signature by its key); the daemon calls it from a timer before expiry
(`edgefleet.agent.renewal`).

Files in the identity directory (mode 0700):

- ``device.key.pem``: the private key, PKCS#8, mode 0600. It never leaves the device:
  only the CSR (public key and signature) is sent. Unencrypted, like an SSH host key: a
  daemon that starts unattended has no one to type a passphrase; the mode protects it;
- ``device.cert.pem``: the certificate (CN = device id), written last;
- ``ca.pem``: the fleet's device CA, pinned at the first enrollment: a later enrollment
  against a fleet presenting another CA is refused.

Invariants: every file is written atomically and durably (`edgefleet.shared.durable`);
a certificate is stored only if it was issued by the CA fetched (and pinned), for this
key and this device id. Errors: `IdentityError`, one line naming what failed.

Only the standard library speaks HTTP here (urllib), like the agent's downloader: the
device installs no HTTP client package.
"""

from __future__ import annotations

import json
import logging
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_pem_private_key,
)
from cryptography.x509.oid import NameOID
from pydantic import ValidationError

from edgefleet.agent.identity_files import (
    BROKER_PASSWORD_FILE,
    CA_FILE,
    CERT_FILE,
    KEY_FILE,
    IdentityError,
)
from edgefleet.shared.durable import atomic_write_bytes
from edgefleet.shared.identity import (
    EnrollRequest,
    IssuedIdentity,
    RenewRequest,
    key_fingerprint,
)
from edgefleet.shared.topics import TopicError, validate_device_id

logger = logging.getLogger(__name__)

# The file names and the error live in `edgefleet.agent.identity_files` (no cryptography
# there, so a device without an identity never imports it); they are exported from here too.
__all__ = [
    "BROKER_PASSWORD_FILE",
    "CA_FILE",
    "CERT_FILE",
    "DEFAULT_TIMEOUT_S",
    "KEY_FILE",
    "MAX_ANSWER_BYTES",
    "MAX_CN_CHARS",
    "Enrolled",
    "IdentityError",
    "build_csr",
    "check_device_id",
    "enroll",
    "load_or_create_key",
    "renew",
]

MAX_ANSWER_BYTES = 64 * 1024
MAX_CN_CHARS = 64  # RFC 5280's bound of a certificate CN
DEFAULT_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Enrolled:
    """Where the device's identity now is."""

    device_id: str
    key_path: Path
    cert_path: Path
    ca_path: Path
    serial: str
    not_after: datetime
    key_fingerprint: str


def load_or_create_key(identity_dir: Path) -> ec.EllipticCurvePrivateKey:
    """The device key in ``identity_dir``, made (P-256, mode 0600) if there is none.

    Raises `IdentityError` for a key file that is not an EC P-256 private key, `OSError`
    if the directory cannot be written.
    """
    path = identity_dir / KEY_FILE
    if path.exists():
        try:
            key = load_pem_private_key(path.read_bytes(), None)
        except (ValueError, TypeError) as e:
            raise IdentityError(f"{path} is not an unencrypted PEM private key: {e}") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
            raise IdentityError(f"{path} is not an EC P-256 key; move it away to make a new one")
        return key
    identity_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    atomic_write_bytes(path, pem, mode=0o600)
    logger.info("made the device key %s (%s)", path, key_fingerprint(key.public_key()))
    return key


def build_csr(key: ec.EllipticCurvePrivateKey, device_id: str) -> str:
    """A PEM CSR with CN = ``device_id``, signed by ``key``."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)])
    csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    return csr.public_bytes(Encoding.PEM).decode()


def check_device_id(device_id: str) -> str:
    """``device_id`` if it can be a certificate's CN; raises `IdentityError`."""
    try:
        validate_device_id(device_id)
    except TopicError as e:
        raise IdentityError(str(e)) from None
    if len(device_id) > MAX_CN_CHARS:
        raise IdentityError(
            f"device id {device_id!r} is {len(device_id)} characters; a certificate's CN"
            f" holds at most {MAX_CN_CHARS}"
        )
    return device_id


def enroll(
    fleet_url: str,
    token: str,
    *,
    device_id: str,
    identity_dir: Path,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    context: ssl.SSLContext | None = None,
) -> Enrolled:
    """Enroll this device with the fleet at ``fleet_url`` using the one-time ``token``.

    ``context`` verifies an https fleet (default: the system's CAs).

    Raises `IdentityError` for: a device that is enrolled already (a certificate in
    ``identity_dir``), a bad fleet URL, a network failure, a refused token (used,
    expired, unknown, for another device or key), a CA other than the pinned one, or an
    answer that is not a certificate of that CA for this key and id. `OSError` if the
    identity directory cannot be written.
    """
    check_device_id(device_id)
    base = _base_url(fleet_url)
    cert_path, ca_path = identity_dir / CERT_FILE, identity_dir / CA_FILE
    if cert_path.exists():
        raise IdentityError(
            f"this device is enrolled already ({cert_path} exists); to enroll it anew,"
            f" move {identity_dir} away first"
        )
    ca_pem = _get(f"{base}/v1/identity/ca.pem", timeout_s, context)
    try:
        ca = x509.load_pem_x509_certificate(ca_pem)
    except ValueError:
        raise IdentityError(f"{base}/v1/identity/ca.pem is not a PEM certificate") from None
    if ca_path.exists():
        pinned = x509.load_pem_x509_certificate(ca_path.read_bytes())
        if pinned != ca:
            raise IdentityError(
                f"the fleet at {base} presents another device CA than the one pinned in"
                f" {ca_path} at the first enrollment; refusing it"
            )
    key = load_or_create_key(identity_dir)
    body = EnrollRequest(token=token, csr_pem=build_csr(key, device_id)).model_dump_json()
    answer = _post(f"{base}/v1/enroll", body.encode(), timeout_s, context)
    try:
        issued = IssuedIdentity.model_validate_json(answer)
    except ValidationError as e:
        raise IdentityError(f"the fleet's answer is not an issued identity: {e}") from None
    certificate = _checked(issued, ca, key, device_id)
    if not ca_path.exists():
        atomic_write_bytes(ca_path, ca.public_bytes(Encoding.PEM), mode=0o644)
    if issued.broker_password is not None:  # before the certificate, which marks "enrolled"
        atomic_write_bytes(
            identity_dir / BROKER_PASSWORD_FILE, issued.broker_password.encode(), mode=0o600
        )
    atomic_write_bytes(cert_path, certificate.public_bytes(Encoding.PEM), mode=0o644)
    logger.info(
        "enrolled as %s: certificate %s until %s", device_id, issued.serial, issued.not_after
    )
    return Enrolled(
        device_id=device_id,
        key_path=identity_dir / KEY_FILE,
        cert_path=cert_path,
        ca_path=ca_path,
        serial=issued.serial,
        not_after=certificate.not_valid_after_utc,
        key_fingerprint=key_fingerprint(key.public_key()),
    )


def renew(
    fleet_url: str,
    *,
    identity_dir: Path,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    context: ssl.SSLContext | None = None,
) -> Enrolled:
    """Get a new certificate for the same key over the current one, from the pinned CA.

    ``context`` verifies an https fleet (default: the system's CAs).

    The proof of identity is the current certificate plus a CSR signed by its key (the
    key never leaves the device). Raises `IdentityError` for a device not enrolled, a
    network failure, a refusal (revoked, superseded or expired certificate) or an answer
    that is not a certificate of the pinned CA for this key; `OSError` on write.
    """
    base = _base_url(fleet_url)
    cert_path, ca_path = identity_dir / CERT_FILE, identity_dir / CA_FILE
    if not (cert_path.exists() and ca_path.exists() and (identity_dir / KEY_FILE).exists()):
        raise IdentityError(f"this device is not enrolled (no certificate in {identity_dir})")
    try:
        current = x509.load_pem_x509_certificate(cert_path.read_bytes())
        ca = x509.load_pem_x509_certificate(ca_path.read_bytes())
    except ValueError as e:
        raise IdentityError(
            f"cannot read the device's certificates in {identity_dir}: {e}"
        ) from None
    names = current.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    device_id = str(names[0].value) if len(names) == 1 else ""
    key = load_or_create_key(identity_dir)
    body = RenewRequest(
        certificate_pem=current.public_bytes(Encoding.PEM).decode(),
        csr_pem=build_csr(key, device_id),
    ).model_dump_json()
    answer = _post(f"{base}/v1/identity/renew", body.encode(), timeout_s, context)
    try:
        issued = IssuedIdentity.model_validate_json(answer)
    except ValidationError as e:
        raise IdentityError(f"the fleet's answer is not an issued identity: {e}") from None
    certificate = _checked(issued, ca, key, device_id)
    atomic_write_bytes(cert_path, certificate.public_bytes(Encoding.PEM), mode=0o644)
    logger.info("renewed %s: certificate %s until %s", device_id, issued.serial, issued.not_after)
    return Enrolled(
        device_id=device_id,
        key_path=identity_dir / KEY_FILE,
        cert_path=cert_path,
        ca_path=ca_path,
        serial=issued.serial,
        not_after=certificate.not_valid_after_utc,
        key_fingerprint=key_fingerprint(key.public_key()),
    )


def _checked(
    issued: IssuedIdentity, ca: x509.Certificate, key: ec.EllipticCurvePrivateKey, device_id: str
) -> x509.Certificate:
    """The issued certificate if it is the CA's, for ``key`` and ``device_id``."""
    try:
        certificate = x509.load_pem_x509_certificate(issued.certificate_pem.encode())
    except ValueError:
        raise IdentityError("the fleet's answer holds no PEM certificate") from None
    try:
        certificate.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        raise IdentityError(
            "the certificate the fleet sent was not issued by its device CA"
        ) from None
    if certificate.public_key() != key.public_key():
        raise IdentityError("the certificate the fleet sent is not for this device's key")
    names = [a.value for a in certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if names != [device_id]:
        raise IdentityError(f"the certificate the fleet sent names {names}, not {device_id!r}")
    return certificate


def _base_url(fleet_url: str) -> str:
    parts = urlsplit(fleet_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise IdentityError(f"--fleet must be an http:// or https:// URL, found {fleet_url!r}")
    if parts.scheme == "http" and parts.hostname not in ("127.0.0.1", "localhost", "::1"):
        logger.warning("enrolling over plain http: the token crosses the network in clear")
    return fleet_url.rstrip("/")


def _get(url: str, timeout_s: float, context: ssl.SSLContext | None) -> bytes:
    return _exchange(urllib.request.Request(url), timeout_s, context)  # noqa: S310  (checked)


def _post(url: str, body: bytes, timeout_s: float, context: ssl.SSLContext | None) -> bytes:
    request = urllib.request.Request(  # noqa: S310  (http(s) checked)
        url, data=body, method="POST", headers={"Content-Type": "application/json"}
    )
    return _exchange(request, timeout_s, context)


def _exchange(
    request: urllib.request.Request, timeout_s: float, context: ssl.SSLContext | None
) -> bytes:
    """The answer's body (at most `MAX_ANSWER_BYTES`); raises `IdentityError`."""
    try:
        with urllib.request.urlopen(  # noqa: S310  (http(s) checked)
            request, timeout=timeout_s, context=context
        ) as response:
            data: bytes = response.read(MAX_ANSWER_BYTES + 1)
    except urllib.error.HTTPError as e:
        raise IdentityError(
            f"the fleet refused {request.get_method()} {request.full_url}: HTTP {e.code}:"
            f" {_error_message(e)}"
        ) from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise IdentityError(f"cannot reach the fleet at {request.full_url}: {reason}") from None
    if len(data) > MAX_ANSWER_BYTES:
        raise IdentityError(
            f"the fleet's answer to {request.full_url} is over {MAX_ANSWER_BYTES} bytes"
        )
    return data


def _error_message(error: urllib.error.HTTPError) -> str:
    """The message of the fleet's error body, else the HTTP reason."""
    try:
        body = json.loads(error.read(MAX_ANSWER_BYTES))
        return str(body["error"]["message"])[:500]
    except (ValueError, KeyError, TypeError, OSError):
        return str(error.reason)[:500]
