"""Signed device requests: how a device proves to the fleet's HTTP routes who it is.

A device sends, with each request to the image repository::

    Authorization: EdgefleetDevice <certificate>.<timestamp>.<signature>

- ``certificate``: its certificate from the fleet's device CA, DER, base64url without
  padding;
- ``timestamp``: when it signed, in whole Unix seconds (decimal);
- ``signature``: ECDSA with SHA-256 (DER, base64url) by the device key over
  `signed_message`: a fixed label, the method, the request target (path, plus ``?``
  and the query if there is one, exactly as sent) and the timestamp, one per line.

Why not the TLS client certificate: uvicorn (0.55) does not hand the peer certificate
of a TLS connection to the ASGI app (the ASGI TLS extension is unimplemented there), and
a load balancer terminating TLS in front of the fleet would hide it anyway. A signature
in the request works through both.

What it proves: the holder of the key of a certificate the fleet's CA issued asked for
this method and target within the fleet's skew window. What it does not cover: the
body and the host (the repository's routes are GETs of signed, public data), and a
header captured in transit could be replayed for the same target within the window;
TLS keeps it from being captured. The fleet's side of the check is
`edgefleet.fleet.identity.device_auth`.

Pure: no I/O. Errors: `DeviceAuthFormatError` (a header that is not this scheme's).
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

SCHEME: Final = "EdgefleetDevice"
LABEL: Final = b"edgefleet-device-request-v1"
# A device certificate is about 450 bytes of DER; these bound what the fleet decodes.
MAX_CERTIFICATE_DER_BYTES: Final = 2048
MAX_SIGNATURE_DER_BYTES: Final = 80  # an ECDSA P-256 signature is at most 72
MAX_TARGET_CHARS: Final = 2048
MAX_AUTHORIZATION_CHARS: Final = 4096
_B64URL: Final = re.compile(r"^[A-Za-z0-9_-]+$")
_TIMESTAMP: Final = re.compile(r"^[0-9]{1,12}$")


class DeviceAuthFormatError(ValueError):
    """An ``Authorization`` value that is not a well-formed signed device request."""


@dataclass(frozen=True, slots=True)
class SignedRequest:
    """The parts of one ``EdgefleetDevice`` authorization, decoded but not verified."""

    certificate_der: bytes
    timestamp: int
    signature: bytes


def request_target(url: str) -> str:
    """The request target of ``url`` as an HTTP client sends it: path, ``?query``."""
    parts = urlsplit(url)
    path = parts.path or "/"
    return f"{path}?{parts.query}" if parts.query else path


def signed_message(method: str, target: str, timestamp: int) -> bytes:
    """The bytes a device signs for ``method`` ``target`` at ``timestamp``."""
    return b"\n".join((LABEL, method.upper().encode(), target.encode(), str(timestamp).encode()))


def authorization(
    key: ec.EllipticCurvePrivateKey, certificate_der: bytes, method: str, url: str, now_s: float
) -> str:
    """The ``Authorization`` value for a ``method`` request of ``url`` signed at ``now_s``."""
    timestamp = int(now_s)
    signature = key.sign(
        signed_message(method, request_target(url), timestamp), ec.ECDSA(hashes.SHA256())
    )
    return f"{SCHEME} {_b64(certificate_der)}.{timestamp}.{_b64(signature)}"


def is_device_authorization(value: str) -> bool:
    """Whether an ``Authorization`` value uses this scheme (cheap; nothing decoded)."""
    return value[: len(SCHEME) + 1].lower() == SCHEME.lower() + " "


def parse_authorization(value: str) -> SignedRequest:
    """Decode an ``EdgefleetDevice`` authorization without verifying anything.

    Raises `DeviceAuthFormatError` for another scheme, a value longer than
    `MAX_AUTHORIZATION_CHARS`, not three dot-separated parts, bad base64url, a
    timestamp that is not decimal seconds, or a part over its size bound.
    """
    if len(value) > MAX_AUTHORIZATION_CHARS:
        raise DeviceAuthFormatError(f"the authorization is over {MAX_AUTHORIZATION_CHARS} chars")
    if not is_device_authorization(value):
        raise DeviceAuthFormatError(f"the authorization scheme is not {SCHEME}")
    parts = value[len(SCHEME) + 1 :].strip().split(".")
    if len(parts) != 3:
        raise DeviceAuthFormatError("expected <certificate>.<timestamp>.<signature>")
    certificate, timestamp, signature = parts
    if not _TIMESTAMP.match(timestamp):
        raise DeviceAuthFormatError("the timestamp is not whole Unix seconds")
    certificate_der = _unb64(certificate, "certificate", MAX_CERTIFICATE_DER_BYTES)
    signature_der = _unb64(signature, "signature", MAX_SIGNATURE_DER_BYTES)
    return SignedRequest(certificate_der, int(timestamp), signature_der)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str, what: str, max_bytes: int) -> bytes:
    # 4 base64 characters carry 3 bytes: refuse before decoding anything oversized.
    if not text or len(text) > (max_bytes * 4 + 2) // 3 or not _B64URL.match(text):
        raise DeviceAuthFormatError(f"the {what} is not base64url of at most {max_bytes} bytes")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise DeviceAuthFormatError(f"the {what} is not valid base64url") from None
