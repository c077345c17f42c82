"""The device identity state machine, pure: what enrollment, renewal and revocation allow.

A device id's identity moves ``pending`` → ``active`` → ``revoked``:

- ``pending``: an operator created an enrollment token naming the device id (and, to
  pre-authorise it, the fingerprint of the key it will enroll with); nothing issued yet;
- ``active``: the device enrolled and holds a certificate (``serial``, ``not_after``);
- ``revoked``: final. The id stays revoked (its last serial on the CRL); a device that
  must come back enrolls under a new id, so no old certificate or token can revive it.

Rules (each refusal is an `EnrollmentRefused` whose ``reason`` a script can match):

- enrollment consumes a one-time token: an unknown, used or expired token is refused
  (``token_unknown``, ``token_used``, ``token_expired``);
- a token naming a device id admits only that id (``device_mismatch``); a token or
  pending identity with a key fingerprint admits only that key (``key_mismatch``);
- an active or revoked id cannot enroll again (``already_active``, ``revoked``);
- renewal is only for an active identity, with its current certificate (serial), before
  that expires, and with the same key (``not_active``, ``not_current``, ``expired``,
  ``key_mismatch``);
- revocation applies to a pending or active identity (``revoked`` once it is).

Nothing here touches a database, a clock or a key: callers pass the rows as
`TokenView`/`Identity` and ``now``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum


class IdentityState(StrEnum):
    PENDING = "pending"
    ACTIVE = "active"
    REVOKED = "revoked"


class Refusal(StrEnum):
    TOKEN_UNKNOWN = "token_unknown"  # noqa: S105  (a reason's name, not a secret)
    TOKEN_USED = "token_used"  # noqa: S105
    TOKEN_EXPIRED = "token_expired"  # noqa: S105
    DEVICE_MISMATCH = "device_mismatch"
    KEY_MISMATCH = "key_mismatch"
    ALREADY_ACTIVE = "already_active"
    REVOKED = "revoked"
    NOT_ACTIVE = "not_active"
    NOT_CURRENT = "not_current"
    EXPIRED = "expired"


# Refusals that mean "these credentials do not let you in" (the rest: "not in this state").
CREDENTIAL_REFUSALS = frozenset(
    {Refusal.TOKEN_UNKNOWN, Refusal.TOKEN_USED, Refusal.TOKEN_EXPIRED, Refusal.NOT_CURRENT}
)
KEY_REFUSALS = frozenset({Refusal.KEY_MISMATCH, Refusal.DEVICE_MISMATCH})


class EnrollmentRefused(Exception):  # noqa: N818  (a refusal, not a program error)
    """An enrollment, renewal or revocation the rules do not allow."""

    def __init__(self, reason: Refusal, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class TokenView:
    """What the rules need of an enrollment token."""

    expires_at: datetime
    used_at: datetime | None = None
    device_id: str | None = None
    key_fingerprint: str | None = None


@dataclass(frozen=True)
class Identity:
    """One device id's identity."""

    device_id: str
    state: IdentityState
    key_fingerprint: str | None = None
    serial: str | None = None
    not_after: datetime | None = None
    enrolled_at: datetime | None = None
    revoked_at: datetime | None = None
    revoked_by: str | None = None
    revoke_reason: str | None = None


def pre_authorise(
    identity: Identity | None, device_id: str, key_fingerprint: str | None
) -> Identity:
    """The pending identity a token naming ``device_id`` makes (the newest fingerprint
    given wins; None keeps the one already pending).

    Raises `EnrollmentRefused` (``already_active``, ``revoked``) for an id past pending.
    """
    if identity is not None:
        _refuse_past_pending(identity)
        return replace(identity, key_fingerprint=key_fingerprint or identity.key_fingerprint)
    return Identity(device_id, IdentityState.PENDING, key_fingerprint=key_fingerprint)


def enroll(
    token: TokenView | None,
    identity: Identity | None,
    *,
    device_id: str,
    key_fingerprint: str,
    serial: str,
    not_after: datetime,
    now: datetime,
) -> Identity:
    """The active identity after ``device_id`` enrolls its key with ``token``.

    Raises `EnrollmentRefused` for any rule in the module docstring.
    """
    if token is None:
        raise EnrollmentRefused(Refusal.TOKEN_UNKNOWN, "the enrollment token is not known")
    if token.used_at is not None:
        raise EnrollmentRefused(
            Refusal.TOKEN_USED, f"the enrollment token was used already, at {token.used_at}"
        )
    if now >= token.expires_at:
        raise EnrollmentRefused(
            Refusal.TOKEN_EXPIRED, f"the enrollment token expired at {token.expires_at}"
        )
    if token.device_id is not None and token.device_id != device_id:
        raise EnrollmentRefused(
            Refusal.DEVICE_MISMATCH,
            f"the enrollment token is for device {token.device_id!r}, the CSR names {device_id!r}",
        )
    if identity is not None:
        _refuse_past_pending(identity)
    for expected, what in (
        (token.key_fingerprint, "the enrollment token"),
        (identity.key_fingerprint if identity else None, f"device {device_id!r}"),
    ):
        if expected is not None and expected != key_fingerprint:
            raise EnrollmentRefused(
                Refusal.KEY_MISMATCH,
                f"{what} is pre-authorised for key {expected}, the CSR's key is {key_fingerprint}",
            )
    return Identity(
        device_id,
        IdentityState.ACTIVE,
        key_fingerprint=key_fingerprint,
        serial=serial,
        not_after=not_after,
        enrolled_at=now,
    )


def renew(
    identity: Identity | None,
    *,
    presented_serial: str,
    key_fingerprint: str,
    serial: str,
    not_after: datetime,
    now: datetime,
) -> Identity:
    """The identity after a renewal presented with the certificate ``presented_serial``
    and a CSR of the key ``key_fingerprint``.

    Raises `EnrollmentRefused` (``not_active``, ``revoked``, ``not_current``,
    ``expired``, ``key_mismatch``).
    """
    if identity is None or identity.state is IdentityState.PENDING:
        raise EnrollmentRefused(Refusal.NOT_ACTIVE, "the device is not enrolled; enroll it first")
    if identity.state is IdentityState.REVOKED:
        raise EnrollmentRefused(
            Refusal.REVOKED, f"device {identity.device_id!r} was revoked at {identity.revoked_at}"
        )
    if presented_serial != identity.serial:
        raise EnrollmentRefused(
            Refusal.NOT_CURRENT,
            f"certificate {presented_serial} is not device {identity.device_id!r}'s current one",
        )
    if identity.not_after is not None and now >= identity.not_after:
        raise EnrollmentRefused(
            Refusal.EXPIRED,
            f"the current certificate expired at {identity.not_after}; enroll with a new token",
        )
    if key_fingerprint != identity.key_fingerprint:
        raise EnrollmentRefused(
            Refusal.KEY_MISMATCH,
            f"renewal keeps the key: the CSR's key is {key_fingerprint}, the identity's"
            f" {identity.key_fingerprint}",
        )
    return replace(identity, serial=serial, not_after=not_after)


def revoke(identity: Identity, *, by: str, reason: str, now: datetime) -> Identity:
    """The identity revoked; raises `EnrollmentRefused` (``revoked``) if it is already."""
    if identity.state is IdentityState.REVOKED:
        raise EnrollmentRefused(
            Refusal.REVOKED,
            f"device {identity.device_id!r} was revoked already, at {identity.revoked_at}",
        )
    return replace(
        identity, state=IdentityState.REVOKED, revoked_at=now, revoked_by=by, revoke_reason=reason
    )


def _refuse_past_pending(identity: Identity) -> None:
    if identity.state is IdentityState.ACTIVE:
        raise EnrollmentRefused(
            Refusal.ALREADY_ACTIVE,
            f"device {identity.device_id!r} is enrolled already; it renews over its current"
            " identity, or an operator revokes it",
        )
    if identity.state is IdentityState.REVOKED:
        raise EnrollmentRefused(
            Refusal.REVOKED,
            f"device {identity.device_id!r} was revoked at {identity.revoked_at}; revocation is"
            " final: enroll the device under a new id",
        )
