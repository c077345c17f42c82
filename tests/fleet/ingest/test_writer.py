"""BatchWriter on SQLite and PostgreSQL: dedupe, state ordering, refused rows, retries."""

from __future__ import annotations

import sqlite3
import threading
import time
from datetime import UTC, datetime, timedelta, timezone

import pytest
from pydantic import TypeAdapter
from sqlalchemy import Engine, func, select
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlmodel import Session

from edgefleet.fleet.ingest.bulk import column_converter, sqlite_utc_text
from edgefleet.fleet.ingest.decode import Accepted, DeviceMessage, Rejected, decode
from edgefleet.fleet.ingest.writer import BatchWriter, TransientStoreError
from edgefleet.fleet.store import (
    DeadLetter,
    Device,
    DriftWindowRow,
    EventRow,
    TelemetryRow,
    create_all,
    make_engine,
)
from edgefleet.shared.messages import DriftMessage, ModelRef, encode
from edgefleet.shared.topics import Channel, device_topic
from tests.fleet.factories import T0, event, state, telemetry

NOW = datetime(2026, 3, 1, 12, 30, tzinfo=UTC)


def item(
    channel: Channel, message: DeviceMessage, *, retained: bool = False
) -> Accepted | Rejected:
    topic = device_topic(message.device_id, channel)
    decoded = decode(topic, encode(message), NOW, retained=retained)
    assert isinstance(decoded, Accepted | Rejected)
    return decoded


def count(engine: Engine, table: type) -> int:
    with Session(engine) as s:
        return int(s.scalar(select(func.count()).select_from(table)) or 0)


def device(engine: Engine, device_id: str) -> Device:
    with Session(engine) as s:
        row = s.get(Device, device_id)
        assert row is not None
        return row


def test_a_batch_lands_in_its_tables_and_registers_the_device(engine: Engine) -> None:
    result = BatchWriter(engine).write(
        [
            item(Channel.STATE, state("d1", 1)),
            item(Channel.TELEMETRY, telemetry("d1", 2)),
            item(Channel.EVENTS, event("d1", 3)),
        ]
    )
    assert result.persisted == {Channel.STATE: 1, Channel.TELEMETRY: 1, Channel.EVENTS: 1}
    d = device(engine, "d1")
    assert (d.online, d.hardware, d.tags, d.model_name, d.last_state_seq) == (
        True,
        "rpi4",
        ["lab", "line-1"],
        "wine",
        1,
    )
    assert d.last_seen == NOW
    with Session(engine) as s:
        row = s.get(TelemetryRow, ("d1", 2))
        assert row is not None
        assert row.rss_bytes == 5_000_000_000  # beyond 32 bits
        assert row.ts.tzinfo is not None
        assert row.latency_p99_ms == 3.0
        assert s.get(EventRow, ("d1", 3)) is not None


def test_the_same_seq_twice_is_stored_once_and_counted_as_duplicate(engine: Engine) -> None:
    writer = BatchWriter(engine)
    first = writer.write([item(Channel.TELEMETRY, telemetry("d1", 7))] * 2)
    again = writer.write(
        [item(Channel.TELEMETRY, telemetry("d1", 7)), item(Channel.TELEMETRY, telemetry("d1", 8))]
    )
    assert first.persisted[Channel.TELEMETRY] == 1
    assert first.duplicates[Channel.TELEMETRY] == 1
    assert again.persisted[Channel.TELEMETRY] == 1
    assert again.duplicates[Channel.TELEMETRY] == 1
    assert count(engine, TelemetryRow) == 2


def test_an_older_state_arriving_late_does_not_overwrite_a_newer_one(engine: Engine) -> None:
    writer = BatchWriter(engine)
    writer.write([item(Channel.STATE, state("d1", 10, hardware="jetson"))])
    late = writer.write([item(Channel.STATE, state("d1", 4, hardware="rpi3"))])
    assert late.duplicates[Channel.STATE] == 1
    assert device(engine, "d1").hardware == "jetson"


def test_a_will_turns_the_device_offline_and_keeps_what_the_birth_said(engine: Engine) -> None:
    writer = BatchWriter(engine)
    writer.write([item(Channel.STATE, state("d1", 1))])
    writer.write([item(Channel.STATE, state("d1", 2, online=False))])
    d = device(engine, "d1")
    assert (d.online, d.offline_reason, d.hardware, d.tags) == (
        False,
        "will",
        "rpi4",
        ["lab", "line-1"],
    )


def test_a_retained_state_does_not_count_as_fresh_contact(engine: Engine) -> None:
    BatchWriter(engine).write([item(Channel.STATE, state("d1", 1), retained=True)])
    assert device(engine, "d1").last_seen == state("d1", 1).ts


def test_a_row_the_database_refuses_is_dead_lettered_and_the_rest_lands(engine: Engine) -> None:
    # The wire models refuse a seq beyond BIGINT now; the writer must still survive a
    # row its database refuses, so this one skips validation (model_copy does not check).
    beyond_bigint = telemetry("d1", 1).model_copy(update={"seq": 2**63})
    huge = Accepted(Channel.TELEMETRY, beyond_bigint, NOW)
    result = BatchWriter(engine).write(
        [
            item(Channel.TELEMETRY, telemetry("d1", 1)),
            huge,
            item(Channel.TELEMETRY, telemetry("d1", 2)),
        ]
    )
    assert result.persisted[Channel.TELEMETRY] == 2
    assert result.dead_lettered == 1
    with Session(engine) as s:
        letter = s.exec(select(DeadLetter)).one()[0]  # type: ignore[call-overload]
        assert "database refused" in letter.error
        assert str(2**63).encode() in letter.payload_prefix


def test_rejected_payloads_are_kept_verbatim(engine: Engine) -> None:
    garbage = b"\x00\xffnot json"
    rejected = decode(device_topic("d1", Channel.EVENTS), garbage, NOW)
    assert BatchWriter(engine).write([rejected]).dead_lettered == 1  # type: ignore[list-item]
    with Session(engine) as s:
        letter = s.exec(select(DeadLetter)).one()[0]  # type: ignore[call-overload]
        assert (letter.payload_prefix, letter.topic, letter.received_at) == (
            garbage,
            device_topic("d1", Channel.EVENTS),
            NOW,
        )


def test_a_locked_database_is_a_transient_error_and_the_batch_lands_on_retry(tmp_path) -> None:
    path = tmp_path / "locked.db"
    engine = make_engine(f"sqlite:///{path}", sqlite_busy_timeout_ms=50)
    create_all(engine)
    locker = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    locker.execute("BEGIN EXCLUSIVE")
    writer = BatchWriter(engine)
    batch = [item(Channel.TELEMETRY, telemetry("d1", 1))]
    with pytest.raises(TransientStoreError, match="locked"):
        writer.write(batch)
    threading.Timer(0.3, lambda: locker.execute("COMMIT")).start()
    deadline = time.monotonic() + 5
    while True:
        try:
            writer.write(batch)
            break
        except TransientStoreError:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    assert count(engine, TelemetryRow) == 1
    locker.close()
    engine.dispose()


SAMPLE_TIMES = [
    datetime(2026, 3, 1, 12, 30, 0, 123456, tzinfo=UTC),
    datetime(2026, 3, 1, 12, 30),  # naive: taken as UTC
    datetime(2026, 3, 1, 12, 30, tzinfo=UTC),  # microsecond 0 still written
    datetime(999, 1, 2, 3, 4, 5, 6, tzinfo=UTC),
    TypeAdapter(datetime).validate_json(b'"2026-03-01T14:30:00.5+02:00"'),  # pydantic TzInfo
    TypeAdapter(datetime).validate_json(b'"2026-03-01T12:30:00Z"'),
    datetime(2026, 3, 1, 7, 0, tzinfo=timezone(timedelta(hours=-5, minutes=-30))),
]


@pytest.mark.parametrize("value", SAMPLE_TIMES, ids=str)
def test_the_fast_sqlite_time_text_is_what_sqlalchemy_would_store(value: datetime) -> None:
    column = TelemetryRow.__table__.c.ts  # type: ignore[attr-defined]
    dialect = sqlite_dialect.dialect()
    orm = column.type.dialect_impl(dialect).bind_processor(dialect)
    assert column_converter(column, dialect) is sqlite_utc_text
    assert sqlite_utc_text(value) == orm(value)
    assert sqlite_utc_text(None) is None


def test_a_batch_larger_than_one_statement_counts_each_new_row_once(engine: Engine) -> None:
    writer = BatchWriter(engine)
    writer.write([item(Channel.TELEMETRY, telemetry("d1", seq)) for seq in range(0, 3000, 2)])
    batch = [item(Channel.TELEMETRY, telemetry("d1", seq)) for seq in range(3000)]
    batch += batch[:5]  # redelivered within the batch as well
    result = writer.write(batch)
    assert result.persisted[Channel.TELEMETRY] == 1500
    assert result.duplicates[Channel.TELEMETRY] == 1505
    assert count(engine, TelemetryRow) == 3000
    with Session(engine) as s:
        row = s.get(TelemetryRow, ("d1", 2999))
        assert row is not None
        assert (row.ts, row.received_at, row.inferences_total) == (
            telemetry("d1", 2999).ts,
            NOW,
            299_900,
        )


def test_last_seen_only_moves_forward_and_first_seen_stays(engine: Engine) -> None:
    writer = BatchWriter(engine)
    later = NOW + timedelta(minutes=5)
    telemetry_topic = device_topic("d1", Channel.TELEMETRY)
    at = [
        decode(telemetry_topic, encode(telemetry("d1", seq)), when)
        for seq, when in ((1, NOW), (2, later))
    ]
    writer.write(at)  # type: ignore[arg-type]
    writer.write([item(Channel.TELEMETRY, telemetry("d1", 3))])  # received at NOW, earlier
    d = device(engine, "d1")
    assert (d.first_seen, d.last_seen) == (NOW, later)
    assert (d.online, d.hardware, d.tags, d.platform) == (False, "", [], {})


def test_event_details_are_stored_as_json(engine: Engine) -> None:
    BatchWriter(engine).write([item(Channel.EVENTS, event("d1", 3))])
    with Session(engine) as s:
        row = s.get(EventRow, ("d1", 3))
        assert row is not None
        assert (row.kind, row.detail, row.ts) == ("failed", {"expected": "ab", "found": "cd"}, T0)


def test_every_committed_item_with_a_readable_seq_is_reported_stored(engine: Engine) -> None:
    writer = BatchWriter(engine)
    assert writer.write([item(Channel.TELEMETRY, telemetry("d1", 1))]).stored == [("d1", 1)]
    conflicting = telemetry("d1", 1).model_copy(update={"cpu_percent": 99.0})
    invalid = decode(device_topic("d1", Channel.TELEMETRY), b'{"seq": 5, "schema": 1}', NOW)
    garbage = decode(device_topic("d1", Channel.EVENTS), b"\x00\xff", NOW)
    result = writer.write(
        [
            item(Channel.TELEMETRY, telemetry("d1", 1)),  # a duplicate: the row is there
            Accepted(Channel.TELEMETRY, conflicting, NOW),  # a conflict: dead-lettered
            item(Channel.TELEMETRY, telemetry("d2", 3)),  # new
            item(Channel.STATE, state("d2", 4)),
            invalid,  # type: ignore[list-item]  # dead-lettered with its seq
            garbage,  # type: ignore[list-item]  # no seq to acknowledge
        ]
    )
    assert result.dead_lettered == 3
    assert sorted(result.stored) == [("d1", 1), ("d1", 1), ("d1", 5), ("d2", 3), ("d2", 4)]


def test_a_batch_stored_one_by_one_reports_every_item(engine: Engine) -> None:
    beyond_bigint = telemetry("d1", 1).model_copy(update={"seq": 2**63})
    result = BatchWriter(engine).write(
        [
            item(Channel.TELEMETRY, telemetry("d1", 1)),
            Accepted(Channel.TELEMETRY, beyond_bigint, NOW),
            item(Channel.TELEMETRY, telemetry("d1", 2)),
        ]
    )
    # The refused row is a dead letter now, but its seq does not fit the wire: not acked.
    assert sorted(result.stored) == [("d1", 1), ("d1", 2)]


def drift(device_id: str, seq: int) -> DriftMessage:
    return DriftMessage(
        device_id=device_id,
        seq=seq,
        ts=T0,
        model=ModelRef(name="wine", version="1.0.0"),
        window_start=T0 - timedelta(minutes=5),
        window_end=T0,
        count=200,
    )


def test_each_channel_stores_a_seq_once_within_and_across_batches(engine: Engine) -> None:
    # Through the bulk path of each backend (multi-row VALUES on SQLite, COPY through a
    # staging table on PostgreSQL): a redelivery in the same batch and one in the next.
    make = {Channel.TELEMETRY: telemetry, Channel.EVENTS: event, Channel.DRIFT: drift}
    writer = BatchWriter(engine)
    first = [item(c, m(f"d{d}", seq)) for c, m in make.items() for d in (1, 2) for seq in (1, 2)]
    result = writer.write(first + first[::3])
    assert +result.persisted == {c: 4 for c in make}
    assert +result.duplicates == {Channel.TELEMETRY: 2, Channel.EVENTS: 1, Channel.DRIFT: 1}
    second = [item(c, m("d1", seq)) for c, m in make.items() for seq in (2, 3)]
    result = writer.write(second)
    assert +result.persisted == {c: 1 for c in make}
    assert +result.duplicates == {c: 1 for c in make}
    assert not +result.conflicts
    for table in (TelemetryRow, EventRow, DriftWindowRow):
        assert count(engine, table) == 5
    with Session(engine) as s:
        window = s.get(DriftWindowRow, ("d1", 3))
        assert window is not None
        assert (window.window_start, window.count, window.model_version) == (
            T0 - timedelta(minutes=5),
            200,
            "1.0.0",
        )
        assert window.received_at == NOW
    # Devices seen only through these channels are registered with the defaults.
    d2 = device(engine, "d2")
    assert (d2.online, d2.agent_version, d2.tags, d2.platform, d2.runtimes) == (
        False,
        "",
        [],
        {},
        [],
    )
    assert (d2.first_seen, d2.last_seen) == (NOW, NOW)


def test_postgresql_takes_the_rows_by_copy_and_counts_a_later_batch_alone(
    engine: Engine,
) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("COPY is PostgreSQL's")
    writer = BatchWriter(engine)
    writer.write([item(Channel.TELEMETRY, telemetry("d1", seq)) for seq in range(10)])
    # A staging row left over from the first batch would be counted again here.
    result = writer.write([item(Channel.TELEMETRY, telemetry("d1", seq)) for seq in (10, 11)])
    assert +result.persisted == {Channel.TELEMETRY: 2}
    with engine.connect() as conn:
        staged = conn.exec_driver_sql(
            "SELECT count(*) FROM pg_class WHERE relname = 'edgefleet_stage_telemetry'"
            " AND relpersistence = 't'"
        ).scalar()
    assert staged == 1  # the writer's connection made the staging table: the COPY path ran
    assert count(engine, TelemetryRow) == 12
