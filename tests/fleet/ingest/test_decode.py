"""decode() sorts every message into accepted, rejected (with a reason) or ignored."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from edgefleet.fleet.ingest.decode import Accepted, Ignored, Rejected, decode
from edgefleet.shared.messages import DriftMessage, encode
from edgefleet.shared.topics import Channel, device_topic
from tests.fleet.factories import event, state, telemetry

NOW = datetime(2026, 3, 1, tzinfo=UTC)
TELEMETRY = device_topic("d1", Channel.TELEMETRY)


@pytest.mark.parametrize(
    ("channel", "payload"),
    [
        (Channel.STATE, encode(state("d1", 1))),
        (Channel.TELEMETRY, encode(telemetry("d1", 2))),
        (Channel.EVENTS, encode(event("d1", 3))),
    ],
)
def test_valid_device_messages_are_accepted(channel: Channel, payload: bytes) -> None:
    decoded = decode(device_topic("d1", channel), payload, NOW, retained=True)
    assert isinstance(decoded, Accepted)
    assert decoded.channel is channel
    assert decoded.message.device_id == "d1"
    assert decoded.retained


def _with(**changes: object) -> bytes:
    raw = json.loads(encode(telemetry("d1", 2)))
    raw.update(changes)
    return json.dumps(raw).encode()


@pytest.mark.parametrize(
    ("topic", "payload", "reason"),
    [
        (TELEMETRY, b"\x00\xff\xfe garbage", "Invalid JSON"),
        (TELEMETRY, b"not json at all", "Invalid JSON"),
        (TELEMETRY, b"", "Invalid JSON"),
        (TELEMETRY, b"[1, 2]", "object"),
        (TELEMETRY, _with(seq=-1), "seq"),
        (TELEMETRY, _with(cpu_percent="hot"), "cpu_percent"),
        (TELEMETRY, _with(device_id="d2"), "'d2'"),
        (TELEMETRY, _with(schema="edgefleet/v9/telemetry"), "schema"),
        (device_topic("d1", Channel.STATE), encode(telemetry("d1", 2)), "telemetry"),
        ("edgefleet/v1/devices/d1/firmware", encode(telemetry("d1", 2)), "unknown channel"),
        ("edgefleet/v1/devices/-bad/telemetry", encode(telemetry("d1", 2)), "device id"),
        ("somewhere/else", b"{}", "not an edgefleet v1 device topic"),
    ],
)
def test_invalid_messages_are_rejected_with_the_reason(
    topic: str, payload: bytes, reason: str
) -> None:
    decoded = decode(topic, payload, NOW)
    assert isinstance(decoded, Rejected), decoded
    assert reason in decoded.error
    assert (decoded.topic, decoded.payload, decoded.received_at) == (topic, payload, NOW)


def test_desired_state_published_by_the_fleet_is_ignored_not_dead_lettered() -> None:
    decoded = decode(device_topic("d1", Channel.DESIRED), b'{"anything": 1}', NOW)
    assert decoded == Ignored(device_topic("d1", Channel.DESIRED), Channel.DESIRED)


def _drift(sketch: dict[str, object]) -> bytes:
    raw = {
        "schema": "edgefleet/v1/drift",
        "device_id": "d1",
        "seq": 5,
        "window_start": NOW.isoformat(),
        "window_end": NOW.isoformat(),
        "count": 3,
        "sketch": sketch,
    }
    return json.dumps(raw).encode()


# Runs [1, -2, 2] packed: varints 2, 5, 4 (a count c is 2c, k empty bins 2k + 1).
COMPACT = {"v": 2, "p": "p", "n": 3, "i": {"x": ["AgUE", 0.5, 0.25, 0.0, 1.0]}}
# The same window as an older agent sends it.
VERSION_1 = {
    "version": 1,
    "profile_id": "p",
    "count": 3,
    "inputs": {
        "x": {
            "kind": "numeric",
            "counts": [1, 0, 0, 2],
            "count": 3,
            "mean": 0.5,
            "m2": 0.25,
            "min": 0.0,
            "max": 1.0,
        }
    },
}


def test_drift_windows_in_either_sketch_form_are_accepted_as_the_same_sketch() -> None:
    topic = device_topic("d1", Channel.DRIFT)
    compact, version1 = decode(topic, _drift(COMPACT), NOW), decode(topic, _drift(VERSION_1), NOW)
    assert isinstance(compact, Accepted)
    assert isinstance(version1, Accepted)
    assert isinstance(compact.message, DriftMessage)
    assert isinstance(version1.message, DriftMessage)
    assert compact.message.sketch is not None
    assert compact.message.sketch == version1.message.sketch


def test_a_compact_drift_window_whose_zero_runs_overflow_is_dead_lettered_with_the_reason() -> None:
    sketch = {**COMPACT, "i": {"x": ["AqGcAQ", 0.5, 0.25, 0.0, 1.0]}}  # [1, -10_000]
    decoded = decode(device_topic("d1", Channel.DRIFT), _drift(sketch), NOW)
    assert isinstance(decoded, Rejected)
    assert "runs expand to 10001 bins, more than the 10000 a feature has" in decoded.error


def test_a_compact_drift_window_with_a_truncated_varint_is_dead_lettered_with_the_reason() -> None:
    sketch = {**COMPACT, "i": {"x": ["AoA", 0.5, 0.25, 0.0, 1.0]}}  # 02 80: more was to follow
    decoded = decode(device_topic("d1", Channel.DRIFT), _drift(sketch), NOW)
    assert isinstance(decoded, Rejected)
    assert "i.x.numeric.counts" in decoded.error
    assert "the last varint is truncated" in decoded.error
