"""Property: no bytes at all make `open_desired` raise anything but an `UpdateRejected`."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import HealthCheck, event, given, settings

from edgefleet.shared.signing import keys
from edgefleet.shared.signing.director import (
    check_fresh,
    claimed_seq,
    open_desired,
    trusted_keys,
)
from edgefleet.shared.signing.errors import UpdateRejected
from tests.shared.signing.hostile import hostile_payloads

DEVICE = "cam-17"
DIRECTOR = keys.generate_signer()
TRUSTED = trusted_keys([DIRECTOR.public_key])
NOW = datetime(2025, 6, 1, tzinfo=UTC)

FUZZ = settings(
    max_examples=500,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def refusal(payload: bytes) -> UpdateRejected | None:
    """Why a device that took nothing yet refuses ``payload``; None if it would take it."""
    try:
        body = open_desired(payload, trusted_director_keys=TRUSTED, device_id=DEVICE)
        check_fresh(body.seq, body.expires_at, last_seq=None, now=NOW)
    except UpdateRejected as e:
        return e
    return None


@FUZZ
@given(payload=hostile_payloads(DIRECTOR, DEVICE))
def test_hostile_payload_is_rejected_with_a_reason(payload: bytes) -> None:
    refused = refusal(payload)  # anything but an UpdateRejected fails the test here
    assert refused is not None, "a hostile payload would be taken"
    assert str(refused), "a rejection names its reason"
    event(type(refused).__name__)
    seq = claimed_seq(payload)
    assert seq is None or (type(seq) is int and seq >= 0)
