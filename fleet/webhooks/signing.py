"""Webhook signatures: HMAC-SHA256 over the timestamp and the body (pure).

Each delivery carries ``X-Edgefleet-Signature: t=<unix seconds>,v1=<hex>``, where the
hex is ``HMAC-SHA256(secret, f"{t}." + body)``, and ``X-Edgefleet-Delivery: <id>``
(the same id on every retry of one delivery, so a receiver can drop repeats). The
secret is the webhook's, generated when it is created and shown once.

A receiver verifies with `verify_signature`: the MAC must match (compared in constant
time) and the timestamp be within ``tolerance_s`` of its clock, so a captured request
cannot be replayed later. Signing the timestamp with the body stops an attacker from
pairing an old body with a fresh time. Several ``v1=`` entries are accepted (any may
match), so the format can carry two signatures while a secret is rotated.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

SIGNATURE_HEADER = "X-Edgefleet-Signature"
DELIVERY_HEADER = "X-Edgefleet-Delivery"
DEFAULT_TOLERANCE_S = 300.0
MAX_HEADER_CHARS = 1000


class SignatureError(ValueError):
    """A signature header that is malformed, stale or does not match the body."""


def new_secret() -> str:
    """A fresh webhook secret: 256 random bits, URL-safe."""
    return "whsec_" + secrets.token_urlsafe(32)


def _mac(secret: str, timestamp: int, body: bytes) -> str:
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def signature_header(secret: str, body: bytes, timestamp: int) -> str:
    """The ``X-Edgefleet-Signature`` value for ``body`` sent at ``timestamp`` (unix s)."""
    return f"t={timestamp},v1={_mac(secret, timestamp, body)}"


def verify_signature(
    secret: str,
    body: bytes,
    header: str,
    *,
    now: float,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
) -> int:
    """Check a delivery's signature header against its raw body; return its timestamp.

    ``now`` is the receiver's clock (``time.time()``). Raises `SignatureError` when the
    header is malformed, its timestamp is more than ``tolerance_s`` from ``now`` (either
    way), or no ``v1`` signature matches ``body`` under ``secret``.
    """
    if len(header) > MAX_HEADER_CHARS:
        raise SignatureError(f"signature header longer than {MAX_HEADER_CHARS} characters")
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            raise SignatureError(f"signature header part {part!r} is not key=value")
        if key == "t":
            if not value.isascii() or not value.isdigit() or len(value) > 12:
                raise SignatureError(f"signature timestamp {value!r} is not unix seconds")
            timestamp = int(value)
        elif key == "v1":
            candidates.append(value)
    if timestamp is None or not candidates:
        raise SignatureError("signature header needs t=<unix seconds> and v1=<hex>")
    if abs(now - timestamp) > tolerance_s:
        raise SignatureError(
            f"signature timestamp {timestamp} is {now - timestamp:.0f}s from now, beyond"
            f" the tolerance of {tolerance_s:.0f}s (a replay, or a clock far off)"
        )
    expected = _mac(secret, timestamp, body)
    if not any(c.isascii() and hmac.compare_digest(expected, c) for c in candidates):
        raise SignatureError("no signature matches the body: wrong secret or altered body")
    return timestamp
