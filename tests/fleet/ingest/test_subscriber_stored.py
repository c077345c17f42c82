"""The ingester tells each device, retained on its ``stored`` topic, what it committed."""

from __future__ import annotations

from edgefleet.shared.messages import StoredMessage, decode_stored
from edgefleet.shared.seqranges import covers, merge
from edgefleet.shared.topics import Channel, device_topic
from tests.fleet.factories import state, telemetry
from tests.fleet.publisher import device_message, publish
from tests.support.agent import Subscriber
from tests.support.fleet_fixtures import MakeFleet
from tests.support.mosquitto import MosquittoBroker


def acknowledged(sub: Subscriber, device_id: str) -> list[tuple[int, int]]:
    messages: list[StoredMessage] = [decode_stored(device_id, r.payload) for r in sub.received]
    return merge(*(m.seqs for m in messages))


def test_stored_duplicate_and_dead_lettered_seqs_are_acknowledged_once_committed(
    make_service: MakeFleet, mosquitto: MosquittoBroker, unique_id: str
) -> None:
    # A publisher that never reads `stored` is what an agent before this feature is:
    # its messages are stored all the same.
    service = make_service(ingest_stored_interval_s=0.2)
    device_id = f"ack-{unique_id}"
    stored_topic = device_topic(device_id, Channel.STORED)
    sub = Subscriber(mosquitto.port, [stored_topic])
    try:
        invalid = (device_topic(device_id, Channel.TELEMETRY), b'{"seq": 7, "schema": 3}', False)
        first = device_message(Channel.TELEMETRY, telemetry(device_id, 2))
        publish(
            mosquitto.port,
            [device_message(Channel.STATE, state(device_id, 1)), first, first, invalid],
        )
        sub.wait_for(lambda _: acknowledged(sub, device_id) == [(1, 2), (7, 7)])
        assert all(not r.retain for r in sub.received)
        assert service.ingester is not None
    finally:
        sub.close()
    # A device that connects later still gets the last acknowledgement: it is retained.
    late = Subscriber(mosquitto.port, [stored_topic])
    try:
        (retained,) = late.wait_for(lambda r: len(r) >= 1)
        assert retained.retain
        assert any(covers(acknowledged(late, device_id), seq) for seq in (1, 2, 7))
    finally:
        late.close()
