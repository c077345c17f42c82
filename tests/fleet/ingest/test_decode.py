"""decode() sorts every message into accepted, rejected (with a reason) or ignored."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from edgefleet.fleet.ingest.decode import Accepted, Ignored, Rejected, decode
from edgefleet.shared.messages import encode
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
