"""What the retained-state watcher makes of a payload on a device's ``desired`` topic."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from edgefleet.fleet.reconcile.policy import EMPTY, INVALID
from edgefleet.fleet.reconcile.watcher import RetainedWatcher, observed_seq
from edgefleet.fleet.settings import FleetSettings
from edgefleet.shared.signing.director import (
    MAX_ENVELOPE_BYTES,
    DesiredBody,
    DesiredTarget,
    DirectorSignature,
    SignedDesiredState,
)
from edgefleet.shared.topics import Channel, device_topic
from tests.fleet.publisher import publish, wait_until
from tests.support.mosquitto import MosquittoBroker

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


def test_watcher_sees_retained_states_a_clear_and_a_broker_restart(
    mosquitto: MosquittoBroker, tmp_path: Path, unique_id: str
) -> None:
    kept, cleared = f"kept-{unique_id}", f"cleared-{unique_id}"
    publish(
        mosquitto.port,
        [
            (device_topic(kept, Channel.DESIRED), envelope(kept, seq=3), True),
            (device_topic(cleared, Channel.DESIRED), envelope(cleared, seq=4), True),
        ],
    )
    lost = threading.Event()
    settings = FleetSettings(broker_url=mosquitto.url, data_dir=tmp_path)
    watcher = RetainedWatcher(settings, settle_s=0.5, on_lost=lost.set)
    watcher.start()
    try:
        wait_until(watcher.settled, what="the watcher to settle")
        assert watcher.observed() == {kept: 3, cleared: 4}  # sent on subscribing
        publish(mosquitto.port, [(device_topic(cleared, Channel.DESIRED), b"", True)])
        assert lost.wait(5), "a cleared topic must wake the reconciler"
        assert watcher.observed() == {kept: 3, cleared: EMPTY}
        # No persistence: the restarted broker has no retained message, and says nothing.
        mosquitto.stop()
        mosquitto.start()
        wait_until(lambda: watcher.seconds_to_settle() is not None, what="a resubscription")
        assert not watcher.settled()
        wait_until(watcher.settled, what="the watcher to settle again")
        assert watcher.observed() == {}
        watcher.prune(set())
    finally:
        watcher.stop()
