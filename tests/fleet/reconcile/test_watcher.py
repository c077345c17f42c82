"""What the retained-state watcher makes of a payload on a device's ``desired`` topic."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from edgefleet.fleet.reconcile.policy import EMPTY, INVALID
from edgefleet.fleet.reconcile.watcher import observed_seq
from edgefleet.shared.signing.director import (
    MAX_ENVELOPE_BYTES,
    DesiredBody,
    DesiredTarget,
    DirectorSignature,
    SignedDesiredState,
)

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def envelope(device_id: str = "cam-1", seq: int = 42) -> bytes:
    body = DesiredBody(
        device_id=device_id,
        seq=seq,
        target=DesiredTarget(name="wine.efpkg", sha256="c" * 64, length=1, version="1.0.0"),
        expires_at=NOW + timedelta(days=1),
        issued_at=NOW,
    )
    # The watcher compares seqs only; the device checks signatures.
    return SignedDesiredState(
        signed=body, signatures=[DirectorSignature(keyid="k", sig="ab")]
    ).to_bytes()


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (envelope(), 42),
        (b"", EMPTY),  # an empty retained publish clears the topic
        (b"not json", INVALID),
        (b"[]", INVALID),
        (b"[" * 100_000 + b"]" * 100_000, INVALID),  # deeply nested: no RecursionError
        (b'{"signed": {}, "signatures": []}', INVALID),
        (envelope(device_id="cam-2"), INVALID),  # another device's state on this topic
        (b" " * (MAX_ENVELOPE_BYTES + 1), INVALID),  # oversized: not even parsed
    ],
)
def test_observed_seq_of_a_desired_topic_payload(payload: bytes, expected: int) -> None:
    assert observed_seq("cam-1", payload) == expected
