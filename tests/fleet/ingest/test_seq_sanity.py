"""Seq sanity: a seq from far in the future is dead-lettered, a real agent's never is; a
different message on a stored (device, seq) is a conflict, not a duplicate."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine, func, select
from sqlmodel import Session

from edgefleet.agent.outbox import Outbox, clock_floor_seq
from edgefleet.fleet.ingest.decode import (
    SEQ_MAX_AHEAD_S,
    Accepted,
    DeviceMessage,
    Rejected,
    decode,
    seq_ceiling,
)
from edgefleet.fleet.ingest.writer import BatchWriter
from edgefleet.fleet.service import FleetService
from edgefleet.fleet.settings import FleetSettings
from edgefleet.fleet.store import DeadLetter, TelemetryRow
from edgefleet.shared.limits import MAX_INT64
from edgefleet.shared.messages import encode, utcnow
from edgefleet.shared.topics import Channel, device_topic
from tests.fleet.factories import state, telemetry
from tests.fleet.publisher import device_message, publish, wait_until
from tests.support.mosquitto import MosquittoBroker

NOW = datetime(2026, 3, 1, 12, 30, tzinfo=UTC)
DAY_S = 24 * 3600.0


def at(channel: Channel, message: DeviceMessage, when: datetime = NOW) -> Accepted | Rejected:
    decoded = decode(device_topic(message.device_id, channel), encode(message), when)
    assert isinstance(decoded, Accepted | Rejected)
    return decoded


def agent_seq(clock: datetime, sent_since_start: int = 0) -> int:
    """The seq a real agent's outbox hands out: its clock at start in µs, plus one a message."""
    return clock_floor_seq(clock.timestamp()) + sent_since_start


@pytest.mark.parametrize("seq", [2**62, MAX_INT64, agent_seq(NOW + timedelta(days=2))])
@pytest.mark.parametrize("channel", [Channel.STATE, Channel.TELEMETRY])
def test_a_seq_from_far_in_the_future_is_rejected_with_the_reason(
    channel: Channel, seq: int
) -> None:
    message = (
        state("d1", seq)
        if channel is Channel.STATE
        else telemetry("d1", 1).model_copy(update={"seq": seq})  # counters stay small
    )
    decoded = at(channel, message)
    assert isinstance(decoded, Rejected)
    assert f"seq {seq} is implausibly far ahead" in decoded.error
    assert "clock at" in decoded.error


@pytest.mark.parametrize(
    "seq",
    [
        0,
        1,
        agent_seq(NOW),  # a fresh agent, or one restarted after any downtime
        agent_seq(NOW - timedelta(days=400), sent_since_start=10**9),  # up for 400 days
        agent_seq(NOW, sent_since_start=999),  # a burst within the clock's millisecond
        agent_seq(NOW + timedelta(hours=23)),  # a device clock ahead, within the bound
    ],
)
def test_every_seq_a_real_agent_can_send_is_accepted(seq: int) -> None:
    assert isinstance(at(Channel.STATE, state("d1", seq)), Accepted)


def test_the_bound_follows_the_setting_and_the_first_message_of_a_new_device_too() -> None:
    ahead = agent_seq(NOW + timedelta(minutes=10))
    topic = device_topic("never-seen", Channel.STATE)
    payload = encode(state("never-seen", ahead))
    assert isinstance(decode(topic, payload, NOW), Accepted)
    assert isinstance(decode(topic, payload, NOW, seq_max_ahead_s=60), Rejected)
    assert seq_ceiling(NOW, 60) < ahead <= seq_ceiling(NOW)


def test_the_settings_default_is_the_documented_bound() -> None:
    assert FleetSettings().ingest_seq_max_ahead_s == SEQ_MAX_AHEAD_S == DAY_S


def test_a_real_outbox_reopened_after_a_wipe_or_a_long_outage_is_within_the_bound(
    tmp_path: Path,
) -> None:
    clock = [NOW.timestamp() - 30 * DAY_S]
    outbox = Outbox(tmp_path / "outbox.db", clock=lambda: clock[0])
    first = outbox.allocate_seq()
    outbox.close()
    clock[0] = NOW.timestamp()  # a month off, then started again
    reopened = Outbox(tmp_path / "outbox.db", clock=lambda: clock[0])
    after_outage = reopened.allocate_seq()
    reopened.close()
    wiped = Outbox(tmp_path / "wiped.db", clock=lambda: clock[0]).allocate_seq()
    assert first < after_outage
    for seq in (first, after_outage, wiped):
        assert isinstance(at(Channel.STATE, state("d1", seq)), Accepted)


def dead_letters(engine: Engine) -> list[str]:
    with Session(engine) as s:
        return list(s.scalars(select(DeadLetter.__table__.c.error)))  # type: ignore[attr-defined]


def test_a_forged_message_on_a_future_seq_does_not_swallow_the_real_one(engine: Engine) -> None:
    writer = BatchWriter(engine)
    real = telemetry("d1", 5)
    forged = real.model_copy(update={"cpu_percent": 99.0})
    assert writer.write([at(Channel.TELEMETRY, forged)]).persisted[Channel.TELEMETRY] == 1
    result = writer.write([at(Channel.TELEMETRY, real)])
    assert result.duplicates[Channel.TELEMETRY] == 0
    assert result.conflicts[Channel.TELEMETRY] == 1
    assert result.dead_lettered == 1
    [error] = dead_letters(engine)
    assert "seq 5 of device d1 is already stored with different content" in error


def test_an_exact_redelivery_is_still_a_duplicate_even_received_later(engine: Engine) -> None:
    writer = BatchWriter(engine)
    message = telemetry("d1", 5)
    writer.write([at(Channel.TELEMETRY, message)])
    later = writer.write([at(Channel.TELEMETRY, message, NOW + timedelta(hours=1))] * 2)
    assert later.duplicates[Channel.TELEMETRY] == 2
    assert later.conflicts[Channel.TELEMETRY] == 0
    assert dead_letters(engine) == []


def test_two_different_messages_on_one_seq_in_one_batch_keep_both(engine: Engine) -> None:
    message = telemetry("d1", 5)
    other = message.model_copy(update={"ts": message.ts + timedelta(microseconds=1)})
    result = BatchWriter(engine).write(
        [at(Channel.TELEMETRY, message), at(Channel.TELEMETRY, other)]
    )
    assert (result.persisted[Channel.TELEMETRY], result.conflicts[Channel.TELEMETRY]) == (1, 1)
    with Session(engine) as s:
        assert s.scalar(select(func.count()).select_from(TelemetryRow)) == 1
    assert len(dead_letters(engine)) == 1


def test_a_forged_far_future_state_over_mqtt_does_not_freeze_the_device(
    service: FleetService, mosquitto: MosquittoBroker, unique_id: str
) -> None:
    device_id = f"dev-{unique_id}"
    now = utcnow()
    birth = agent_seq(now - timedelta(minutes=5))
    restart = agent_seq(now)
    messages = [
        device_message(Channel.STATE, state(device_id, birth, ts=now)),
        device_message(
            Channel.STATE,
            state(device_id, 2**62, ts=now, hardware="forged", tags=["canary"]),
        ),
        device_message(Channel.STATE, state(device_id, birth + 1, online=False, reason="shutdown")),
        device_message(Channel.STATE, state(device_id, restart, ts=now, hardware="jetson")),
    ]
    publish(mosquitto.port, messages)
    headers = {"Authorization": f"Bearer {service.bootstrap_admin_token}"}
    with httpx.Client(base_url=service.base_url, headers=headers, timeout=20) as api:
        wait_until(
            lambda: service.metrics.value("edgefleet_ingest_received_total") == len(messages),
            what="all four states",
        )
        wait_until(
            lambda: api.get(f"/v1/devices/{device_id}").json().get("hardware") == "jetson",
            what="the real restart's state",
        )
        body = api.get(f"/v1/devices/{device_id}").json()
    assert (body["online"], body["tags"]) == (True, ["lab", "line-1"])
    assert service.metrics.value("edgefleet_ingest_dead_lettered_total") == 1
    [error] = dead_letters(service.engine)
    assert f"seq {2**62} is implausibly far ahead" in error
    assert httpx.get(f"{service.base_url}/healthz").status_code == 200
