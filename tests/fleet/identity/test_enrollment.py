"""The identity state machine, without a database: each refusal named after what it stops."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from edgefleet.fleet.identity import enrollment as rules
from edgefleet.fleet.identity.enrollment import (
    EnrollmentRefused,
    Identity,
    IdentityState,
    Refusal,
    TokenView,
)

NOW = datetime(2026, 1, 1, tzinfo=UTC)
KEY = "sha256:" + "a" * 64
OTHER_KEY = "sha256:" + "b" * 64
TOKEN = TokenView(expires_at=NOW + timedelta(hours=1))


def _enroll(token: TokenView | None, identity: Identity | None = None, **kw: object) -> Identity:
    args: dict[str, object] = {
        "device_id": "cam-1",
        "key_fingerprint": KEY,
        "serial": "abc",
        "not_after": NOW + timedelta(days=90),
        "now": NOW,
    } | kw
    return rules.enroll(token, identity, **args)  # type: ignore[arg-type]


def _refusal(call: object, *args: object, **kw: object) -> Refusal:
    with pytest.raises(EnrollmentRefused) as caught:
        call(*args, **kw)  # type: ignore[operator]
    return caught.value.reason


def test_a_fresh_token_enrolls_a_new_device_as_active() -> None:
    identity = _enroll(TOKEN)
    assert identity.state is IdentityState.ACTIVE
    assert (identity.serial, identity.key_fingerprint, identity.enrolled_at) == ("abc", KEY, NOW)


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        (None, Refusal.TOKEN_UNKNOWN),
        (TokenView(expires_at=NOW + timedelta(hours=1), used_at=NOW), Refusal.TOKEN_USED),
        (TokenView(expires_at=NOW), Refusal.TOKEN_EXPIRED),
        (TokenView(expires_at=NOW - timedelta(seconds=1)), Refusal.TOKEN_EXPIRED),
        (
            TokenView(expires_at=NOW + timedelta(hours=1), device_id="cam-2"),
            Refusal.DEVICE_MISMATCH,
        ),
        (
            TokenView(expires_at=NOW + timedelta(hours=1), key_fingerprint=OTHER_KEY),
            Refusal.KEY_MISMATCH,
        ),
    ],
)
def test_an_unusable_token_is_refused(token: TokenView | None, reason: Refusal) -> None:
    assert _refusal(_enroll, token) is reason


def test_a_pre_authorised_device_enrolls_only_with_its_key() -> None:
    pending = rules.pre_authorise(None, "cam-1", KEY)
    assert pending.state is IdentityState.PENDING
    assert _refusal(_enroll, TOKEN, pending, key_fingerprint=OTHER_KEY) is Refusal.KEY_MISMATCH
    assert _enroll(TOKEN, pending).state is IdentityState.ACTIVE


def test_a_new_token_without_a_key_keeps_the_pre_authorised_key() -> None:
    pending = rules.pre_authorise(rules.pre_authorise(None, "cam-1", KEY), "cam-1", None)
    assert pending.key_fingerprint == KEY


def test_an_active_or_revoked_device_cannot_enroll_again() -> None:
    active = _enroll(TOKEN)
    assert _refusal(_enroll, TOKEN, active) is Refusal.ALREADY_ACTIVE
    revoked = rules.revoke(active, by="ops", reason="stolen", now=NOW)
    assert _refusal(_enroll, TOKEN, revoked) is Refusal.REVOKED
    assert _refusal(rules.pre_authorise, revoked, "cam-1", KEY) is Refusal.REVOKED
    assert _refusal(rules.pre_authorise, active, "cam-1", KEY) is Refusal.ALREADY_ACTIVE


def _renew(identity: Identity | None, **kw: object) -> Identity:
    args: dict[str, object] = {
        "presented_serial": "abc",
        "key_fingerprint": KEY,
        "serial": "def",
        "not_after": NOW + timedelta(days=180),
        "now": NOW + timedelta(days=60),
    } | kw
    return rules.renew(identity, **args)  # type: ignore[arg-type]


def test_renewal_over_the_current_certificate_replaces_serial_and_expiry() -> None:
    renewed = _renew(_enroll(TOKEN))
    assert (renewed.state, renewed.serial, renewed.key_fingerprint) == (
        IdentityState.ACTIVE,
        "def",
        KEY,
    )
    assert renewed.not_after == NOW + timedelta(days=180)


def test_renewal_is_refused_off_the_current_identity() -> None:
    active = _enroll(TOKEN)
    assert _refusal(_renew, None) is Refusal.NOT_ACTIVE
    assert _refusal(_renew, rules.pre_authorise(None, "cam-1", KEY)) is Refusal.NOT_ACTIVE
    assert _refusal(_renew, active, presented_serial="old") is Refusal.NOT_CURRENT
    assert _refusal(_renew, active, key_fingerprint=OTHER_KEY) is Refusal.KEY_MISMATCH
    late = NOW + timedelta(days=90)
    assert _refusal(_renew, active, now=late) is Refusal.EXPIRED
    revoked = rules.revoke(active, by="ops", reason="stolen", now=NOW)
    assert _refusal(_renew, revoked) is Refusal.REVOKED


def test_revocation_is_final() -> None:
    revoked = rules.revoke(_enroll(TOKEN), by="ops", reason="stolen", now=NOW)
    assert (revoked.state, revoked.revoked_by, revoked.revoke_reason) == (
        IdentityState.REVOKED,
        "ops",
        "stolen",
    )
    assert revoked.serial == "abc"  # the CRL lists it
    assert _refusal(rules.revoke, revoked, by="ops", reason="again", now=NOW) is Refusal.REVOKED


def test_a_pending_device_can_be_revoked_and_then_never_enrolls() -> None:
    revoked = rules.revoke(rules.pre_authorise(None, "cam-1", KEY), by="ops", reason="x", now=NOW)
    assert _refusal(_enroll, TOKEN, revoked) is Refusal.REVOKED
