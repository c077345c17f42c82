"""The enrollment wire: what a device sends to get a certificate, and what it gets back.

Both sides agree on these models and on `key_fingerprint`, the name of a device key an
operator pre-authorises (``sha256:`` + the hex sha256 of its DER SubjectPublicKeyInfo,
the value ``openssl pkey -pubout -outform DER | sha256sum`` prints).

Every field is bounded: a P-256 CSR is about 500 characters of PEM and a certificate
about 700, so `MAX_PEM_CHARS` leaves room without letting a client make the fleet parse
megabytes.
"""

from __future__ import annotations

import hashlib
from datetime import datetime

from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from pydantic import BaseModel, ConfigDict, Field

from edgefleet.shared.topics import DEVICE_ID_PATTERN

MAX_PEM_CHARS = 8192
MIN_TOKEN_CHARS = 16
MAX_TOKEN_CHARS = 128
FINGERPRINT_PATTERN = r"^sha256:[0-9a-f]{64}$"
SERIAL_PATTERN = r"^[0-9a-f]{1,64}$"


def key_fingerprint(public_key: PublicKeyTypes) -> str:
    """``sha256:<hex>`` of the key's DER SubjectPublicKeyInfo."""
    der = public_key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return "sha256:" + hashlib.sha256(der).hexdigest()


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EnrollRequest(_Wire):
    """A device's first request: the one-time token and a CSR whose CN is its id."""

    token: str = Field(min_length=MIN_TOKEN_CHARS, max_length=MAX_TOKEN_CHARS)
    csr_pem: str = Field(min_length=1, max_length=MAX_PEM_CHARS, description="PEM PKCS#10")


class RenewRequest(_Wire):
    """A renewal over the current identity: the current certificate and a CSR signed by
    the same key (the CSR's signature is the proof of possession)."""

    certificate_pem: str = Field(min_length=1, max_length=MAX_PEM_CHARS)
    csr_pem: str = Field(min_length=1, max_length=MAX_PEM_CHARS)


class IssuedIdentity(_Wire):
    """The fleet's answer to an enrollment or renewal."""

    device_id: str = Field(pattern=DEVICE_ID_PATTERN)
    certificate_pem: str = Field(max_length=MAX_PEM_CHARS)
    ca_pem: str = Field(max_length=MAX_PEM_CHARS, description="the device CA's certificate")
    serial: str = Field(pattern=SERIAL_PATTERN, description="hex")
    not_after: datetime
    key_fingerprint: str = Field(pattern=FINGERPRINT_PATTERN)
    broker_password: str | None = Field(
        default=None,
        min_length=16,
        max_length=MAX_TOKEN_CHARS,
        description="enrollment on a fleet whose broker checks passwords, not certificates:"
        " the device's broker password, sent this once",
    )
