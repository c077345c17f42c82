"""What the fleet acknowledges as stored: readable keys of every committed item, batched."""

from __future__ import annotations

import json

import pytest

from edgefleet.fleet.ingest.decode import Accepted, Oversized, Rejected, decode
from edgefleet.fleet.ingest.stored import StoredAcks, stored_key
from edgefleet.shared.messages import MAX_STORED_RANGES, encode
from edgefleet.shared.topics import Channel, device_topic
from tests.fleet.factories import T0, telemetry

TOPIC = device_topic("cam-1", Channel.TELEMETRY)


def test_an_accepted_message_is_keyed_by_its_device_and_seq() -> None:
    item = decode(TOPIC, encode(telemetry("cam-1", 42)), T0)
    assert isinstance(item, Accepted)
    assert stored_key(item) == ("cam-1", 42)


@pytest.mark.parametrize(
    ("topic", "payload", "key"),
    [
        # Dead-lettered, but stored: the device must not send it for ever.
        (TOPIC, b'{"seq": 7, "cpu_percent": -1}', ("cam-1", 7)),
        (TOPIC, b'{"device_id": "cam-1", "seq": 9, "ts": "x", "cut her', ("cam-1", 9)),
        (TOPIC, b'{"seq": "7"}', None),
        (TOPIC, b'{"seq": true}', None),
        (TOPIC, b'{"seq": -3}', None),
        (TOPIC, b'{"seq": 9223372036854775808}', None),
        (TOPIC, b"[1, 2]", None),
        (TOPIC, b"\xff\xfe not json", None),
        ("not/an/edgefleet/topic", b'{"seq": 7}', None),
    ],
)
def test_a_rejected_message_is_keyed_by_its_topic_and_the_seq_its_payload_shows(
    topic: str, payload: bytes, key: tuple[str, int] | None
) -> None:
    assert stored_key(Rejected(topic, payload, T0, "bad")) == key


def test_an_oversized_payload_still_shows_its_seq_in_the_kept_prefix() -> None:
    raw = encode(telemetry("cam-1", 123456)) + b" " * 5000
    item = decode(TOPIC, Oversized.of(raw, limit=1000, keep=64), T0)
    assert isinstance(item, Rejected)
    assert stored_key(item) == ("cam-1", 123456)


def test_acknowledgements_are_one_message_per_device_merged_over_batches() -> None:
    acks = StoredAcks()
    acks.add([("b", 5), ("a", 1), ("a", 2)])
    acks.add([("a", 3), ("a", 10), ("b", 5)])
    assert len(acks) == 2
    messages = acks.take()
    assert [(m.device_id, m.seqs) for m in messages] == [
        ("a", [(1, 3), (10, 10)]),
        ("b", [(5, 5)]),
    ]
    assert json.loads(encode(messages[0]))["seqs"] == [[1, 3], [10, 10]]
    assert acks.take() == []


def test_what_does_not_fit_one_message_waits_for_the_next_take() -> None:
    acks = StoredAcks(max_ranges=2)
    acks.add([("a", s) for s in (1, 3, 5, 7, 9)])
    assert [m.seqs for m in acks.take()] == [[(1, 1), (3, 3)]]
    assert [m.seqs for m in acks.take()] == [[(5, 5), (7, 7)]]
    assert [m.seqs for m in acks.take()] == [[(9, 9)]]
    assert not acks


@pytest.mark.parametrize("max_ranges", [0, MAX_STORED_RANGES + 1])
def test_a_message_size_outside_the_wire_bound_is_refused(max_ranges: int) -> None:
    with pytest.raises(ValueError, match=r"max_ranges must be 1\.\.256"):
        StoredAcks(max_ranges=max_ranges)
