"""Wire messages round-trip, ignore unknown fields, and reject what does not fit the topic."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from edgefleet.shared.messages import (
    DriftMessage,
    EventKind,
    EventMessage,
    LatencyPercentiles,
    MessageError,
    ModelRef,
    StateMessage,
    TelemetryMessage,
    decode_device_message,
    encode,
)
from edgefleet.shared.topics import Channel

NOW = datetime(2026, 1, 1, tzinfo=UTC)

EXAMPLES = [
    (Channel.STATE, StateMessage(device_id="d1", seq=1, ts=NOW, online=True, tags=["a"])),
    (
        Channel.TELEMETRY,
        TelemetryMessage(
            device_id="d1",
            seq=2,
            ts=NOW,
            interval_s=10,
            inferences=5,
            errors=0,
            inferences_total=5,
            errors_total=0,
            cpu_percent=1.5,
            rss_bytes=10,
            disk_free_bytes=100,
            outbox_depth=0,
            latency=LatencyPercentiles(p50_ms=1, p95_ms=2, p99_ms=3),
        ),
    ),
    (
        Channel.EVENTS,
        EventMessage(
            device_id="d1",
            seq=3,
            ts=NOW,
            kind=EventKind.FAILED,
            reason="bad",
            model=ModelRef(name="m", version="1.0.0"),
        ),
    ),
    (
        Channel.DRIFT,
        DriftMessage(device_id="d1", seq=4, ts=NOW, window_start=NOW, window_end=NOW, count=0),
    ),
]


@pytest.mark.parametrize(("channel", "message"), EXAMPLES)
def test_device_messages_round_trip(channel: Channel, message: object) -> None:
    assert decode_device_message(channel, "d1", encode(message)) == message  # type: ignore[arg-type]


@pytest.mark.parametrize(("channel", "message"), EXAMPLES)
def test_every_message_names_its_schema(channel: Channel, message: object) -> None:
    assert json.loads(encode(message))["schema"] == f"edgefleet/v1/{channel.value}"  # type: ignore[arg-type]


def test_unknown_fields_are_ignored_so_newer_agents_share_a_fleet() -> None:
    raw = json.loads(encode(EXAMPLES[0][1]))
    raw["field_from_the_future"] = {"x": 1}
    decoded = decode_device_message(Channel.STATE, "d1", json.dumps(raw).encode())
    assert decoded == EXAMPLES[0][1]


def test_a_message_on_another_kinds_topic_is_rejected() -> None:
    with pytest.raises(MessageError, match="on the telemetry topic"):
        decode_device_message(Channel.TELEMETRY, "d1", encode(EXAMPLES[0][1]))


def test_a_message_for_another_device_is_rejected() -> None:
    with pytest.raises(MessageError, match="device_id 'd1'"):
        decode_device_message(Channel.STATE, "d2", encode(EXAMPLES[0][1]))


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"not json",
        b"[]",
        b"{}",
        b'{"schema": "edgefleet/v1/state"}',
        b"\xff\xfe",
        b'{"schema":"edgefleet/v1/state","device_id":"d1","seq":-1,"online":true}',
    ],
)
def test_garbage_is_a_message_error(payload: bytes) -> None:
    with pytest.raises(MessageError):
        decode_device_message(Channel.STATE, "d1", payload)


SHA = "ab" * 32


def test_a_model_ref_carries_manifest_name_version_sha256_and_target() -> None:
    ref = ModelRef(name="wine", version="1.1.0", sha256=SHA, target="wine-1.1.0.efpkg")
    event = EventMessage(device_id="d1", seq=5, ts=NOW, kind=EventKind.DOWNLOADING, model=ref)
    assert decode_device_message(Channel.EVENTS, "d1", encode(event)) == event
    assert json.loads(encode(event))["model"] == {
        "name": "wine",
        "version": "1.1.0",
        "sha256": SHA,
        "target": "wine-1.1.0.efpkg",
    }


@pytest.mark.parametrize(
    "model",
    [
        {"name": "", "version": "1.0.0"},
        {"name": "wine", "version": "1.0.0", "sha256": "not-hex"},
        {"name": "wine", "version": "1.0.0", "target": ""},
        {"name": "wine", "version": "1.0.0", "target": "x" * 201},
    ],
)
def test_a_model_ref_out_of_bounds_is_a_message_error(model: dict[str, str]) -> None:
    raw = {"schema": "edgefleet/v1/events", "device_id": "d1", "seq": 1, "kind": "failed"}
    with pytest.raises(MessageError):
        decode_device_message(Channel.EVENTS, "d1", json.dumps(raw | {"model": model}).encode())


# Exactly what agents sent before `ModelRef.target`: the event names the TUF target in
# ``name``, the birth the manifest name; neither has ``target``.
OLD_EVENT = {
    "schema": "edgefleet/v1/events",
    "device_id": "d1",
    "seq": 7,
    "ts": "2026-01-01T00:00:00Z",
    "kind": "committed",
    "model": {"name": "wine-1.1.0.efpkg", "version": "1.1.0", "sha256": SHA},
    "desired_seq": 3,
    "rollout_id": "ro-1",
    "reason": None,
    "detail": {},
}
OLD_STATE = {
    "schema": "edgefleet/v1/state",
    "device_id": "d1",
    "seq": 6,
    "ts": "2026-01-01T00:00:00Z",
    "online": True,
    "agent_version": "0.9.0",
    "hardware": "rpi4",
    "tags": ["lab"],
    "runtimes": ["onnx"],
    "active_model": {"name": "wine", "version": "1.0.0", "sha256": "cd" * 32},
}


def test_todays_event_shape_still_parses() -> None:
    event = decode_device_message(Channel.EVENTS, "d1", json.dumps(OLD_EVENT).encode())
    assert isinstance(event, EventMessage)
    assert event.model == ModelRef(name="wine-1.1.0.efpkg", version="1.1.0", sha256=SHA)
    assert event.model.target is None


def test_todays_birth_shape_still_parses() -> None:
    state = decode_device_message(Channel.STATE, "d1", json.dumps(OLD_STATE).encode())
    assert isinstance(state, StateMessage)
    assert state.active_model == ModelRef(name="wine", version="1.0.0", sha256="cd" * 32)


TELEMETRY_RAW = json.loads(encode(EXAMPLES[1][1]))


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"cpu_percent": float("inf")}, "cpu_percent"),
        ({"cpu_percent": 1e308}, "cpu_percent"),
        ({"interval_s": float("nan")}, "interval_s"),
        ({"uptime_s": 1e308}, "uptime_s"),
        ({"latency": {"p50_ms": 1, "p95_ms": 2, "p99_ms": float("inf")}}, "p99_ms"),
        ({"seq": 2**63}, "seq"),
        ({"rss_bytes": 2**64}, "rss_bytes"),
        ({"inferences": -1}, "inferences"),
    ],
)
def test_non_finite_and_out_of_range_telemetry_is_a_message_error(
    changes: dict[str, object], field: str
) -> None:
    # json.dumps writes inf as Infinity and nan as NaN, which pydantic's parser reads.
    payload = json.dumps(TELEMETRY_RAW | changes).encode()
    with pytest.raises(MessageError, match=field):
        decode_device_message(Channel.TELEMETRY, "d1", payload)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"hardware": "x" * 101}, "hardware"),
        ({"tags": ["t"] * 65}, "tags"),
        ({"tags": ["x" * 101]}, "tags"),
        ({"runtimes": ["onnx"] * 17}, "runtimes"),
        ({"agent_version": "1" * 201}, "agent_version"),
        ({"platform": {"cpu_count": 2**40}}, "cpu_count"),
    ],
)
def test_oversized_state_fields_are_a_message_error(changes: dict[str, object], field: str) -> None:
    payload = json.dumps(OLD_STATE | changes).encode()
    with pytest.raises(MessageError, match=field):
        decode_device_message(Channel.STATE, "d1", payload)


@pytest.mark.parametrize(
    "detail",
    [
        {f"k{i}": i for i in range(65)},
        {"blob": "x" * (16 * 1024)},
        {"score": float("inf")},
        {"nested": [[[float("nan")]]]},
    ],
    ids=["too many keys", "too large", "infinite", "nested nan"],
)
def test_an_event_detail_out_of_bounds_is_a_message_error(detail: dict[str, object]) -> None:
    payload = json.dumps(OLD_EVENT | {"detail": detail}).encode()
    with pytest.raises(MessageError, match="detail"):
        decode_device_message(Channel.EVENTS, "d1", payload)


def test_a_long_reason_is_cut_not_refused_so_a_device_can_always_report_a_failure() -> None:
    event = EventMessage(device_id="d1", seq=1, kind=EventKind.FAILED, reason="why " * 1000)
    assert event.reason is not None
    assert len(event.reason) == 1000
    parsed = decode_device_message(
        Channel.EVENTS, "d1", json.dumps(OLD_EVENT | {"reason": "x" * 5000}).encode()
    )
    assert isinstance(parsed, EventMessage)
    assert parsed.reason == "x" * 1000


def test_values_at_the_documented_bounds_still_parse() -> None:
    edge = TELEMETRY_RAW | {
        "seq": 2**63 - 1,
        "cpu_percent": 102_400.0,
        "interval_s": 1e10,
        "uptime_s": 1e10,
        "latency": {"p50_ms": 0, "p95_ms": 1e7, "p99_ms": 1e7},
        "rss_bytes": 2**63 - 1,
    }
    message = decode_device_message(Channel.TELEMETRY, "d1", json.dumps(edge).encode())
    assert message.seq == 2**63 - 1


def test_a_stored_acknowledgement_round_trips_and_names_its_device() -> None:
    from edgefleet.shared.messages import StoredMessage, decode_stored

    message = StoredMessage(device_id="d1", seqs=[(1, 3), (7, 7)], ts=NOW)
    raw = encode(message)
    assert json.loads(raw)["schema"] == "edgefleet/v1/stored"
    assert decode_stored("d1", raw) == message
    with pytest.raises(MessageError, match="device_id 'd1' in a message on device 'd2'"):
        decode_stored("d2", raw)


@pytest.mark.parametrize(
    ("seqs", "error"),
    [
        ([], "at least 1"),
        ([[5, 4]], "ends before it starts"),
        ([[-1, 2]], "greater than or equal to 0"),
        ([[0, 2**63]], "less than or equal to"),
        ([[1, 2, 3]], "at most 2 items"),
        ([[i, i] for i in range(257)], "at most 256 items"),
    ],
)
def test_a_stored_acknowledgement_out_of_bounds_is_refused(seqs: object, error: str) -> None:
    from edgefleet.shared.messages import decode_stored

    raw = json.dumps({"schema": "edgefleet/v1/stored", "device_id": "d1", "seqs": seqs})
    with pytest.raises(MessageError, match=error):
        decode_stored("d1", raw.encode())
